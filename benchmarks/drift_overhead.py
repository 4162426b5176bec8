"""What drift monitoring costs a device: inference throughput, and bytes per window.

One model file is built into two signed bundles, one with a drift reference and one
without, and each is booted by a real agent (same broker, same run). Rounds are
interleaved (the order reversed every other round) so machine noise hits all paths alike:

  bare      onnxruntime ``InferenceSession.run``
  no-drift  ``Agent.infer`` on the bundle without a reference (input checks, telemetry)
  drift     ``Agent.infer`` on the bundle with a reference (+ ``DriftMonitor.record``)

Throughput is inferences (calls) per second; ``+us/call`` and ``+us/row`` are what
drift monitoring adds to one call and to one row of its batch.

Then one window of traffic (distinct inputs drawn like the reference, batch 1) goes
through the drift agent, and its ``Drift`` and ``Telemetry`` messages are serialized as
the agent publishes them: MQTT payload bytes per window per device, and per day at one
window every 10 s.

Usage: python benchmarks/drift_overhead.py [--rounds 7] [--seconds 0.3] [--window-inferences 1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_overhead import make_mlp, rate  # noqa: E402

from agent.config import AgentConfig  # noqa: E402
from agent.daemon import Agent  # noqa: E402
from firmware_bundles.from_model import bundle_from_model_file  # noqa: E402
from firmware_bundles.keys import init_keys, load_private_key  # noqa: E402
from firmware_bundles.wire import Drift, Telemetry  # noqa: E402
from simulators.mosquitto import MosquittoBroker  # noqa: E402
from simulators.provision import provision  # noqa: E402

BATCHES = (1, 32)
WINDOW_INTERVAL_S = 10.0
WINDOW_SEQ = 100_000  # a device some 11 days into 10 s windows: realistic digits


@dataclass(frozen=True)
class Model:
    label: str
    sample_shape: tuple[int, ...]  # one row, without the batch axis
    make: Callable[[Path], None]


def make_cnn(path: Path, channels: int = 8, classes: int = 10) -> None:
    """``x [N, 3, 32, 32]`` -> Conv 3x3/2, Relu, GlobalAveragePool, MatMul -> ``y [N, classes]``."""
    rng = np.random.default_rng(0)
    conv = (rng.standard_normal((channels, 3, 3, 3)) / np.sqrt(27)).astype(np.float32)
    fc = (rng.standard_normal((channels, classes)) / np.sqrt(channels)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "Wc"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("MatMul", ["f", "Wf"], ["y"]),
        ],
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(conv, "Wc"), numpy_helper.from_array(fc, "Wf")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


MODELS = (
    Model("mlp 8-16-4", (8,), lambda p: make_mlp(p, [8, 16, 4])),
    Model("mlp 32-64-10", (32,), lambda p: make_mlp(p, [32, 64, 10])),
    Model("cnn 3x32x32", (3, 32, 32), make_cnn),
)


def sample(shape: tuple[int, ...], rows: int, seed: int) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal((rows, *shape)).astype(np.float32)


@contextmanager
def booted_agent(
    work: Path, broker: MosquittoBroker, model_path: Path, name: str, reference: Any
) -> Iterator[Agent]:
    """A real agent serving ``model_path``, bundled with ``reference`` (None: no drift)."""
    private, public = init_keys(work / f"keys-{name}")
    built = bundle_from_model_file(
        model_path,
        name=name,
        version="1",
        release_counter=1,
        key=load_private_key(private),
        now=datetime.now(timezone.utc),
        drift_reference=reference,
    )
    provision(work / f"agent-{name}", built)
    agent = Agent(
        AgentConfig(
            device_id=f"bench-{name}",
            broker_url=broker.url,
            controller_url="http://127.0.0.1:9",
            data_dir=work / f"agent-{name}",
            trust=(public,),
            telemetry_interval_s=3600,  # windows are rolled by hand below, never mid-round
        )
    )
    agent.start()
    try:
        active = agent.inference.active
        assert active is not None, f"agent {name} did not boot its installed model"
        assert (active.drift is not None) == (reference is not None), "drift monitor mismatch"
        yield agent
    finally:
        agent.stop()


def throughput(
    session: ort.InferenceSession,
    plain: Agent,
    drift: Agent,
    x: npt.NDArray[np.float32],
    rounds: int,
    seconds: float,
) -> dict[str, float]:
    want = session.run(None, {"x": x})[0]
    for agent in (plain, drift):
        np.testing.assert_allclose(agent.infer({"x": x})["y"], want, rtol=1e-5, atol=1e-6)
    paths: dict[str, Callable[[], object]] = {
        "bare": lambda: session.run(None, {"x": x}),
        "no-drift": lambda: plain.infer({"x": x}),
        "drift": lambda: drift.infer({"x": x}),
    }
    results: dict[str, list[float]] = {k: [] for k in paths}
    order = list(paths)
    for i in range(rounds):
        for key in order if i % 2 == 0 else reversed(order):
            results[key].append(rate(paths[key], seconds))
    return {k: statistics.median(v) for k, v in results.items()}


def window_bytes(agent: Agent, xs: npt.NDArray[np.float32]) -> tuple[int, int, int, int]:
    """(drift features, drift B, telemetry B, rows) of one window of ``xs``, one per call."""
    active = agent.inference.active
    assert active is not None and active.drift is not None
    agent.inference.window.roll(time.time())  # drop the throughput rounds' traffic
    active.drift.roll()
    for i in range(len(xs)):
        agent.infer({"x": xs[i : i + 1]})
    snap = agent.inference.window.roll(time.time())
    features = active.drift.roll()
    device = agent.config.device_id
    drift = Drift(device, WINDOW_SEQ, snap.window_start, snap.window_end, active.ref, features)
    telemetry = Telemetry(
        device_id=device,
        seq=WINDOW_SEQ,
        window_start=snap.window_start,
        window_end=snap.window_end,
        inference_count=snap.inference_count,
        error_count=snap.error_count,
        latency_p50_ms=snap.p50_ms,
        latency_p95_ms=snap.p95_ms,
        latency_p99_ms=snap.p99_ms,
        bundle=agent.active_bundle,
        latency_histogram=snap.histogram,
    )
    rows = max(f["n"] for f in features.values())
    return len(features), len(drift.to_bytes()), len(telemetry.to_bytes()), rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.3)
    parser.add_argument("--window-inferences", type=int, default=1000)
    args = parser.parse_args()
    print(
        f"onnxruntime {ort.__version__}, 1 intra-op thread, {args.rounds} interleaved rounds "
        f"of {args.seconds}s per path, medians; throughput in inferences (calls) per second\n"
    )
    print(
        f"{'model':14s} {'batch':>5s} {'bare/s':>9s} {'no-drift/s':>10s} {'drift/s':>9s} "
        f"{'drift/no-drift':>14s} {'drift/bare':>10s} {'+us/call':>9s} {'+us/row':>8s}"
    )
    ratios: dict[int, list[float]] = {b: [] for b in BATCHES}
    added_per_row: dict[int, list[float]] = {b: [] for b in BATCHES}
    sizes: list[tuple[str, tuple[int, int, int, int]]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, MosquittoBroker() as broker:
        work = Path(tmp)
        for i, model in enumerate(MODELS):
            model_path = work / f"m{i}.onnx"
            model.make(model_path)
            reference = {"x": sample(model.sample_shape, 512, seed=10 + i)}
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(
                str(model_path), options, providers=["CPUExecutionProvider"]
            )
            with (
                booted_agent(work, broker, model_path, f"m{i}-plain", None) as plain,
                booted_agent(work, broker, model_path, f"m{i}-drift", reference) as drift,
            ):
                for batch in BATCHES:
                    x = sample(model.sample_shape, batch, seed=1)
                    r = throughput(session, plain, drift, x, args.rounds, args.seconds)
                    added_us = (1 / r["drift"] - 1 / r["no-drift"]) * 1e6
                    ratios[batch].append(r["drift"] / r["no-drift"])
                    added_per_row[batch].append(added_us / batch)
                    print(
                        f"{model.label:14s} {batch:5d} {r['bare']:9.0f} {r['no-drift']:10.0f} "
                        f"{r['drift']:9.0f} {r['drift'] / r['no-drift']:14.3f} "
                        f"{r['drift'] / r['bare']:10.3f} {added_us:9.1f} {added_us / batch:8.2f}"
                    )
                xs = sample(model.sample_shape, args.window_inferences, seed=20 + i)
                sizes.append((model.label, window_bytes(drift, xs)))

    per_day = 86400 / WINDOW_INTERVAL_S
    print(
        f"\nbytes per window per device (MQTT payloads; one window of "
        f"{args.window_inferences} batch-1 inferences), per day at one window every "
        f"{WINDOW_INTERVAL_S:g}s\n"
    )
    print(
        f"{'model':14s} {'features':>8s} {'drift B':>8s} {'telem. B':>8s} {'total B':>8s} "
        f"{'drift MB/day':>12s} {'total MB/day':>12s}"
    )
    for label, (features, drift_b, telemetry_b, rows) in sizes:
        assert rows == args.window_inferences, f"{label}: window holds {rows} rows"
        total = drift_b + telemetry_b
        print(
            f"{label:14s} {features:8d} {drift_b:8d} {telemetry_b:8d} {total:8d} "
            f"{drift_b * per_day / 1e6:12.2f} {total * per_day / 1e6:12.2f}"
        )
    drift_bytes = [s[1] for _, s in sizes]
    telemetry_bytes = [s[2] for _, s in sizes]
    kept = "; ".join(
        f"batch {b}: {min(ratios[b]):.2f}-{max(ratios[b]):.2f} "
        f"(+{min(added_per_row[b]):.1f}-{max(added_per_row[b]):.1f} us/row)"
        for b in BATCHES
    )
    print(
        f"\nreading: with drift on, the agent keeps this share of its throughput: {kept}; "
        f"a window adds {min(drift_bytes):,}-{max(drift_bytes):,} B of drift to "
        f"{min(telemetry_bytes):,}-{max(telemetry_bytes):,} B of telemetry per device "
        f"({time.perf_counter() - started:.0f} s)"
    )


if __name__ == "__main__":
    main()
