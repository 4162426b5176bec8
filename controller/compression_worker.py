"""Runs compression jobs on this replica: claims them through the database, runs each in
a child process (:mod:`controller.compression_process`), relays progress, stores the
result as a new model version.

``workers`` threads, each running at most one job at a time, bound what one replica
spends on compression. While a child works, its thread renews the job's lease every
third of ``lease_s``; if the renewal finds the job is no longer ours (this replica was
too slow and another took it over) the child is killed and its result dropped. If this
replica dies, nobody renews the lease and another replica takes the job over once it
expires.
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from controller.blobstore import BlobStore
from controller.compression_job_model import CompressionJob
from controller.compression_process import child_main
from controller.compression_request import JobSpec
from controller.models import utcnow
from controller.services import compression_jobs as jobs

log = logging.getLogger(__name__)
# A progress report from the child reaches the database within this long, and no sooner
# after the last write (an operator polling a job sees each candidate go by).
PROGRESS_WRITE_S = 0.25
# With no news the lease is still renewed this often (and at least every lease/3).
RENEW_S = 1.0


@dataclass(frozen=True)
class WorkerLimits:
    """Named limits of the compression worker (from the controller settings)."""

    workers: int = 1
    lease_s: float = 30.0
    poll_s: float = 1.0
    max_attempts: int = 3
    timeout_s: float = 3600.0
    max_output_bytes: int = 512 << 20


@dataclass
class _Outcome:
    report: dict[str, Any] | None = None
    error: str | None = None
    error_report: dict[str, Any] | None = None
    lost: bool = False


class CompressionWorker:
    """Polls for jobs on ``limits.workers`` threads; ``start``/``stop`` it with the app."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: BlobStore,
        work_dir: Path,
        limits: WorkerLimits,
        *,
        owner: str | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.work_dir = work_dir
        self.limits = limits
        self.owner = owner or f"compress-{uuid.uuid4().hex[:12]}"
        self.clock = clock
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._children: set[multiprocessing.process.BaseProcess] = set()
        self._children_lock = threading.Lock()
        self.jobs_run = 0

    def start(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        for index in range(self.limits.workers):
            thread = threading.Thread(target=self._loop, name=f"{self.owner}-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop polling and kill running children; their jobs are taken over later."""
        self._stop.set()
        with self._children_lock:
            for child in self._children:
                child.kill()
        for thread in self._threads:
            thread.join(timeout)

    # ------------------------------------------------------------------ loop

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                ran = self.run_once()
            except Exception:  # the loop must survive a bad job or a database hiccup
                log.exception("%s: compression worker error", self.owner)
                ran = False
            if not ran:
                self._stop.wait(self.limits.poll_s)

    def run_once(self) -> bool:
        """Claim and run one job; False if there was none to claim."""
        with self.sessions() as session:
            job = jobs.claim_next(
                session,
                self.owner,
                self.clock(),
                lease_s=self.limits.lease_s,
                max_attempts=self.limits.max_attempts,
            )
        if job is None:
            return False
        log.info("%s: running compression job %s (attempt %d)", self.owner, job.id, job.attempts)
        self.jobs_run += 1
        self.work_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"job-{job.id[:8]}-", dir=self.work_dir))
        try:
            self._run(job, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return True

    def _run(self, job: CompressionJob, work: Path) -> None:
        spec = JobSpec.from_dict(job.request)
        payload: dict[str, Any] = {
            "spec": spec.to_dict(),
            "model": str(self.store.existing_path(job.source.sha256)),
            "output": str(work / "compressed.onnx"),
            "calibration": self._npz(spec.calibration_sha256, work, "calibration"),
            "evaluation": self._npz(spec.evaluation_sha256, work, "evaluation"),
        }
        outcome = self._supervise(job.id, payload)
        now = self.clock()
        with self.sessions() as session:
            if outcome.lost:
                log.warning("%s: lost the lease of job %s; result dropped", self.owner, job.id)
            elif outcome.report is None:
                jobs.fail_job(
                    session, job.id, self.owner, now, outcome.error or "?", outcome.error_report
                )
            else:
                self._store_result(session, job, Path(payload["output"]), outcome.report)

    def _npz(self, sha256: str | None, work: Path, what: str) -> str | None:
        if sha256 is None:
            return None
        # compress reads inputs by suffix-less path fine, but names .npz files in reports.
        link = work / f"{what}.npz"
        link.symlink_to(self.store.existing_path(sha256).resolve())
        return str(link)

    def _store_result(
        self, session: Session, job: CompressionJob, output: Path, report: dict[str, Any]
    ) -> None:
        now = self.clock()
        try:
            with (
                self.store.stage(max_bytes=self.limits.max_output_bytes) as staged,
                output.open("rb") as source,
            ):
                staged.copy_from(source)
                digest = staged.commit()
                size = staged.size
        except Exception as exc:  # a missing output or a full disk: the job failed
            jobs.fail_job(session, job.id, self.owner, now, f"cannot store the result: {exc}")
            return
        if jobs.finish_job(
            session, job.id, self.owner, now, sha256=digest, size=size, report=report
        ):
            log.info("%s: compression job %s succeeded", self.owner, job.id)

    # ------------------------------------------------------------------ the child

    def _supervise(self, job_id: str, payload: dict[str, Any]) -> _Outcome:
        context = multiprocessing.get_context("spawn")
        parent, child_end = context.Pipe(duplex=False)
        child = context.Process(
            target=child_main, args=(payload, child_end), name=f"compress-{job_id[:8]}"
        )
        with self._children_lock:
            if self._stop.is_set():
                return _Outcome(lost=True)
            child.start()
            self._children.add(child)
        child_end.close()
        try:
            return self._relay(job_id, child, parent)
        finally:
            if child.is_alive():
                child.kill()
            child.join(5)
            with self._children_lock:
                self._children.discard(child)
            parent.close()

    def _relay(
        self, job_id: str, child: multiprocessing.process.BaseProcess, conn: Connection
    ) -> _Outcome:
        started = time.monotonic()
        renew_every = min(self.limits.lease_s / 3, RENEW_S)
        next_renewal = written_at = started  # renew at once: the spawn takes a while
        progress, message = 0.0, "starting the compression process"
        while True:
            if time.monotonic() >= next_renewal:
                with self.sessions() as session:
                    owned = jobs.renew_lease(
                        session,
                        job_id,
                        self.owner,
                        self.clock(),
                        lease_s=self.limits.lease_s,
                        progress=progress,
                        message=message,
                    )
                if not owned:
                    return _Outcome(lost=True)
                written_at = time.monotonic()
                next_renewal = written_at + renew_every
            if self._stop.is_set():
                return _Outcome(lost=True)  # shutting down: another replica takes it over
            if time.monotonic() - started > self.limits.timeout_s:
                return _Outcome(error=f"timed out after {self.limits.timeout_s:.0f} s")
            wait = max(0.0, min(next_renewal - time.monotonic(), 0.5))
            try:
                ready = conn.poll(wait)
                item = conn.recv() if ready else None
            except EOFError:
                child.join(5)
                return _Outcome(
                    error=f"the compression process died (exit code {child.exitcode}) at: {message}"
                )
            if item is None:
                continue
            if item[0] == "progress":
                progress, message = float(item[1]), str(item[2])
                next_renewal = min(next_renewal, written_at + PROGRESS_WRITE_S)
            elif item[0] == "done":
                return _Outcome(report=item[1])
            else:
                return _Outcome(error=str(item[1]), error_report=item[2])
