"""Settings of fleet monitoring: telemetry roll-ups, drift checks, alert webhooks.

Read from ``EDGEFLEET_<FIELD NAME IN CAPITALS>`` (for example
``EDGEFLEET_DRIFT_WINDOW_S``); a bad value fails at startup naming the variable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlparse

from controller.errors import SettingsError

DAY_S = 86_400.0


def _bounded(default: float, minimum: float, maximum: float = math.inf) -> Any:
    """A field whose environment value must lie in ``[minimum, maximum]``."""
    return field(default=default, metadata={"min": minimum, "max": maximum})


@dataclass(frozen=True)
class MonitoringSettings:
    # Raw telemetry and drift windows are kept this long, then summed into one roll-up
    # row per device, bundle and bucket of ``telemetry_bucket_s``, kept for
    # ``telemetry_retention_s``. Queries over older data answer at bucket granularity.
    telemetry_raw_retention_s: float = _bounded(3600.0, 1.0)
    telemetry_bucket_s: float = _bounded(3600.0, 1.0)
    telemetry_retention_s: float = _bounded(30 * DAY_S, 1.0)
    rollup_interval_s: float = _bounded(60.0, 0.1)
    rollup_batch: int = _bounded(5000, 1)
    # The drift check: every ``drift_check_interval_s`` it tests the last
    # ``drift_window_s`` of every bundle's drift windows, per device, against the
    # bundle's reference (chi-square, Benjamini-Hochberg across all device x feature
    # tests at ``drift_alpha``); devices with fewer than ``drift_min_samples`` get no
    # verdict. An alert opens after ``drift_confirmations`` checks in a row find drift
    # and resolves after ``drift_resolve_after`` quiet checks.
    drift_check_interval_s: float = _bounded(60.0, 0.1)
    drift_window_s: float = _bounded(900.0, 1.0)
    drift_alpha: float = _bounded(0.01, 1e-12, 0.5)
    drift_min_samples: int = _bounded(200, 1)
    # ... and no verdict of drift for a change smaller than this PSI, however
    # significant (large windows make every difference significant); 0 turns it off.
    drift_min_psi: float = _bounded(0.1, 0.0, 10.0)
    drift_confirmations: int = _bounded(2, 1)
    drift_resolve_after: int = _bounded(3, 1)
    # A replica that dies holding a monitoring job loses it after this long.
    monitoring_lease_s: float = _bounded(300.0, 1.0)
    # Alert events are POSTed to every URL here (comma-separated), signed with
    # HMAC-SHA256 of the body under ``alert_webhook_secret`` when one is set, and
    # retried with doubling back-off until a 2xx or ``webhook_max_attempts``.
    alert_webhooks: tuple[str, ...] = ()
    alert_webhook_secret: str = ""
    webhook_max_attempts: int = _bounded(10, 1)
    webhook_backoff_s: float = _bounded(2.0, 0.01)
    webhook_backoff_max_s: float = _bounded(600.0, 0.01)
    webhook_timeout_s: float = _bounded(10.0, 0.1)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> MonitoringSettings:
        """Read the ``EDGEFLEET_*`` variables of these settings.

        Raises:
            SettingsError: a value that cannot be used; the message names the variable.
        """
        values: dict[str, object] = {}
        for f in fields(cls):
            name = f"EDGEFLEET_{f.name.upper()}"
            raw = (environ.get(name) or "").strip()
            if not raw:
                continue
            if f.name == "alert_webhooks":
                values[f.name] = _webhook_urls(name, raw)
            elif f.name == "alert_webhook_secret":
                values[f.name] = raw
            else:
                values[f.name] = _number(name, raw, f.type in ("int", int), f.metadata)
        settings = cls(**values)  # type: ignore[arg-type]
        if settings.drift_window_s > settings.telemetry_raw_retention_s:
            raise SettingsError(
                f"EDGEFLEET_DRIFT_WINDOW_S ({settings.drift_window_s:g}) must not exceed "
                f"EDGEFLEET_TELEMETRY_RAW_RETENTION_S ({settings.telemetry_raw_retention_s:g}):"
                " the drift check reads raw windows"
            )
        return settings


def _number(name: str, raw: str, integer: bool, limits: Mapping[str, float]) -> float | int:
    try:
        value: float | int = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise SettingsError(f"{name}={raw!r} is not {kind}") from None
    low, high = limits.get("min", -math.inf), limits.get("max", math.inf)
    if not (low <= value <= high) or (not integer and not math.isfinite(value)):
        bound = f"between {low} and {high}" if math.isfinite(high) else f">= {low}"
        raise SettingsError(f"{name}={raw!r} must be {bound}")
    return value


def _webhook_urls(name: str, raw: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in raw.split(",") if u.strip())
    for url in urls:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise SettingsError(f"{name}: {url!r} is not an http(s) URL")
    return urls
