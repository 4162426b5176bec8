"""What data capture costs the inference path, as ratios within one run.

The agent's Python API (``Agent.infer``, real onnxruntime) on the same model and input,
rounds interleaved, in four settings of its capture tap:

  none      no tap at all (the agent before data capture existed)
  idle      the capture recorder installed, no capture open (every device, most of the time)
  1%        a capture open at rate 0.01
  100%      a capture open at rate 1.0: every call copied, written by a worker thread

Then the tap alone (``CaptureRecorder.offer``, no inference), in ns per call, best of 5:
the figure the ratios above are made of, without the noise of the model around it.

Usage: python benchmarks/capture_overhead.py [--rounds 5] [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.capture import CaptureRecorder  # noqa: E402
from agent.capture_spool import CaptureSpool  # noqa: E402
from agent.capture_upload import UploadJob, UploadResult  # noqa: E402
from agent.config import AgentConfig  # noqa: E402
from agent.daemon import Agent  # noqa: E402
from benchmarks.agent_overhead import make_mlp, rate  # noqa: E402
from firmware_bundles.capture_wire import CaptureCommand, CaptureRequest  # noqa: E402
from firmware_bundles.from_model import bundle_from_model_file  # noqa: E402
from firmware_bundles.keys import init_keys, load_private_key  # noqa: E402
from simulators.mosquitto import MosquittoBroker  # noqa: E402
from simulators.provision import provision  # noqa: E402


class NoUpload:
    """Captures never end during the benchmark: nothing is uploaded."""

    busy = False

    def submit(self, job: UploadJob) -> None:
        pass

    def results(self) -> list[UploadResult]:
        return []

    def close(self) -> None:
        pass


class Worker:
    """Writes what the hot path sampled, on its own thread, as the agent's worker does."""

    def __init__(self) -> None:
        self.recorder: CaptureRecorder | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(0.5)
            self._wake.clear()
            with self._lock:
                if self.recorder is not None:
                    self.recorder.tick()

    def settle(self) -> None:
        """Write what the last setting sampled before the next one is timed."""
        with self._lock:
            if self.recorder is not None:
                self.recorder.tick()
            self.recorder = None

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join()


def recorder(root: Path, worker: Worker, sha: str, sample_rate: float | None) -> CaptureRecorder:
    made = CaptureRecorder(
        CaptureSpool(root, fsync=True), NoUpload(), device_id="bench", wake=worker.wake
    )
    if sample_rate is not None:
        request = CaptureRequest(
            capture_id=f"{int(sample_rate * 1000):032x}",
            rate=sample_rate,
            max_samples=1_000_000,
            expires_at=time.time() + 3600,
            upload_url="http://127.0.0.1:9/unused",
            bundle_sha256=sha,
        )
        made.apply(CaptureCommand((request,)))
    return made


def bench_model(
    label: str, sizes: list[int], work: Path, broker: MosquittoBroker, rounds: int, seconds: float
) -> dict[str, float]:
    model_path = work / f"{label}.onnx"
    make_mlp(model_path, sizes)
    private, public = init_keys(work / f"keys-{label}")
    built = bundle_from_model_file(
        model_path, name=label, version="1", release_counter=1,
        key=load_private_key(private), now=datetime.now(timezone.utc),
        blob_encoding=None,  # provision() installs plain files only
    )  # fmt: skip
    provision(work / f"agent-{label}", built)
    agent = Agent(
        AgentConfig(
            device_id=f"bench-{label}", broker_url=broker.url,
            controller_url="http://127.0.0.1:9", data_dir=work / f"agent-{label}",
            trust=(public,), telemetry_interval_s=3600,
        )
    )  # fmt: skip
    agent.start()
    assert agent.active_bundle is not None, "agent did not boot its installed model"
    sha = agent.active_bundle.manifest_sha256
    x = np.random.default_rng(1).standard_normal((1, sizes[0])).astype(np.float32)
    worker = Worker()
    taps: dict[str, Callable[[], CaptureRecorder | None]] = {
        "none": lambda: None,
        "idle": lambda: recorder(work / f"{label}-idle", worker, sha, None),
        "1%": lambda: recorder(work / f"{label}-1", worker, sha, 0.01),
        "100%": lambda: recorder(work / f"{label}-100", worker, sha, 1.0),
    }
    results: dict[str, list[float]] = {name: [] for name in taps}
    names = list(taps)
    for round_ in range(rounds):
        # Rotated each round, so no setting always follows the costly one.
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            tap = taps[name]()
            worker.recorder = tap
            agent.inference.tap = None if tap is None else tap.offer
            results[name].append(rate(lambda: agent.infer({"x": x}), seconds))
            agent.inference.tap = None
            worker.settle()
    worker.stop()
    agent.stop()
    return {k: statistics.median(v) for k, v in results.items()}


def tap_alone(work: Path) -> dict[str, float]:
    """ns per ``offer`` call for a [1, 8] -> [1, 4] float32 call (no worker: copies wait)."""
    sha = "ab" * 32
    feeds = {"x": np.ones((1, 8), np.float32)}
    outputs = {"y": np.ones((1, 4), np.float32)}
    idle = Worker()
    costs = {}
    for name, sample_rate in (("idle", None), ("1%", 0.01), ("100%", 1.0)):
        tap = recorder(work / f"alone-{name}", idle, sha, sample_rate)
        calls = 20_000
        best = min(
            timeit.repeat(lambda t=tap: t.offer(sha, feeds, outputs), number=calls, repeat=5)
        )
        costs[name] = best / calls * 1e9
    idle.stop()
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    models = {"tiny-mlp 8-16-4": [8, 16, 4], "mlp 256-1024-1024-10": [256, 1024, 1024, 10]}
    print(
        f"onnxruntime {ort.__version__}, batch 1, Agent.infer calls/s, "
        f"{args.rounds} interleaved rounds of {args.seconds}s, medians\n"
    )
    print(
        f"{'model':24s} {'none/s':>9s} {'idle/s':>9s} {'1%/s':>9s} {'100%/s':>9s} "
        f"{'idle/none':>10s} {'1%/none':>8s} {'100%/none':>10s}"
    )
    with tempfile.TemporaryDirectory() as tmp, MosquittoBroker() as broker:
        for i, (label, sizes) in enumerate(models.items()):
            r = bench_model(f"m{i}", sizes, Path(tmp), broker, args.rounds, args.seconds)
            print(
                f"{label:24s} {r['none']:9.0f} {r['idle']:9.0f} {r['1%']:9.0f} "
                f"{r['100%']:9.0f} {r['idle'] / r['none']:10.3f} {r['1%'] / r['none']:8.3f} "
                f"{r['100%'] / r['none']:10.3f}"
            )
        costs = tap_alone(Path(tmp))
        print("\ntap alone, ns per call: " + ", ".join(f"{k} {v:.0f}" for k, v in costs.items()))


if __name__ == "__main__":
    main()
