"""Agent configuration: a TOML file plus command-line flags (flags win)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import tomllib

from agent.errors import AgentError
from agent.fetch import DEFAULT_MAX_BLOB_BYTES
from firmware_bundles.wire import check_device_id


@dataclass(frozen=True)
class AgentConfig:
    device_id: str
    broker_url: str
    controller_url: str
    data_dir: Path
    trust: tuple[Path, ...]
    hardware_class: str = "generic"
    tags: tuple[str, ...] = ()
    telemetry_interval_s: float = 5.0
    # Drift windows close this often (never more often than telemetry windows). Counts
    # merge exactly, so a longer window loses only time resolution, and a window is
    # ~180 bytes per feature (BENCHMARKS.md); windows without traffic are not sent.
    drift_interval_s: float = 60.0
    # The retained state is sent again this often even when nothing changed, so a
    # controller that missed a report (a replica died holding it) still converges.
    state_heartbeat_s: float = 60.0
    http_host: str = "127.0.0.1"
    http_port: int | None = None  # None: no HTTP endpoint (the simulator's default)
    threads: int = 1
    http_timeout_s: float = 30.0
    max_request_bytes: int = 16 << 20
    outbox_max_messages: int = 5000
    outbox_max_bytes: int = 20 << 20
    # Largest bundle file (as downloaded or once decoded) this device accepts.
    max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES
    outbox_fsync: bool = True  # simulated fleets turn it off: thousands of "disks" share one
    # Data capture (agent/capture.py): disk per capture, captures open at once, and the
    # backoff between upload attempts.
    capture_max_bytes: int = 64 << 20
    capture_max_open: int = 4
    capture_retry_min_s: float = 2.0
    capture_retry_max_s: float = 300.0

    def __post_init__(self) -> None:
        check_device_id(self.device_id)
        if not self.trust:
            raise AgentError("the agent needs at least one trusted key (--trust KEYFILE)")
        if self.telemetry_interval_s <= 0:
            raise AgentError(f"telemetry_interval_s must be > 0, got {self.telemetry_interval_s}")
        if self.drift_interval_s <= 0:
            raise AgentError(f"drift_interval_s must be > 0, got {self.drift_interval_s}")
        if self.state_heartbeat_s <= 0:
            raise AgentError(f"state_heartbeat_s must be > 0, got {self.state_heartbeat_s}")
        if self.capture_max_bytes < 1 << 10 or self.capture_max_open < 1:
            raise AgentError(
                f"capture_max_bytes must be >= 1024 and capture_max_open >= 1, got "
                f"{self.capture_max_bytes} and {self.capture_max_open}"
            )
        if not 0 < self.capture_retry_min_s <= self.capture_retry_max_s:
            raise AgentError(
                f"need 0 < capture_retry_min_s <= capture_retry_max_s, got "
                f"{self.capture_retry_min_s} and {self.capture_retry_max_s}"
            )
        if self.http_port is not None and not 0 <= self.http_port < 65536:
            raise AgentError(f"http_port must be 0..65535, got {self.http_port}")

    @property
    def blob_base_url(self) -> str:
        return f"{self.controller_url.rstrip('/')}/api/v1/blobs"


def load_config(path: Path | None, overrides: dict[str, Any]) -> AgentConfig:
    """Read ``path`` (TOML, optional) and apply non-None ``overrides``."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise AgentError(f"cannot read agent config {path}: {exc}") from exc
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(AgentConfig)}
    unknown = set(values) - known
    if unknown:
        raise AgentError(f"unknown agent setting(s): {sorted(unknown)}")
    missing = [
        n
        for n in ("device_id", "broker_url", "controller_url", "data_dir", "trust")
        if n not in values
    ]
    if missing:
        raise AgentError(f"missing agent setting(s): {missing}")
    values["data_dir"] = Path(values["data_dir"])
    trust = values["trust"]
    values["trust"] = tuple(Path(t) for t in ([trust] if isinstance(trust, (str, Path)) else trust))
    values["tags"] = tuple(values.get("tags", ()))
    try:
        return AgentConfig(**values)
    except TypeError as exc:
        raise AgentError(f"invalid agent settings: {exc}") from exc
