"""Per-device fault profiles for simulated fleets.

Every fault goes through the real agent code: a faulty model is a wrapper around the
real runner (so the health check and the trial judge see it), a corrupted download
puts wrong bytes where the real verifier reads them, a network cut closes the real
MQTT socket, and a power loss stops the agent thread mid-step with no goodbye.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt

from agent.updater import Downloader, RunnerFactory, default_downloader, default_runner_factory
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
    slow_link_bytes_per_s: float | None = None
    power_loss_at: str | None = None  # an update phase: downloading, installing, ... (once)
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


def downloader(profile: FaultProfile) -> Downloader:
    def fetch(
        base_url: str, manifest: Manifest, entry: FileEntry, downloads: Path, timeout: float
    ) -> Path:
        if profile.slow_link_bytes_per_s:
            time.sleep(entry.size / profile.slow_link_bytes_per_s)
        if profile.corrupt_download and entry.size > 0 and profile.applies_to(manifest.version):
            # Bytes that arrived damaged: the resume logic re-hashes the partial file
            # and the real verifier must refuse the result.
            part = downloads / f"{entry.sha256}.part"
            part.write_bytes(b"\x00" * min(entry.size, 64))
        return default_downloader(base_url, manifest, entry, downloads, timeout)

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
