"""MQTT topics and payloads between controller and devices (schema 1).

Shared by the controller and the agent, which never import each other. Pure: every
``parse_*`` takes the raw bytes and returns a typed message or raises
:class:`~firmware_bundles.errors.WireError` naming what was wrong.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from firmware_bundles.errors import WireError
from firmware_bundles.latency_histogram import parse_histogram
from firmware_bundles.wire_numbers import check_drift_stats, count, finite, reject_constant

SCHEMA = 1
PREFIX = "edgefleet/v1/dev"
SHARED_GROUP = "edgefleet-controllers"
MAX_PAYLOAD_BYTES = 256 * 1024
DEVICE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")

UP_KINDS = ("state", "events", "telemetry", "drift", "status", "capture")
DOWN_KINDS = ("desired", "cmd")
PHASES = ("idle", "downloading", "verifying", "installing", "health_check", "trial", "failed")


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is safe inside a topic; raise :class:`WireError` if not."""
    if not isinstance(device_id, str) or not DEVICE_ID_RE.match(device_id):
        raise WireError(
            f"invalid device id {device_id!r}: use 1-63 of a-z, 0-9 and '-', starting alphanumeric"
        )
    return device_id


def topic(device_id: str, direction: str, kind: str) -> str:
    check_device_id(device_id)
    return f"{PREFIX}/{device_id}/{direction}/{kind}"


def controller_subscription(shared: bool = True) -> str:
    base = f"{PREFIX}/+/up/#"
    return f"$share/{SHARED_GROUP}/{base}" if shared else base


def split_topic(name: str) -> tuple[str, str, str]:
    """``edgefleet/v1/dev/ID/up/state`` -> ``(ID, "up", "state")``."""
    parts = name.split("/")
    if len(parts) != 6 or "/".join(parts[:3]) != PREFIX or parts[4] not in ("up", "down"):
        raise WireError(f"topic {name!r} is not an EdgeFleet device topic")
    kinds = UP_KINDS if parts[4] == "up" else DOWN_KINDS
    if parts[5] not in kinds:
        raise WireError(f"topic {name!r} has unknown kind {parts[5]!r}")
    return check_device_id(parts[3]), parts[4], parts[5]


# ---------------------------------------------------------------- decoding helpers


def _load(payload: bytes, what: str) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WireError(f"{what} payload is {len(payload)} bytes, over {MAX_PAYLOAD_BYTES}")
    try:
        data = json.loads(payload, parse_constant=reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise WireError(f"{what} payload is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise WireError(f"{what} payload must be a JSON object, got {type(data).__name__}")
    schema = data.get("schema")
    if schema != SCHEMA:
        raise WireError(f"{what} payload has schema {schema!r}, expected {SCHEMA}")
    return data


def _get(data: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = data.get(key)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise WireError(f"{what}.{key} must be {kinds[0].__name__}, got bool")
    if not isinstance(value, kind):
        raise WireError(f"{what}.{key} must be {kinds[0].__name__}, got {value!r:.80}")
    return value


def _opt(data: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    return None if data.get(key) is None else _get(data, key, kind, what)


def _dumps(obj: Any) -> bytes:
    data = asdict(obj)
    data["schema"] = SCHEMA
    return json.dumps(data, separators=(",", ":")).encode()


# ---------------------------------------------------------------- desired state


@dataclass(frozen=True)
class BundleRef:
    """Which bundle: the sha256 of its signed envelope, plus readable name/version."""

    manifest_sha256: str
    name: str
    version: str

    @staticmethod
    def parse(raw: object, what: str) -> BundleRef:
        if not isinstance(raw, dict):
            raise WireError(f"{what} must be an object, got {raw!r:.80}")
        sha = _get(raw, "manifest_sha256", str, what)
        if not _SHA_RE.match(sha):
            raise WireError(f"{what}.manifest_sha256 is not a sha256 hex digest: {sha!r:.80}")
        return BundleRef(sha, _get(raw, "name", str, what), _get(raw, "version", str, what))


@dataclass(frozen=True)
class Desired:
    """Complete, idempotent desired state: "run bundle X" (or nothing yet)."""

    generation: int
    bundle: BundleRef | None
    deployment_id: str | None = None
    blob_base_url: str | None = None
    # Trial policy for this rollout (agent.trial.TrialPolicy fields); overrides the bundle's.
    trial: dict[str, Any] | None = None

    def to_bytes(self) -> bytes:
        return _dumps(self)


def parse_desired(payload: bytes) -> Desired:
    data = _load(payload, "desired")
    generation = _get(data, "generation", int, "desired")
    bundle = data.get("bundle")
    return Desired(
        generation=generation,
        bundle=None if bundle is None else BundleRef.parse(bundle, "desired.bundle"),
        deployment_id=_opt(data, "deployment_id", str, "desired"),
        blob_base_url=_opt(data, "blob_base_url", str, "desired"),
        trial=_opt(data, "trial", dict, "desired"),
    )


# ---------------------------------------------------------------- device -> controller


@dataclass(frozen=True)
class ErrorInfo:
    code: str
    message: str


@dataclass(frozen=True)
class State:
    """The device's retained report of where it is."""

    device_id: str
    ts: float
    phase: str
    hardware_class: str
    tags: list[str] = field(default_factory=list)
    active: BundleRef | None = None
    previous: BundleRef | None = None
    generation: int = 0
    deployment_id: str | None = None
    error: ErrorInfo | None = None
    agent_version: str = ""
    on_trial: bool = False

    def to_bytes(self) -> bytes:
        return _dumps(self)


def _bundle_or_none(data: dict[str, Any], key: str) -> BundleRef | None:
    raw = data.get(key)
    return None if raw is None else BundleRef.parse(raw, f"state.{key}")


def parse_state(payload: bytes) -> State:
    data = _load(payload, "state")
    phase = _get(data, "phase", str, "state")
    if phase not in PHASES:
        raise WireError(f"state.phase {phase!r} is not one of {PHASES}")
    tags = _get(data, "tags", list, "state")
    if not all(isinstance(t, str) for t in tags):
        raise WireError("state.tags must be a list of strings")
    err_raw = data.get("error")
    error = None
    if err_raw is not None:
        if not isinstance(err_raw, dict):
            raise WireError("state.error must be an object")
        error = ErrorInfo(
            _get(err_raw, "code", str, "state.error"), _get(err_raw, "message", str, "state.error")
        )
    return State(
        device_id=check_device_id(_get(data, "device_id", str, "state")),
        ts=finite(data.get("ts"), "state.ts"),
        phase=phase,
        hardware_class=_get(data, "hardware_class", str, "state"),
        tags=list(tags),
        active=_bundle_or_none(data, "active"),
        previous=_bundle_or_none(data, "previous"),
        generation=_get(data, "generation", int, "state"),
        deployment_id=_opt(data, "deployment_id", str, "state"),
        error=error,
        agent_version=_opt(data, "agent_version", str, "state") or "",
        on_trial=bool(_opt(data, "on_trial", bool, "state")),
    )


EVENT_TYPES = (
    "update_started",
    "update_succeeded",
    "update_failed",
    "rolled_back",
    "committed",
    "agent_started",
)


@dataclass(frozen=True)
class Event:
    device_id: str
    ts: float
    type: str
    deployment_id: str | None = None
    bundle: BundleRef | None = None
    code: str | None = None
    message: str = ""

    def to_bytes(self) -> bytes:
        return _dumps(self)


def parse_event(payload: bytes) -> Event:
    data = _load(payload, "event")
    kind = _get(data, "type", str, "event")
    if kind not in EVENT_TYPES:
        raise WireError(f"event.type {kind!r} is not one of {EVENT_TYPES}")
    bundle = data.get("bundle")
    return Event(
        device_id=check_device_id(_get(data, "device_id", str, "event")),
        ts=finite(data.get("ts"), "event.ts"),
        type=kind,
        deployment_id=_opt(data, "deployment_id", str, "event"),
        bundle=None if bundle is None else BundleRef.parse(bundle, "event.bundle"),
        code=_opt(data, "code", str, "event"),
        message=_opt(data, "message", str, "event") or "",
    )


@dataclass(frozen=True)
class Telemetry:
    """One window of inference statistics; counts add up across windows and devices."""

    device_id: str
    seq: int
    window_start: float
    window_end: float
    inference_count: int
    error_count: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    bundle: BundleRef | None = None
    # Successful inferences' latencies, bucketed (firmware_bundles.latency_histogram):
    # what lets the controller merge percentiles across windows and devices exactly.
    latency_histogram: dict[int, int] | None = None

    def to_bytes(self) -> bytes:
        return _dumps(self)


def parse_telemetry(payload: bytes) -> Telemetry:
    data = _load(payload, "telemetry")
    counts: dict[str, int] = {}
    for key in ("seq", "inference_count", "error_count"):
        counts[key] = count(data.get(key), f"telemetry.{key}")
    start = finite(data.get("window_start"), "telemetry.window_start")
    end = finite(data.get("window_end"), "telemetry.window_end")
    if end < start:
        raise WireError(f"telemetry window ends ({end}) before it starts ({start})")

    def latency(key: str) -> float | None:
        value = data.get(key)
        return None if value is None else finite(value, f"telemetry.{key}")

    bundle = data.get("bundle")
    raw_histogram = data.get("latency_histogram")
    histogram = (
        None
        if raw_histogram is None
        else parse_histogram(raw_histogram, "telemetry.latency_histogram")
    )
    if histogram is not None and sum(histogram.values()) > counts["inference_count"]:
        raise WireError(
            f"telemetry.latency_histogram counts {sum(histogram.values())} inferences, "
            f"more than inference_count {counts['inference_count']}"
        )
    return Telemetry(
        device_id=check_device_id(_get(data, "device_id", str, "telemetry")),
        seq=counts["seq"],
        window_start=start,
        window_end=end,
        inference_count=counts["inference_count"],
        error_count=counts["error_count"],
        latency_p50_ms=latency("latency_p50_ms"),
        latency_p95_ms=latency("latency_p95_ms"),
        latency_p99_ms=latency("latency_p99_ms"),
        bundle=None if bundle is None else BundleRef.parse(bundle, "telemetry.bundle"),
        latency_histogram=histogram,
    )


@dataclass(frozen=True)
class Drift:
    """One window of drift counts: feature name -> counts over the reference's buckets
    plus n, missing, min, max, sum and sum of squares. Adds up across windows/devices."""

    device_id: str
    seq: int
    window_start: float
    window_end: float
    bundle: BundleRef
    features: dict[str, dict[str, Any]]

    def to_bytes(self) -> bytes:
        return _dumps(self)


def parse_drift(payload: bytes) -> Drift:
    data = _load(payload, "drift")
    features = _get(data, "features", dict, "drift")
    for name, stats in features.items():
        check_drift_stats(stats, f"drift.features[{name!r:.40}]")
    start = finite(data.get("window_start"), "drift.window_start")
    end = finite(data.get("window_end"), "drift.window_end")
    if end < start:
        raise WireError(f"drift window ends ({end}) before it starts ({start})")
    seq = count(data.get("seq"), "drift.seq")
    return Drift(
        device_id=check_device_id(_get(data, "device_id", str, "drift")),
        seq=seq,
        window_start=start,
        window_end=end,
        bundle=BundleRef.parse(data.get("bundle"), "drift.bundle"),
        features=features,
    )


@dataclass(frozen=True)
class Status:
    """Online marker; the offline form is the agent's MQTT Last Will."""

    online: bool
    ts: float

    def to_bytes(self) -> bytes:
        return _dumps(self)


def parse_status(payload: bytes) -> Status:
    data = _load(payload, "status")
    return Status(
        online=_get(data, "online", bool, "status"),
        ts=finite(data.get("ts"), "status.ts"),
    )
