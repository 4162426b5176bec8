"""Controller settings, read once from the environment (``EDGEFLEET_*``).

Every limit is a named setting with a safe embedded default: SQLite and blobs in a local
data dir, a local broker, a release key generated on first start in development. In
production (``EDGEFLEET_ENV=production``) nothing secret is invented: a missing release
key is a startup error. A bad value fails at startup with an error naming the variable.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from controller.errors import SettingsError
from controller.monitoring_settings import MonitoringSettings

ENVIRONMENTS = ("development", "production")
MiB = 1 << 20
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8080"

T = TypeVar("T", int, float)


@dataclass(frozen=True)
class Settings:
    """Everything the controller can be configured with; build with :meth:`from_env`."""

    data_dir: Path = Path("edgefleet-data")
    env: str = "development"
    database_url: str = ""  # "" -> sqlite:///{data_dir}/controller.db
    broker_url: str = "mqtt://127.0.0.1:1883"
    # Base URL devices use to reach this controller; None -> the address we serve on.
    public_url: str | None = None
    release_key: Path | None = None  # None -> {data_dir}/keys/release.key
    trusted_keys: tuple[Path, ...] = ()
    max_upload_bytes: int = 512 * MiB
    offline_after_s: float = 300.0
    bundle_valid_days: int = 365
    max_page_size: int = 1000
    ingest_batch_size: int = 500
    ingest_batch_wait_s: float = 0.05
    ingest_queue_max: int = 100_000
    # "" -> edgefleet-controller-<replica_id>, or -<random> without a replica id. A
    # replica restarted under the same id resumes its MQTT session and receives the
    # share of device reports the broker queued for it meanwhile.
    mqtt_client_id: str = ""
    mqtt_keepalive_s: int = 30
    # How long the broker keeps our session (and queues for it) after a drop.
    mqtt_session_expiry_s: int = 60
    # Compression jobs (controller/compression_worker.py): worker threads on this replica
    # (0: this replica runs none), lease a dead replica's job is held for, job limits.
    compression_workers: int = 1
    compression_lease_s: float = 30.0
    compression_poll_s: float = 1.0
    compression_max_queued: int = 16
    compression_max_attempts: int = 3
    compression_timeout_s: float = 3600.0
    # This replica's name in rollout leases and the audit log; "" -> the MQTT client id.
    replica_id: str = ""
    rollout_tick_s: float = 1.0
    # A replica that stops ticking a rollout loses it to another after this long.
    rollout_lease_s: float = 15.0
    rollout_gate_interval_s: float = 5.0
    rollout_republish_after_s: float = 10.0
    # How far back the previous model's telemetry counts for the latency gate.
    rollout_latency_lookback_s: float = 3600.0
    # Telemetry roll-ups, drift checks and alert webhooks (controller.monitoring_settings).
    monitoring: MonitoringSettings = MonitoringSettings()
    # Data capture: the largest upload one device may send for one capture (devices
    # default to 64 MiB on disk per capture), and the capture-set publishing tick.
    capture_max_upload_bytes: int = 256 * MiB
    capture_tick_s: float = 1.0
    capture_republish_after_s: float = 10.0

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'controller.db'}"

    @property
    def blob_base_url(self) -> str:
        """Where devices fetch blobs (and bundle envelopes) by sha256."""
        return f"{self.public_url or DEFAULT_PUBLIC_URL}/api/v1/blobs"

    @property
    def api_url(self) -> str:
        """This controller's REST API as devices reach it (capture uploads)."""
        return f"{self.public_url or DEFAULT_PUBLIC_URL}/api/v1"

    @property
    def release_key_path(self) -> Path:
        return self.release_key or self.data_dir / "keys" / "release.key"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def broker_address(self) -> tuple[str, int]:
        return parse_broker_url(self.broker_url, "EDGEFLEET_BROKER_URL")

    def client_id(self) -> str:
        if self.mqtt_client_id:
            return self.mqtt_client_id
        return f"edgefleet-controller-{self.replica_id or uuid.uuid4().hex[:12]}"

    @property
    def stable_client_id(self) -> bool:
        """The MQTT client id is the same in the next process (configured, not drawn at
        random), so that process may resume this one's broker session."""
        return bool(self.mqtt_client_id or self.replica_id)

    def replica_name(self, client_id: str) -> str:
        return self.replica_id or client_id

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read ``EDGEFLEET_*`` variables from ``environ`` (e.g. ``os.environ``).

        Raises:
            SettingsError: a variable has a value that cannot be used; the message names it.
        """

        def get(name: str) -> str | None:
            value = environ.get(name)
            return None if value is None or value.strip() == "" else value.strip()

        def number(name: str, default: T, parse: Callable[[str], T], minimum: T) -> T:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = parse(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a valid number") from None
            if value < minimum:
                raise SettingsError(f"{name}={raw!r} must be >= {minimum}")
            return value

        defaults = cls()
        env = get("EDGEFLEET_ENV") or defaults.env
        if env not in ENVIRONMENTS:
            raise SettingsError(f"EDGEFLEET_ENV={env!r} must be one of {ENVIRONMENTS}")
        data_dir = Path(get("EDGEFLEET_DATA_DIR") or "./edgefleet-data")
        database_url = normalize_database_url(get("EDGEFLEET_DATABASE_URL") or "")
        broker_url = get("EDGEFLEET_BROKER_URL") or defaults.broker_url
        parse_broker_url(broker_url, "EDGEFLEET_BROKER_URL")
        public_url = get("EDGEFLEET_PUBLIC_URL")
        if public_url is not None:
            parsed = urlparse(public_url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise SettingsError(
                    f"EDGEFLEET_PUBLIC_URL={public_url!r} must look like http://HOST:PORT"
                )
            public_url = public_url.rstrip("/")
        release_key = get("EDGEFLEET_RELEASE_KEY")
        trusted = get("EDGEFLEET_TRUSTED_KEYS") or ""
        client_id = get("EDGEFLEET_MQTT_CLIENT_ID") or ""
        if len(client_id) > 128 or any(c in client_id for c in "/+#"):
            raise SettingsError(f"EDGEFLEET_MQTT_CLIENT_ID={client_id!r} is not a usable id")
        replica_id = get("EDGEFLEET_REPLICA_ID") or ""
        if len(replica_id) > 100 or any(c in replica_id for c in "/+#"):
            raise SettingsError(
                f"EDGEFLEET_REPLICA_ID={replica_id!r}: use up to 100 characters, no / + or #"
            )
        return cls(
            data_dir=data_dir,
            env=env,
            database_url=database_url,
            broker_url=broker_url,
            public_url=public_url,
            release_key=Path(release_key) if release_key else None,
            trusted_keys=tuple(Path(p.strip()) for p in trusted.split(",") if p.strip()),
            max_upload_bytes=number(
                "EDGEFLEET_MAX_UPLOAD_BYTES", defaults.max_upload_bytes, int, 1
            ),
            offline_after_s=number(
                "EDGEFLEET_OFFLINE_AFTER_S", defaults.offline_after_s, float, 1.0
            ),
            bundle_valid_days=number(
                "EDGEFLEET_BUNDLE_VALID_DAYS", defaults.bundle_valid_days, int, 1
            ),
            max_page_size=number("EDGEFLEET_MAX_PAGE_SIZE", defaults.max_page_size, int, 1),
            ingest_batch_size=number(
                "EDGEFLEET_INGEST_BATCH_SIZE", defaults.ingest_batch_size, int, 1
            ),
            ingest_batch_wait_s=number(
                "EDGEFLEET_INGEST_BATCH_WAIT_S", defaults.ingest_batch_wait_s, float, 0.0
            ),
            ingest_queue_max=number(
                "EDGEFLEET_INGEST_QUEUE_MAX", defaults.ingest_queue_max, int, 1
            ),
            mqtt_client_id=client_id,
            mqtt_keepalive_s=number(
                "EDGEFLEET_MQTT_KEEPALIVE_S", defaults.mqtt_keepalive_s, int, 5
            ),
            mqtt_session_expiry_s=number(
                "EDGEFLEET_MQTT_SESSION_EXPIRY_S", defaults.mqtt_session_expiry_s, int, 0
            ),
            compression_workers=number(
                "EDGEFLEET_COMPRESSION_WORKERS", defaults.compression_workers, int, 0
            ),
            compression_lease_s=number(
                "EDGEFLEET_COMPRESSION_LEASE_S", defaults.compression_lease_s, float, 1.0
            ),
            compression_poll_s=number(
                "EDGEFLEET_COMPRESSION_POLL_S", defaults.compression_poll_s, float, 0.05
            ),
            compression_max_queued=number(
                "EDGEFLEET_COMPRESSION_MAX_QUEUED", defaults.compression_max_queued, int, 1
            ),
            compression_max_attempts=number(
                "EDGEFLEET_COMPRESSION_MAX_ATTEMPTS", defaults.compression_max_attempts, int, 1
            ),
            compression_timeout_s=number(
                "EDGEFLEET_COMPRESSION_TIMEOUT_S", defaults.compression_timeout_s, float, 1.0
            ),
            replica_id=replica_id,
            rollout_tick_s=number("EDGEFLEET_ROLLOUT_TICK_S", defaults.rollout_tick_s, float, 0.01),
            rollout_lease_s=number(
                "EDGEFLEET_ROLLOUT_LEASE_S", defaults.rollout_lease_s, float, 0.1
            ),
            rollout_gate_interval_s=number(
                "EDGEFLEET_ROLLOUT_GATE_INTERVAL_S", defaults.rollout_gate_interval_s, float, 0.0
            ),
            rollout_republish_after_s=number(
                "EDGEFLEET_ROLLOUT_REPUBLISH_AFTER_S",
                defaults.rollout_republish_after_s,
                float,
                0.1,
            ),
            rollout_latency_lookback_s=number(
                "EDGEFLEET_ROLLOUT_LATENCY_LOOKBACK_S",
                defaults.rollout_latency_lookback_s,
                float,
                0.0,
            ),
            monitoring=MonitoringSettings.from_env(environ),
            capture_max_upload_bytes=number(
                "EDGEFLEET_CAPTURE_MAX_UPLOAD_BYTES", defaults.capture_max_upload_bytes, int, 1024
            ),
            capture_tick_s=number("EDGEFLEET_CAPTURE_TICK_S", defaults.capture_tick_s, float, 0.01),
            capture_republish_after_s=number(
                "EDGEFLEET_CAPTURE_REPUBLISH_AFTER_S",
                defaults.capture_republish_after_s,
                float,
                0.1,
            ),
        )


def parse_broker_url(url: str, variable: str = "broker URL") -> tuple[str, int]:
    """``mqtt://host:port`` -> ``(host, port)``; the port defaults to 1883."""
    parsed = urlparse(url)
    try:
        port = parsed.port or 1883
    except ValueError:
        raise SettingsError(f"{variable}={url!r} has an invalid port") from None
    if parsed.scheme not in ("mqtt", "tcp") or not parsed.hostname:
        raise SettingsError(f"{variable}={url!r} must look like mqtt://HOST:PORT")
    return parsed.hostname, port


def normalize_database_url(url: str) -> str:
    """Pick the psycopg 3 driver for plain ``postgresql://`` URLs (psycopg2 is not used)."""
    if not url:
        return url
    scheme = url.split(":", 1)[0]
    if "://" not in url:
        raise SettingsError(f"EDGEFLEET_DATABASE_URL={url!r} is not a database URL")
    if scheme in ("postgresql", "postgres"):
        return "postgresql+psycopg" + url[len(scheme) :]
    if not (scheme.startswith("sqlite") or scheme.startswith("postgresql")):
        raise SettingsError(
            f"EDGEFLEET_DATABASE_URL={url!r}: only sqlite:/// and postgresql:// are supported"
        )
    return url
