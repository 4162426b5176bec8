"""Data-capture messages between controller and devices (schema 1). Pure.

Down, on ``edgefleet/v1/dev/{id}/down/cmd``, retained at QoS 1: the device's **capture
set**, every capture the controller currently asks of that device, each with a rate, a
cap, an expiry and where to upload; a canceled capture stays listed (``canceled: true``)
until it expires, so a device that was offline learns to discard it. The set is
complete and idempotent like the desired state: one retained message per topic means a
second capture published alone would overwrite the first, and a redelivery (every
reconnect) changes nothing. A capture absent from the set is no order at all: the
device finishes it by its own clock and uploads. An empty payload is the empty set.

Up, on ``edgefleet/v1/dev/{id}/up/capture`` at QoS 1 (through the agent's outbox): a
device's progress on one capture (samples so far, uploading, uploaded, empty, canceled,
failed with a reason).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from firmware_bundles.errors import WireError
from firmware_bundles.wire import SCHEMA, _get, _load, _opt, check_device_id

CAPTURE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
COMMAND_TYPE = "captures"
MAX_SAMPLES = 1_000_000  # per device per capture: far past what a retraining sample needs
MAX_CAPTURES = 16  # open captures listed for one device at once
MAX_URL_CHARS = 2048
MAX_MESSAGE_CHARS = 500

CAPTURING = "capturing"
UPLOADING = "uploading"
UPLOADED = "uploaded"
EMPTY = "empty"
CANCELED = "canceled"
FAILED = "failed"
REPORT_STATUSES = (CAPTURING, UPLOADING, UPLOADED, EMPTY, CANCELED, FAILED)


def check_capture_id(value: object, what: str = "capture_id") -> str:
    if not isinstance(value, str) or not CAPTURE_ID_RE.match(value):
        raise WireError(f"{what} must be 32 lowercase hex digits, got {value!r:.80}")
    return value


@dataclass(frozen=True)
class CaptureRequest:
    """One capture asked of one device.

    Sample each inference with probability ``rate`` while serving bundle
    ``bundle_sha256`` (any bundle when None) until ``expires_at`` (epoch seconds) or
    ``max_samples`` rows, then POST one ``.npz`` to ``upload_url``.
    """

    capture_id: str
    rate: float
    max_samples: int
    expires_at: float
    upload_url: str
    bundle_sha256: str | None = None
    canceled: bool = False


@dataclass(frozen=True)
class CaptureCommand:
    """The retained capture set of one device."""

    captures: tuple[CaptureRequest, ...] = ()

    def to_bytes(self) -> bytes:
        """The payload to publish; the empty set is the empty payload (clears the topic)."""
        if not self.captures:
            return b""
        data = {
            "schema": SCHEMA,
            "type": COMMAND_TYPE,
            "captures": [asdict(c) for c in self.captures],
        }
        return json.dumps(data, separators=(",", ":")).encode()


def _parse_request(raw: object, index: int) -> CaptureRequest:
    what = f"captures[{index}]"
    if not isinstance(raw, dict):
        raise WireError(f"{what} must be an object, got {raw!r:.80}")
    capture_id = check_capture_id(raw.get("capture_id"), f"{what}.capture_id")
    rate = float(_get(raw, "rate", (float, int), what))
    if not 0.0 < rate <= 1.0:  # NaN fails this too
        raise WireError(f"{what}.rate must be in (0, 1], got {rate}")
    max_samples = _get(raw, "max_samples", int, what)
    if not 1 <= max_samples <= MAX_SAMPLES:
        raise WireError(f"{what}.max_samples must be 1..{MAX_SAMPLES}, got {max_samples}")
    expires_at = float(_get(raw, "expires_at", (float, int), what))
    if not math.isfinite(expires_at) or expires_at <= 0:
        raise WireError(f"{what}.expires_at must be epoch seconds, got {expires_at}")
    url = _get(raw, "upload_url", str, what)
    if len(url) > MAX_URL_CHARS or not url.startswith(("http://", "https://")):
        raise WireError(f"{what}.upload_url must be an http(s) URL, got {url!r:.80}")
    bundle = _opt(raw, "bundle_sha256", str, what)
    if bundle is not None and not _SHA_RE.match(bundle):
        raise WireError(f"{what}.bundle_sha256 is not a sha256 hex digest: {bundle!r:.80}")
    canceled = _opt(raw, "canceled", bool, what) or False
    return CaptureRequest(capture_id, rate, max_samples, expires_at, url, bundle, canceled)


def parse_capture_command(payload: bytes) -> CaptureCommand:
    """Parse the retained ``down/cmd`` payload (empty: no captures)."""
    if not payload:
        return CaptureCommand(())
    data = _load(payload, "command")
    kind = data.get("type")
    if kind != COMMAND_TYPE:
        raise WireError(f"command.type must be {COMMAND_TYPE!r}, got {kind!r:.80}")
    raw = _get(data, "captures", list, "command")
    if len(raw) > MAX_CAPTURES:
        raise WireError(f"command lists {len(raw)} captures, more than {MAX_CAPTURES}")
    captures = tuple(_parse_request(item, i) for i, item in enumerate(raw))
    ids = [c.capture_id for c in captures]
    if len(set(ids)) != len(ids):
        raise WireError(f"command lists a capture twice: {ids}")
    return CaptureCommand(captures)


@dataclass(frozen=True)
class CaptureReport:
    """A device's progress on one capture (``up/capture``)."""

    device_id: str
    capture_id: str
    ts: float
    status: str
    samples: int
    size: int = 0  # bytes kept on disk (or of the upload)
    bundle_sha256: str | None = None
    message: str = ""

    def to_bytes(self) -> bytes:
        data: dict[str, Any] = asdict(self)
        data["schema"] = SCHEMA
        return json.dumps(data, separators=(",", ":")).encode()


def parse_capture_report(payload: bytes) -> CaptureReport:
    data = _load(payload, "capture")
    status = _get(data, "status", str, "capture")
    if status not in REPORT_STATUSES:
        raise WireError(f"capture.status {status!r:.40} is not one of {REPORT_STATUSES}")
    counts = {}
    for key in ("samples", "size"):
        value = _get(data, key, int, "capture")
        if not 0 <= value <= 1 << 50:
            raise WireError(f"capture.{key} must be >= 0, got {value}")
        counts[key] = value
    if counts["samples"] > MAX_SAMPLES:
        raise WireError(f"capture.samples {counts['samples']} is over {MAX_SAMPLES}")
    ts = float(_get(data, "ts", (float, int), "capture"))
    if not math.isfinite(ts):
        raise WireError(f"capture.ts must be a finite number, got {ts}")
    bundle = _opt(data, "bundle_sha256", str, "capture")
    if bundle is not None and not _SHA_RE.match(bundle):
        raise WireError(f"capture.bundle_sha256 is not a sha256 hex digest: {bundle!r:.80}")
    message = _opt(data, "message", str, "capture") or ""
    return CaptureReport(
        device_id=check_device_id(_get(data, "device_id", str, "capture")),
        capture_id=check_capture_id(data.get("capture_id"), "capture.capture_id"),
        ts=ts,
        status=status,
        samples=counts["samples"],
        size=counts["size"],
        bundle_sha256=bundle,
        message=message[:MAX_MESSAGE_CHARS],
    )
