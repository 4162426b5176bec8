"""Uploading a finished capture: one HTTP POST (urllib), on a thread of its own.

An upload can take minutes on a slow link; on the agent's worker it would hold up
desired states and telemetry. So the worker decides what to upload and when (with
backoff), :class:`BackgroundUploader` only carries one job at a time and hands the
outcome back through ``wake``. The outcome is ``accepted`` (2xx), ``refused`` (a 4xx
other than 408/429: the controller will never take this file; its message says why)
or ``retry`` (anything else: network, 5xx, 408, 429).
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import threading
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

ACCEPTED = "accepted"
REFUSED = "refused"
RETRY = "retry"
_RETRYABLE_4XX = (408, 429)


@dataclass(frozen=True)
class UploadJob:
    capture_id: str
    url: str
    path: Path


@dataclass(frozen=True)
class UploadResult:
    capture_id: str
    outcome: str
    message: str = ""


Post = Callable[[UploadJob], UploadResult]


def post_capture(job: UploadJob, *, timeout: float) -> UploadResult:
    """POST ``job.path`` to ``job.url`` as ``application/octet-stream``."""
    try:
        size = job.path.stat().st_size
        with job.path.open("rb") as body:
            request = urllib.request.Request(
                job.url,
                data=body,
                method="POST",
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(size),
                    "User-Agent": "edgefleet-agent",
                },
            )
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read(1 << 16)
        return UploadResult(job.capture_id, ACCEPTED)
    except urllib.error.HTTPError as exc:
        detail = _detail(exc)
        message = f"POST {job.url} answered HTTP {exc.code}: {detail}"
        if 400 <= exc.code < 500 and exc.code not in _RETRYABLE_4XX:
            return UploadResult(job.capture_id, REFUSED, message)
        return UploadResult(job.capture_id, RETRY, message)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        return UploadResult(job.capture_id, RETRY, f"POST {job.url} failed: {exc}")


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read(4096)
        detail = json.loads(body).get("detail", "")
        return str(detail)[:300] if detail else body.decode(errors="replace")[:300]
    except (OSError, ValueError, AttributeError):
        return exc.reason if isinstance(exc.reason, str) else ""


class Uploader(Protocol):
    """What the capture recorder hands uploads to."""

    @property
    def busy(self) -> bool: ...

    def submit(self, job: UploadJob) -> None: ...

    def results(self) -> list[UploadResult]: ...

    def close(self) -> None: ...


class BackgroundUploader:
    """Runs ``post`` for one job at a time on a daemon thread; ``wake`` on each outcome."""

    def __init__(self, post: Post, wake: Callable[[], None]) -> None:
        self._post = post
        self._wake = wake
        self._jobs: queue.Queue[UploadJob | None] = queue.Queue()
        self._done: deque[UploadResult] = deque()
        self._busy = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        return self._busy.is_set()

    def submit(self, job: UploadJob) -> None:
        if self._busy.is_set():
            raise RuntimeError("an upload is already running")
        self._busy.set()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="capture-upload", daemon=True)
            self._thread.start()
        self._jobs.put_nowait(job)

    def results(self) -> list[UploadResult]:
        out: list[UploadResult] = []
        while self._done:
            out.append(self._done.popleft())
        return out

    def close(self) -> None:
        """Stop taking jobs; a POST in flight finishes on its own (daemon thread)."""
        if self._thread is not None:
            self._jobs.put_nowait(None)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                result = self._post(job)
            except Exception as exc:  # a bug in posting must not kill the thread
                log.exception("capture %s: upload failed unexpectedly", job.capture_id)
                result = UploadResult(job.capture_id, RETRY, f"internal error: {exc}")
            self._done.append(result)
            self._busy.clear()
            try:
                self._wake()
            except Exception:
                log.exception("capture %s: cannot wake the agent", job.capture_id)
