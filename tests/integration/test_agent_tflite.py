"""TFLite end to end on the device side: ``bundle build model.tflite`` -> real agent on
the real broker -> health check -> inference through the Python API and HTTP ->
telemetry and drift windows, exactly as for ONNX bundles."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent.http_api import InferenceHTTPServer
from edgefleet.cli import main as edgefleet
from firmware_bundles.builder import BuiltBundle
from firmware_bundles.bundle_dir import verify_bundle_dir
from firmware_bundles.golden import decode_arrays, encode_arrays
from firmware_bundles.keys import load_trusted_keys
from firmware_bundles.wire import parse_drift, parse_event, parse_telemetry, topic
from tests.agent_harness import deploy, last_state, wait_until
from tests.integration.conftest import Start
from tests.mqtt_tools import Watcher
from tests.tflite_models import mlp_reference, mlp_tflite, mlp_weights


@pytest.mark.broker
def test_cli_builds_a_tflite_bundle_that_an_agent_health_checks_and_serves(
    mqtt_broker,
    blobs,
    agent_factory,
    keys,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    weights = mlp_weights(seed=7, softmax=True)
    model = mlp_tflite(tmp_path / "clf.tflite", weights)
    rng = np.random.default_rng(0)
    ref = tmp_path / "ref.npz"
    ref.write_bytes(encode_arrays({"x": rng.standard_normal((500, 8)).astype(np.float32)}))
    out = tmp_path / "bundle"
    code = edgefleet(
        ["bundle", "build", str(model), "--name", "clf", "--version", "1.0.0",
         "--key", str(keys[0]), "-o", str(out), "--reference", str(ref)]
    )  # fmt: skip
    assert code == 0
    bundle = verify_bundle_dir(out, load_trusted_keys([keys[1]]), datetime.now(timezone.utc))
    manifest = bundle.manifest
    assert manifest.runtime == "tflite"
    assert manifest.file("model").name == "model.tflite"
    assert [(s.name, s.shape) for s in manifest.inputs] == [("x", (None, 8))]
    assert [(s.name, s.shape) for s in manifest.outputs] == [("probs", (None, 4))]

    agent = agent_factory("tfl-1")
    watcher = Watcher(mqtt_broker, "edgefleet/v1/dev/tfl-1/up/#")
    built_blobs = {e.sha256: bundle.blob_paths[e.name].read_bytes() for e in manifest.files}
    deploy(mqtt_broker, blobs, "tfl-1", BuiltBundle(manifest, bundle.envelope, built_blobs), 1)
    assert wait_until(lambda: agent.active_bundle is not None)
    assert agent.active_bundle.version == "1.0.0"  # type: ignore[union-attr]
    # The health check on the golden inputs passed (the event may trail the switch).
    assert watcher.wait(
        lambda m: "update_succeeded" in [parse_event(p).type for t, p in m if t.endswith("/events")]
    )

    # The Python API: real interpreter output equals numpy.
    x = rng.standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_allclose(agent.infer({"x": x})["probs"], mlp_reference(weights, x), atol=1e-5)

    # The HTTP endpoint, another batch size (the interpreter resizes its input).
    server = InferenceHTTPServer(agent.inference, "127.0.0.1", 0, max_request_bytes=1 << 16)
    server.start()
    try:
        x5 = rng.standard_normal((5, 8)).astype(np.float32)
        answer = httpx.post(f"{server.url}/v1/infer", json={"inputs": {"x": x5.tolist()}})
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(
            np.array(answer.json()["outputs"]["probs"]), mlp_reference(weights, x5), atol=1e-5
        )
        wrong = httpx.post(f"{server.url}/v1/infer", json={"inputs": {"x": [[1.0] * 9]}})
        assert wrong.status_code == 422 and "shape [1, 9]" in wrong.json()["detail"]
    finally:
        server.stop()

    # Telemetry counts the 2 good calls (the refused one is the caller's error); drift
    # windows count 8 rows per input feature and 8 predicted classes.
    def totals() -> tuple[int, int, int]:
        inferences = sum(
            parse_telemetry(p).inference_count
            for t, p in watcher.messages
            if t == topic("tfl-1", "up", "telemetry")
        )
        rows = classes = 0
        for t, p in watcher.messages:
            if t == topic("tfl-1", "up", "drift"):
                features = parse_drift(p).features
                rows += int(sum(features["x[0]"]["counts"]))
                classes += int(sum(features["output:probs:class"]["counts"]))
        return inferences, rows, classes

    assert watcher.wait(lambda m: totals() == (2, 8, 8)), totals()
    state = last_state(watcher, "tfl-1")
    assert state is not None and state.active is not None and state.error is None


@pytest.mark.broker
def test_a_tflite_bundle_whose_model_breaks_fails_its_health_check(
    mqtt_broker,
    blobs,
    agent_factory,
    keys,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    """Golden outputs from one model, shipped with another: the agent refuses it."""
    from firmware_bundles.from_model import bundle_from_model_file
    from firmware_bundles.golden import generate_inputs
    from firmware_bundles.keys import load_private_key
    from firmware_bundles.manifest import TensorSpec

    weights = mlp_weights(seed=1)
    spec = (TensorSpec("x", "float32", (None, 8)),)
    feeds = generate_inputs(spec, batch=4)
    wrong = {"logits": mlp_reference(weights, feeds["x"]) + 1.0}
    built = bundle_from_model_file(
        mlp_tflite(tmp_path / "m.tflite", weights),
        name="clf",
        version="9.0.0",
        release_counter=1,
        key=load_private_key(keys[0]),
        now=datetime.now(timezone.utc),
        golden_inputs=feeds,
        golden_outputs=wrong,
    )
    agent = agent_factory("tfl-2")
    watcher = Watcher(mqtt_broker, "edgefleet/v1/dev/tfl-2/up/#")
    deploy(mqtt_broker, blobs, "tfl-2", built, 1)
    assert watcher.wait(
        lambda m: (
            (s := last_state(watcher, "tfl-2")) is not None
            and s.error is not None
            and s.error.code == "health_check"
        )
    )
    assert agent.active_bundle is None


def test_the_controller_builds_a_tflite_bundle_from_an_uploaded_model(
    controller: Start, tmp_path: Path
) -> None:
    """Model upload and bundle build on the controller, on SQLite and PostgreSQL."""
    api = controller()
    weights = mlp_weights(seed=2, softmax=True)
    model = mlp_tflite(tmp_path / "clf.tflite", weights)
    assert api.post("/models", json={"name": "clf"}).status_code == 201
    uploaded = api.post(
        "/models/clf/versions",
        data={"version": "1.0.0"},
        files={"file": (model.name, model.read_bytes())},
    )
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["runtime"] == "tflite"
    built = api.post("/bundles", json={"model": "clf", "version": "1.0.0", "bundle_version": "1"})
    assert built.status_code == 201, built.text
    manifest = built.json()["manifest"]
    assert manifest["runtime"] == "tflite"
    assert [f["name"] for f in manifest["files"] if f["role"] == "model"] == ["model.tflite"]
    assert manifest["inputs"] == [{"name": "x", "dtype": "float32", "shape": [None, 8]}]
    # The golden outputs the controller computed are the interpreter's, i.e. numpy's.
    golden = {f["role"]: f for f in manifest["files"]}
    inputs = decode_arrays(api.get(f"/blobs/{golden['golden_inputs']['sha256']}").content)
    outputs = decode_arrays(api.get(f"/blobs/{golden['golden_outputs']['sha256']}").content)
    np.testing.assert_allclose(outputs["probs"], mlp_reference(weights, inputs["x"]), atol=1e-5)
