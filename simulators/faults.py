"""Per-device fault profiles for simulated fleets.

Every fault goes through the real agent code: a faulty model is a wrapper around the
real runner (so the health check and the trial judge see it), a corrupted download
puts wrong bytes where the real verifier reads them, a slow link paces the bytes the
real downloader reads from its HTTP response, a network cut closes the real MQTT
socket, and a power loss stops the agent thread mid-step with no goodbye.
"""

from __future__ import annotations

import random
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt

from agent.fetch import BlobResponse, Opener, fetch_file, open_url
from agent.updater import Downloader, RunnerFactory, default_runner_factory
from firmware_bundles.manifest import FileEntry, Manifest, TensorSpec
from firmware_bundles.runtimes import ModelRunner, RuntimeLoadError


class SimulatedCrash(Exception):
    """The model crashed the agent process; the fleet restarts that agent."""


class SimulatedInferenceError(RuntimeError):
    """One inference failed (the process survives)."""


class SimulatedPowerLoss(BaseException):
    """Power cut at a chosen step: not an ``Exception``, so no handler reports it."""


@dataclass(frozen=True)
class FaultProfile:
    """What goes wrong on one device. Model faults apply to ``versions`` (None: all)."""

    versions: tuple[str, ...] | None = None
    crash_on_load: bool = False
    crash_probability: float = 0.0
    error_rate: float = 0.0
    latency_multiplier: float = 1.0
    corrupt_download: bool = False
    # Blob bytes arrive at most this fast (the small manifest envelope is not paced).
    slow_link_bytes_per_s: float | None = None
    # Once, at an update step: downloading, installing, verifying, health_check (the
    # progress phases), activating (before the slot switch is written) or committing
    # (before the end of the trial is written).
    power_loss_at: str | None = None
    # Runs that behave before model faults start. The default 2 lets the health check's
    # golden runs pass, so the fault shows in real traffic, as input-dependent bugs do.
    clean_runs: int = 2
    seed: int = 0

    def applies_to(self, version: str) -> bool:
        return self.versions is None or version in self.versions


class FaultyRunner:
    """A real runner that sometimes crashes, fails, or runs slower."""

    def __init__(self, inner: ModelRunner, profile: FaultProfile) -> None:
        self._inner = inner
        self._profile = profile
        self._rng = random.Random(profile.seed)
        self._runs = 0
        self.inputs: tuple[TensorSpec, ...] = inner.inputs
        self.outputs: tuple[TensorSpec, ...] = inner.outputs

    def run(self, feeds: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        profile = self._profile
        self._runs += 1
        if self._runs > profile.clean_runs:
            if profile.crash_probability and self._rng.random() < profile.crash_probability:
                raise SimulatedCrash("simulated crash in the model")
            if profile.error_rate and self._rng.random() < profile.error_rate:
                raise SimulatedInferenceError("simulated inference error")
        started = time.perf_counter()
        outputs = self._inner.run(feeds)
        if profile.latency_multiplier > 1.0:
            time.sleep((profile.latency_multiplier - 1.0) * (time.perf_counter() - started))
        return outputs


def runner_factory(profile: FaultProfile) -> RunnerFactory:
    def make(manifest: Manifest, model_path: Path, threads: int) -> ModelRunner:
        if not profile.applies_to(manifest.version):
            return default_runner_factory(manifest, model_path, threads)
        if profile.crash_on_load:
            raise RuntimeLoadError(f"simulated crash loading {manifest.name}@{manifest.version}")
        return FaultyRunner(default_runner_factory(manifest, model_path, threads), profile)

    return make


class ThrottledResponse:
    """An HTTP response read through a link that carries at most ``bytes_per_s``.

    Each read returns a slice of about 1/20 s of the link's bytes, no sooner than the
    link could have delivered everything so far: the downloader's partial file grows
    at the link's pace (an interrupted download resumes with Range from there), and a
    link too slow to deliver one byte within the socket ``timeout`` times out the way
    a stalled socket does.
    """

    SLICE_S = 0.05

    def __init__(self, inner: BlobResponse, bytes_per_s: float, timeout: float) -> None:
        if bytes_per_s <= 0:
            raise ValueError(f"a link carries a positive number of bytes/s, got {bytes_per_s}")
        self._inner = inner
        self._rate = bytes_per_s
        self._timeout = timeout
        self._slice = max(1, int(bytes_per_s * self.SLICE_S))
        self._started = time.monotonic()
        self._delivered = 0

    @property
    def status(self) -> int:
        return self._inner.status

    def read(self, amt: int, /) -> bytes:
        want = min(amt, self._slice)
        due = self._started + (self._delivered + want) / self._rate
        wait = due - time.monotonic()
        if wait > self._timeout > 0:
            time.sleep(self._timeout)
            raise TimeoutError(f"timed out: the link carries {self._rate:g} bytes/s")
        data = self._inner.read(want)
        self._delivered += len(data)
        wait = self._started + self._delivered / self._rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        return data

    def close(self) -> None:
        self._inner.close()


def slow_link(bytes_per_s: float, opener: Opener = open_url) -> Opener:
    """An opener whose responses arrive at most ``bytes_per_s`` (see ThrottledResponse)."""

    def open_slowly(request: urllib.request.Request, timeout: float) -> BlobResponse:
        return ThrottledResponse(opener(request, timeout), bytes_per_s, timeout)

    return open_slowly


def downloader(profile: FaultProfile) -> Downloader:
    rate = profile.slow_link_bytes_per_s
    opener = slow_link(rate) if rate else open_url

    def fetch(
        base_url: str, manifest: Manifest, entry: FileEntry, downloads: Path, timeout: float
    ) -> Path:
        if profile.corrupt_download and entry.size > 0 and profile.applies_to(manifest.version):
            # Bytes that arrived damaged: the resume logic re-hashes the partial file
            # and the real verifier must refuse the result.
            part = downloads / f"{entry.sha256}.part"
            part.write_bytes(b"\x00" * min(entry.size, 64))
        return fetch_file(base_url, entry, downloads, timeout=timeout, opener=opener)

    return fetch


def phase_hook(
    profile: FaultProfile, on_power_loss: Callable[[], None], armed: list[bool]
) -> Callable[[str], None]:
    """Power loss at ``profile.power_loss_at``, once while ``armed[0]`` (shared across
    restarts of the same device, so the restarted agent can finish the update)."""

    def hook(phase: str) -> None:
        if armed[0] and profile.power_loss_at == phase:
            armed[0] = False
            on_power_loss()
            raise SimulatedPowerLoss(f"power lost at {phase}")

    return hook
