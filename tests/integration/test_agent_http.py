"""The agent's localhost inference endpoint, over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from agent.errors import NoModelError
from agent.http_api import InferenceHTTPServer
from agent.inference import ActiveModel, InferenceService
from agent.telemetry import TelemetryWindow
from firmware_bundles.runtimes import load_runner
from firmware_bundles.wire import BundleRef
from tests.models import mlp


@pytest.fixture()
def service(tmp_path: Path) -> InferenceService:
    path = mlp(tmp_path / "m.onnx", seed=3)
    runner = load_runner("onnxruntime", path)
    service = InferenceService(TelemetryWindow(0.0))
    manifest = None  # the endpoint never reads the manifest
    service.swap(ActiveModel(runner, manifest, BundleRef("0" * 64, "m", "1.0.0")))  # type: ignore[arg-type]
    return service


@pytest.fixture()
def endpoint(service: InferenceService) -> Iterator[str]:
    server = InferenceHTTPServer(service, "127.0.0.1", 0, max_request_bytes=4096)
    server.start()
    yield server.url
    server.stop()


def test_infer_returns_the_models_outputs(
    endpoint: str, service: InferenceService, tmp_path: Path
) -> None:
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    response = httpx.post(f"{endpoint}/v1/infer", json={"inputs": {"x": x.tolist()}})
    assert response.status_code == 200
    want = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x})[0]
    np.testing.assert_allclose(np.array(response.json()["outputs"]["y"]), want, rtol=1e-5)
    assert httpx.get(f"{endpoint}/v1/health").json()["bundle"] == {"name": "m", "version": "1.0.0"}
    snap = service.window.roll(1.0)
    assert (snap.inference_count, snap.error_count) == (1, 0)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"not json", 400, "not JSON"),
        (b'{"inputs": [1]}', 422, "inputs"),
        (json.dumps({"inputs": {"x": [[1.0, 2.0]]}}).encode(), 422, "shape [1, 2]"),
        (json.dumps({"inputs": {"z": [[1.0] * 8]}}).encode(), 422, "unknown input"),
        (json.dumps({"inputs": {}}).encode(), 422, "missing input"),
        (json.dumps({"inputs": {"x": [["a"] * 8]}}).encode(), 422, "float32"),
        (b"{" + b" " * 5000 + b"}", 413, "over the 4096 limit"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_problem(
    endpoint: str, body: bytes, status: int, message: str
) -> None:
    response = httpx.post(
        f"{endpoint}/v1/infer", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status
    assert message in response.json()["detail"]


def test_bad_requests_do_not_count_against_the_model(
    endpoint: str, service: InferenceService
) -> None:
    httpx.post(f"{endpoint}/v1/infer", json={"inputs": {"x": [[1.0]]}})
    ok = httpx.post(f"{endpoint}/v1/infer", json={"inputs": {"x": [[0.5] * 8]}})
    assert ok.status_code == 200
    snap = service.window.roll(1.0)
    assert (snap.inference_count, snap.error_count) == (1, 0)


def test_no_model_yet_is_503(service: InferenceService) -> None:
    service.swap(None)
    with pytest.raises(NoModelError):
        service.infer({"x": np.zeros((1, 8), np.float32)})
    server = InferenceHTTPServer(service, "127.0.0.1", 0, max_request_bytes=4096)
    server.start()
    try:
        response = httpx.post(f"{server.url}/v1/infer", json={"inputs": {"x": [[0.0] * 8]}})
        assert response.status_code == 503 and "no model" in response.json()["detail"]
    finally:
        server.stop()


def test_endpoint_refuses_non_loopback_addresses(service: InferenceService) -> None:
    with pytest.raises(ValueError, match="localhost only"):
        InferenceHTTPServer(service, "0.0.0.0", 0, max_request_bytes=4096)
