"""``edgefleet demo``: the whole path on embedded defaults, end to end, with real parts.

A private Mosquitto, a controller (SQLite and blobs in a temp dir) under uvicorn, and
N simulated devices running the real agent. Generates a small model, compresses it,
builds and signs a bundle on the controller, deploys it to every device, shows
progress, then prints what the controller saw. Exit 0 when every device runs it.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    demo = subparsers.add_parser("demo", help="end-to-end demo on a private broker and controller")
    demo.add_argument("--devices", type=int, default=20)
    demo.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the fleet")
    demo.add_argument("--keep", action="store_true", help="keep the temp dir for inspection")
    demo.set_defaults(func=run_demo)


def _say(message: str) -> None:
    print(message, flush=True)


def _make_model(path: Path) -> None:
    """A small image-ish classifier: 64 features -> 128 -> 128 -> 10 classes."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    sizes = [64, 128, 128, 10]
    nodes, inits, prev = [], [], "features"
    for i in range(3):
        w = rng.standard_normal((sizes[i], sizes[i + 1])) / np.sqrt(sizes[i])
        inits += [
            numpy_helper.from_array(w.astype(np.float32), f"W{i}"),
            numpy_helper.from_array(np.zeros(sizes[i + 1], np.float32), f"b{i}"),
        ]
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"b{i}"], [f"g{i}"]))
        prev = f"g{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    nodes.append(helper.make_node("Softmax", [prev], ["scores"], axis=1))
    graph = helper.make_graph(
        nodes,
        "demo-classifier",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def run_demo(args: argparse.Namespace) -> int:
    import httpx

    from controller.server import ControllerServer
    from controller.settings import Settings
    from simulators.mosquitto import MosquittoBroker

    if not args.verbose:
        # 20 agents and a controller log at INFO; the demo's own lines tell the story.
        logging.getLogger().setLevel(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    _say(f"== EdgeFleet demo (work dir {work})")
    with MosquittoBroker() as broker:
        _say(f"-- broker      {broker.url} (private Mosquitto)")
        env = {
            "EDGEFLEET_DATA_DIR": str(work / "controller"),
            "EDGEFLEET_BROKER_URL": broker.url,
            "EDGEFLEET_ENV": "development",
        }
        server = ControllerServer(Settings.from_env({**os.environ, **env}))
        server.start()
        try:
            _say(f"-- controller  {server.url} (SQLite + blobs in {work / 'controller'})")
            with httpx.Client(base_url=f"{server.url}/api/v1", timeout=60) as api:
                ok = _run(args, api, work, broker, server)
        finally:
            server.stop()
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def _check(response: Any) -> Any:
    if response.status_code >= 400:
        raise SystemExit(
            f"edgefleet demo: {response.request.method} {response.request.url} -> "
            f"{response.status_code}: {response.text}"
        )
    return response.json()


def _run(args: argparse.Namespace, api: Any, work: Path, broker: Any, server: Any) -> bool:
    from compress import compress_model
    from simulators.fleet import Fleet, FleetSpec

    original, small = work / "classifier.onnx", work / "classifier.fp16.onnx"
    _make_model(original)
    report = compress_model(original, small, "fp16")
    r = report.to_dict()
    _say(
        f"-- model       {original.stat().st_size} B -> fp16 {small.stat().st_size} B "
        f"(size ratio {r['size_ratio']:.2f}, latency ratio {r['latency_ratio']:.2f}, "
        f"cosine {r['cosine_similarity']:.6f})"
    )

    _check(api.post("/models", json={"name": "classifier"}))
    with small.open("rb") as handle:
        _check(
            api.post(
                "/models/classifier/versions",
                data={"version": "1.0.0"},
                files={"file": ("classifier.onnx", handle, "application/octet-stream")},
            )
        )
    bundle = _check(
        api.post(
            "/bundles",
            json={
                "model": "classifier",
                "version": "1.0.0",
                "bundle_version": "1.0.0",
                "health_check": {"atol": 0.01, "rtol": 0.01, "latency_budget_ms": 1000.0},
            },
        )
    )
    sha = bundle["manifest_sha256"]
    _say(f"-- bundle      {bundle['name']}@{bundle['version']} signed, manifest {sha[:16]}")

    trust = server.release_public_key_path
    spec = FleetSpec(
        devices=args.devices,
        broker_url=broker.url,
        controller_url=server.url,
        trust=(trust,),
        data_dir=work / "devices",
        prefix="demo",
        tags=("demo",),
        telemetry_interval_s=1.0,
    )
    with Fleet(spec) as fleet:
        _say(f"-- fleet       {args.devices} simulated devices connected")
        _wait_devices_known(api, args.devices, timeout=30)
        rollout = _check(
            api.post(
                "/rollouts",
                json={
                    "bundle": sha,
                    "tag": "demo",
                    "waves": {"steps": [{"percent": 10}, {"percent": 50}, {"percent": 100}]},
                    "abort": [{"kind": "failure_share", "threshold": 0.2, "min_finished": 2}],
                    "start": True,
                },
            )
        )
        _say(f"-- rollout     {rollout['id']} to tag 'demo' in waves of 10%, 50%, 100%")
        fleet.feed(rate_per_device=20.0)
        done = _show_progress(api, rollout["id"], args.devices, args.timeout)
        time.sleep(3.0)  # a few telemetry windows on the new model
        fleet.stop_feeding()
        time.sleep(1.5)
        on_new = fleet.count_on("1.0.0")
        summary = _summary(api, args.devices)
    _say("")
    _say("== summary")
    _say(
        f"   devices on classifier@1.0.0 : {on_new}/{args.devices} (agents), "
        f"{summary['on_version']}/{args.devices} (controller)"
    )
    _say(f"   inferences served         : {summary['inferences']} ({summary['errors']} errors)")
    if summary["p50"]:
        _say(
            f"   latency across devices    : p50 {summary['p50']:.3f} ms, "
            f"p95 {summary['p95']:.3f} ms, "
            f"p99 {summary['p99']:.3f} ms (median of device windows)"
        )
    return bool(done and on_new == args.devices and summary["on_version"] == args.devices)


def _wait_devices_known(api: Any, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(_check(api.get("/devices", params={"tag": "demo"}))) >= count:
            return
        time.sleep(0.2)
    raise SystemExit(f"edgefleet demo: the controller did not see {count} devices in {timeout}s")


def _show_progress(api: Any, rollout_id: str, total: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        rollout = _check(api.get(f"/rollouts/{rollout_id}"))
        counts = {k: v for k, v in rollout["counts"].items() if v}
        wave = rollout["current_wave"]
        line = f"   {rollout['status']:9} wave {wave or '-'}  " + "  ".join(
            f"{k} {v}" for k, v in sorted(counts.items())
        )
        if line != last:
            _say(line)
            last = line
        if rollout["status"] not in ("created", "running"):
            if rollout["reason"]:
                _say(f"   {rollout['reason']}")
            return bool(rollout["status"] == "completed" and counts.get("committed") == total)
        time.sleep(0.3)
    _say("   timed out waiting for the fleet")
    return False


def _summary(api: Any, total: int) -> dict[str, Any]:
    devices = _check(api.get("/devices", params={"tag": "demo"}))
    on_version = sum(1 for d in devices if (d.get("active_bundle") or {}).get("version") == "1.0.0")
    inferences = errors = 0
    p50s, p95s, p99s = [], [], []
    for device in devices:
        for window in _check(api.get(f"/devices/{device['id']}/telemetry", params={"limit": 1000})):
            inferences += window["inference_count"]
            errors += window["error_count"]
            if window["inference_count"] and window.get("latency_p50_ms") is not None:
                p50s.append(window["latency_p50_ms"])
                p95s.append(window["latency_p95_ms"])
                p99s.append(window["latency_p99_ms"])

    def med(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    return {
        "on_version": on_version,
        "inferences": inferences,
        "errors": errors,
        "p50": med(p50s),
        "p95": med(p95s),
        "p99": med(p99s),
    }
