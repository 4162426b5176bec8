"""Data capture for retraining: sample inferences, spool them, upload one ``.npz``.

The controller asks through the retained capture set (:mod:`firmware_bundles.capture_wire`).
:class:`CaptureRecorder` has two sides:

- :meth:`~CaptureRecorder.offer`, on the inference hot path (any thread): with no
  capture open it is one attribute test. With one open, it checks bundle and expiry and
  draws one random number; only a sampled call copies its arrays, into memory. Nothing
  here touches the disk.
- everything else runs on the agent's worker thread: :meth:`apply` (a capture set
  arrived), :meth:`tick` (write what was sampled as a chunk, end captures that reached
  their cap or expired, upload, retry with backoff). Each returns the progress reports
  to publish on ``up/capture``.

A sample is one row of the batch axis: a call with a batch of 4 is 4 rows, each input
and output cut along axis 0 (a call whose tensors disagree on that axis is not
captured). ``max_samples`` counts rows; the byte cap counts what is kept on disk.
A capture for any bundle keeps to the first bundle it samples, so its rows stack.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

from agent.capture_sampler import LiveCapture, Sample, snapshot
from agent.capture_spool import (
    CANCELED,
    CAPTURING,
    EMPTY,
    FAILED,
    READY,
    UPLOADED,
    CaptureSpool,
    Spooled,
)
from agent.capture_upload import ACCEPTED, REFUSED, Uploader, UploadJob
from firmware_bundles import capture_wire as cw
from firmware_bundles.capture_wire import CaptureCommand, CaptureReport

log = logging.getLogger(__name__)

# A finished capture's record is kept this long past its expiry (then the retained
# command, if it still lists it, is ignored for being expired).
RECORD_GRACE_S = 3600.0


@dataclass
class _Retry:
    attempts: int = 0
    next_at: float = 0.0


@dataclass(frozen=True)
class RecorderLimits:
    max_bytes: int = 64 << 20  # on disk, per capture
    max_open: int = 4  # captures not yet finished (capturing or waiting to upload)
    retry_min_s: float = 2.0
    retry_max_s: float = 300.0


@dataclass
class _Book:
    """The worker's view: every capture on disk and what was last reported of each."""

    spooled: dict[str, Spooled] = field(default_factory=dict)
    reported_rows: dict[str, int] = field(default_factory=dict)
    retry: dict[str, _Retry] = field(default_factory=dict)


class CaptureRecorder:
    def __init__(
        self,
        spool: CaptureSpool,
        uploader: Uploader,
        *,
        device_id: str,
        limits: RecorderLimits = RecorderLimits(),
        wake: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._spool = spool
        self._uploader = uploader
        self._device_id = device_id
        self._limits = limits
        self._wake = wake
        self._clock = clock
        self._rng = rng or random.Random()
        self._book = _Book()
        self._lives: tuple[LiveCapture, ...] = ()  # replaced whole: the hot path reads it unlocked
        self._unstackable_logged = False
        for spooled in spool.load():
            self._book.spooled[spooled.capture_id] = spooled
            self._book.reported_rows[spooled.capture_id] = -1  # report where it stands
            if spooled.state == CAPTURING:
                self._lives += (LiveCapture(spooled, limits.max_bytes),)
            elif spooled.state == READY:
                self._book.retry[spooled.capture_id] = _Retry()

    # ------------------------------------------------------------ hot path (any thread)

    def offer(
        self,
        bundle_sha256: str,
        feeds: Mapping[str, npt.NDArray[Any]],
        outputs: Mapping[str, npt.NDArray[Any]],
    ) -> None:
        """Maybe keep a copy of one successful inference."""
        lives = self._lives
        if not lives:
            return
        sample: Sample | None = None
        wake = False
        for live in lives:
            if live.full or (live.bundle is not None and live.bundle != bundle_sha256):
                continue
            if self._rng.random() >= live.rate:
                continue
            now = self._clock()  # only for a call the draw picked
            if now >= live.expires_at:
                continue
            if sample is None:
                sample = snapshot(feeds, outputs, now)
                if sample is None:
                    if not self._unstackable_logged:
                        self._unstackable_logged = True
                        log.warning("capture: tensors do not share a batch axis; not captured")
                    return
            wake = live.take(sample, bundle_sha256) or wake
        if wake:
            self._wake()

    # ------------------------------------------------------------ worker thread

    @property
    def open_captures(self) -> list[str]:
        return [i for i, s in self._book.spooled.items() if not s.finished]

    def state_of(self, capture_id: str) -> Spooled | None:
        return self._book.spooled.get(capture_id)

    def apply(self, command: CaptureCommand) -> list[CaptureReport]:
        """Start the captures the set newly asks for; discard the ones it cancels."""
        now = self._clock()
        reports: list[CaptureReport] = []
        for request in command.captures:
            known = self._book.spooled.get(request.capture_id)
            if known is not None:
                if request.canceled and not known.finished:
                    reports.append(self._finish(known, CANCELED, "canceled by the controller"))
                continue  # already running or done: a redelivery changes nothing
            if request.canceled or now >= request.expires_at:
                continue
            if len(self.open_captures) >= self._limits.max_open:
                log.warning("capture %s refused: too many open captures", request.capture_id)
                spooled = self._spool.create(request)
                self._book.spooled[request.capture_id] = spooled
                reports.append(
                    self._finish(
                        spooled,
                        FAILED,
                        f"this device has {self._limits.max_open} captures open already",
                    )
                )
                continue
            spooled = self._spool.create(request)
            self._book.spooled[request.capture_id] = spooled
            self._book.reported_rows[request.capture_id] = 0
            self._lives += (LiveCapture(spooled, self._limits.max_bytes),)
            log.info(
                "capture %s started: rate %g, up to %d samples",
                request.capture_id,
                request.rate,
                request.max_samples,
            )
            reports.append(self._report(spooled, cw.CAPTURING))
        return reports

    def tick(self) -> list[CaptureReport]:
        """Write what was sampled; end, upload and retry captures as due."""
        now = self._clock()
        reports: list[CaptureReport] = []
        for live in self._lives:
            self._write_pending(live)
        for live in self._lives:
            spooled = self._book.spooled[live.capture_id]
            if live.full or now >= live.expires_at:
                reports.append(self._end_sampling(spooled))
            elif spooled.rows != self._book.reported_rows.get(live.capture_id):
                reports.append(self._report(spooled, cw.CAPTURING))
        for spooled in self._book.spooled.values():
            if self._book.reported_rows.get(spooled.capture_id) == -1:
                reports.append(self._report_as_is(spooled))
        reports += self._collect_uploads(now)
        self._start_upload(now)
        self._forget_old(now)
        return [r for r in reports if r is not None]

    def close(self) -> None:
        self._uploader.close()

    # ------------------------------------------------------------ internals

    def _write_pending(self, live: LiveCapture) -> None:
        samples = live.take_pending()
        if not samples:
            return
        spooled = self._book.spooled[live.capture_id]
        if spooled.bundle_sha256 != live.bundle or spooled.signature != live.signature:
            spooled.bundle_sha256, spooled.signature = live.bundle, live.signature
            self._spool.save(spooled)  # before the first chunk: what its rows are
        rows = sum(s.rows for s in samples)
        try:
            self._spool.append(spooled, [s.arrays for s in samples], rows)
        except OSError as exc:
            log.error("capture %s: cannot write %d samples: %s", live.capture_id, rows, exc)

    def _end_sampling(self, spooled: Spooled) -> CaptureReport:
        self._drop_live(spooled.capture_id)
        if spooled.rows == 0:
            return self._finish(spooled, EMPTY, "nothing sampled before the capture ended")
        try:
            spooled.bytes = self._spool.build_upload(spooled).stat().st_size
        except OSError as exc:
            log.error("capture %s: cannot build the upload: %s", spooled.capture_id, exc)
            return self._finish(spooled, FAILED, f"cannot build the upload: {exc}")
        spooled.state = READY
        self._spool.save(spooled)
        for chunk in spooled.chunks:  # upload.npz holds every row now
            chunk.unlink(missing_ok=True)
        self._book.retry[spooled.capture_id] = _Retry()
        log.info("capture %s: %d samples ready to upload", spooled.capture_id, spooled.rows)
        return self._report(spooled, cw.UPLOADING)

    def _finish(self, spooled: Spooled, state: str, message: str) -> CaptureReport:
        """Record a final state, then delete the samples (the record outlives them)."""
        self._drop_live(spooled.capture_id)
        self._book.retry.pop(spooled.capture_id, None)
        spooled.state, spooled.message = state, message
        self._spool.save(spooled)
        self._spool.drop_samples(spooled)
        status = {UPLOADED: cw.UPLOADED, EMPTY: cw.EMPTY, CANCELED: cw.CANCELED}.get(
            state, cw.FAILED
        )
        return self._report(spooled, status, message)

    def _drop_live(self, capture_id: str) -> None:
        self._lives = tuple(live for live in self._lives if live.capture_id != capture_id)

    def _collect_uploads(self, now: float) -> list[CaptureReport]:
        reports: list[CaptureReport] = []
        for result in self._uploader.results():
            spooled = self._book.spooled.get(result.capture_id)
            if spooled is None or spooled.state != READY:
                continue  # canceled meanwhile
            if result.outcome == ACCEPTED:
                log.info("capture %s: uploaded %d samples", spooled.capture_id, spooled.rows)
                reports.append(self._finish(spooled, UPLOADED, ""))
            elif result.outcome == REFUSED:
                log.warning("capture %s: upload refused: %s", spooled.capture_id, result.message)
                reports.append(self._finish(spooled, FAILED, result.message))
            else:
                retry = self._book.retry.setdefault(spooled.capture_id, _Retry())
                retry.attempts += 1
                delay = min(
                    self._limits.retry_max_s,
                    self._limits.retry_min_s * 2 ** min(retry.attempts - 1, 30),
                )
                retry.next_at = now + delay
                log.info(
                    "capture %s: upload failed (%s); retrying in %.0f s",
                    spooled.capture_id,
                    result.message,
                    delay,
                )
        return reports

    def _start_upload(self, now: float) -> None:
        if self._uploader.busy:
            return
        for capture_id, retry in self._book.retry.items():
            spooled = self._book.spooled[capture_id]
            if spooled.state == READY and retry.next_at <= now:
                path = self._spool.upload_path(capture_id)
                self._uploader.submit(UploadJob(capture_id, spooled.request.upload_url, path))
                return

    def _forget_old(self, now: float) -> None:
        for capture_id, spooled in list(self._book.spooled.items()):
            if spooled.finished and now > spooled.request.expires_at + RECORD_GRACE_S:
                self._spool.remove(capture_id)
                del self._book.spooled[capture_id]
                self._book.reported_rows.pop(capture_id, None)

    def _report_as_is(self, spooled: Spooled) -> CaptureReport:
        """After a restart: say where each capture stands (a report may have been lost)."""
        status = {
            CAPTURING: cw.CAPTURING,
            READY: cw.UPLOADING,
            UPLOADED: cw.UPLOADED,
            EMPTY: cw.EMPTY,
            CANCELED: cw.CANCELED,
        }.get(spooled.state, cw.FAILED)
        return self._report(spooled, status, spooled.message)

    def _report(self, spooled: Spooled, status: str, message: str = "") -> CaptureReport:
        self._book.reported_rows[spooled.capture_id] = spooled.rows
        return CaptureReport(
            device_id=self._device_id,
            capture_id=spooled.capture_id,
            ts=self._clock(),
            status=status,
            samples=spooled.rows,
            size=spooled.bytes,
            bundle_sha256=spooled.bundle_sha256,
            message=message,
        )
