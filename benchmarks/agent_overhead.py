"""Inference throughput through the agent, as a ratio to bare onnxruntime.

Same model, same inputs, same run, rounds interleaved so machine noise hits all three
paths alike:

  bare    onnxruntime ``InferenceSession.run``
  api     the agent's Python API (``Agent.infer``: input checks + telemetry per call)
  http    ``POST /v1/infer`` on the agent's localhost endpoint (JSON, keep-alive)

Usage: python benchmarks/agent_overhead.py [--rounds 5] [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.config import AgentConfig  # noqa: E402
from agent.daemon import Agent  # noqa: E402
from agent.http_api import InferenceHTTPServer  # noqa: E402
from firmware_bundles.from_model import bundle_from_model_file  # noqa: E402
from firmware_bundles.keys import init_keys, load_private_key  # noqa: E402
from simulators.mosquitto import MosquittoBroker  # noqa: E402
from simulators.provision import provision  # noqa: E402


def make_mlp(path: Path, sizes: list[int]) -> None:
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        w = numpy_helper.from_array(
            (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"W{i}"
        )
        inits.append(w)
        out = "y" if i == len(sizes) - 2 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [out if out == "y" else f"m{i}"]))
        if out != "y":
            nodes.append(helper.make_node("Relu", [f"m{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", sizes[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds``."""
    fn()
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(20):
            fn()
        count += 20
    return count / elapsed


def bench_model(
    label: str, sizes: list[int], work: Path, broker: MosquittoBroker, rounds: int, seconds: float
) -> dict[str, float]:
    model_path = work / f"{label}.onnx"
    make_mlp(model_path, sizes)
    private, public = init_keys(work / f"keys-{label}")
    built = bundle_from_model_file(
        model_path,
        name=label,
        version="1",
        release_counter=1,
        key=load_private_key(private),
        now=datetime.now(timezone.utc),
    )
    data_dir = work / f"agent-{label}"
    provision(data_dir, built)

    agent = Agent(
        AgentConfig(
            device_id=f"bench-{label}",
            broker_url=broker.url,
            controller_url="http://127.0.0.1:9",
            data_dir=data_dir,
            trust=(public,),
            telemetry_interval_s=3600,
        )
    )
    agent.start()
    assert agent.active_bundle is not None, "agent did not boot its installed model"
    server = InferenceHTTPServer(agent.inference, "127.0.0.1", 0, 16 << 20)
    server.start()

    x = np.random.default_rng(1).standard_normal((1, sizes[0])).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    body = json.dumps({"inputs": {"x": x.tolist()}}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]))

    def via_http() -> None:
        conn.request("POST", "/v1/infer", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(payload)

    want = session.run(None, {"x": x})[0]
    np.testing.assert_allclose(agent.infer({"x": x})["y"], want, rtol=1e-5)
    results: dict[str, list[float]] = {"bare": [], "api": [], "http": []}
    for _ in range(rounds):
        results["bare"].append(rate(lambda: session.run(None, {"x": x}), seconds))
        results["api"].append(rate(lambda: agent.infer({"x": x}), seconds))
        results["http"].append(rate(via_http, seconds))
    conn.close()
    server.stop()
    agent.stop()
    return {k: statistics.median(v) for k, v in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    models = {"tiny-mlp 8-16-4": [8, 16, 4], "mlp 256-1024-1024-10": [256, 1024, 1024, 10]}
    print(
        f"onnxruntime {ort.__version__}, batch 1, 1 intra-op thread, "
        f"{args.rounds} interleaved rounds "
        f"of {args.seconds}s, medians\n"
    )
    print(
        f"{'model':24s} {'bare/s':>10s} {'api/s':>10s} {'http/s':>10s} "
        f"{'api/bare':>9s} {'http/bare':>10s}"
    )
    with tempfile.TemporaryDirectory() as tmp, MosquittoBroker() as broker:
        for i, (label, sizes) in enumerate(models.items()):
            r = bench_model(f"m{i}", sizes, Path(tmp), broker, args.rounds, args.seconds)
            print(
                f"{label:24s} {r['bare']:10.0f} {r['api']:10.0f} {r['http']:10.0f} "
                f"{r['api'] / r['bare']:9.3f} {r['http'] / r['bare']:10.3f}"
            )


if __name__ == "__main__":
    main()
