"""``/captures`` on a real controller (uvicorn; SQLite and PostgreSQL), devices played by the test.

The uploads here are built by hand, good and bad: every refusal must say what was wrong
and store nothing; the same file twice is one upload; the export says where each row
came from. (Real agents capturing through a real broker: test_capture_fleet.py.)
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgefleet.cli import main
from tests.models import mlp

Start = Callable[..., httpx.Client]
DEVICES = ["cap-1", "cap-2", "cap-3"]


def npz(compressed: bool = False, **arrays: Any) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    return buffer.getvalue()


def sample(
    bundle: str, rows: int = 3, seed: int = 0, changes: dict[str, Any] | None = None
) -> dict[str, Any]:
    x = np.random.default_rng(seed).standard_normal((rows, 8)).astype(np.float32)
    arrays = {
        "input/x": x,
        "output/y": x[:, :4] * 2,
        "timestamp": np.arange(rows, dtype=np.float64) + 1.7e9,
        "bundle_sha256": np.array(bundle),
    }
    arrays.update(changes or {})
    return {k: v for k, v in arrays.items() if v is not None}


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, f"{response.status_code} {response.text}"
    return response.json()


def refused(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, f"{response.status_code} {response.text}"
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    return detail


def bundle(api: httpx.Client, tmp_path: Path, version: str, seed: int = 0) -> dict[str, Any]:
    if api.get("/models/mlp").status_code == 404:
        ok(api.post("/models", json={"name": "mlp"}), 201)
    model = mlp(tmp_path / f"mlp-{version}.onnx", seed=seed)
    ok(api.post("/models/mlp/versions", data={"version": version},
                files={"file": ("mlp.onnx", model.read_bytes())}), 201)  # fmt: skip
    body = {"model": "mlp", "version": version, "bundle_version": version}
    return ok(api.post("/bundles", json=body), 201)  # type: ignore[no-any-return]


def test_uploads_are_checked_stored_once_and_exported_with_their_origin(
    controller: Start, tmp_path: Path
) -> None:
    api = controller(EDGEFLEET_CAPTURE_MAX_UPLOAD_BYTES="8192")
    api.headers["X-EdgeFleet-Actor"] = "dana"
    v1, v2 = bundle(api, tmp_path, "1.0.0"), bundle(api, tmp_path, "2.0.0", seed=1)
    sha = v1["manifest_sha256"]
    body = {"devices": DEVICES, "bundle": sha, "rate": 0.5, "max_samples": 5, "duration_s": 600}
    capture = ok(api.post("/captures", json=body), 201)
    cid = capture["id"]
    assert capture["status"] == "active" and capture["total"] == 3
    assert capture["bundle"]["version"] == "1.0.0"
    assert {d["status"] for d in capture["devices"]} == {"requested"}
    blobs = tmp_path / "controller-0" / "blobs" / "sha256"
    stored_before = set(blobs.iterdir())

    def post(data: bytes, device: str = "cap-1", capture_id: str = cid) -> httpx.Response:
        return api.post(f"/captures/{capture_id}/uploads/{device}", content=data)

    object_array = np.array([{"x": 1}, None], dtype=object)
    bad = [
        (npz(**sample(sha, changes={"input/x": np.zeros((3, 9), np.float32)})), 422,
         "input/x has shape [3, 9], bundle mlp@1.0.0 takes [N, 8]"),
        (npz(**sample(sha, changes={"input/x": np.zeros((3, 8), np.float64)})), 422,
         "input/x is float64, bundle mlp@1.0.0 takes float32"),
        (npz(**sample(sha, changes={"input/x": object_array})), 422,
         "holds Python objects (pickle)"),
        (pickle.dumps({"input/x": [1, 2]}), 422, "not an .npz file"),
        (npz(compressed=True, **sample(sha)), 422, "compressed: write the file with np.savez"),
        (npz(**sample(sha, rows=6)), 422, "holds 6 samples, more than the capture's max_samples 5"),
        (npz(**sample(sha, changes={"output/y": None})), 422, "missing arrays ['output/y']"),
        (npz(**sample(sha, changes={"extra": np.zeros(3)})), 422, "unexpected arrays ['extra']"),
        (npz(**sample(sha, changes={"timestamp": np.zeros(2)})), 422,
         "input/x has 3 rows, timestamp has 2"),
        (npz(**sample(v2["manifest_sha256"])), 422,
         "capture {cid} is for bundle mlp@1.0.0; these rows come from mlp@2.0.0"),
        (npz(**sample("ef" * 32)), 422, "names bundle efef"),
        (npz(**sample(sha, changes={"pad": np.zeros(2000)})), 413,
         "over EDGEFLEET_CAPTURE_MAX_UPLOAD_BYTES (8192 bytes)"),
    ]  # fmt: skip
    for data, status, message in bad:
        assert message.format(cid=cid) in refused(post(data), status)
    assert "no capture 'ffff'" in refused(post(npz(**sample(sha)), capture_id="ffff"), 404)
    assert "device 'cap-9' was not asked for capture" in refused(
        post(npz(**sample(sha)), device="cap-9"), 404
    )
    assert set(blobs.iterdir()) == stored_before  # nothing of a refused upload is kept
    assert {d["status"] for d in ok(api.get(f"/captures/{cid}"))["devices"]} == {"requested"}

    good = npz(**sample(sha, rows=3, seed=1))
    row = ok(post(good), 201)
    assert row["status"] == "uploaded" and row["samples"] == 3
    assert row["upload"]["model_name"] == "mlp" and row["upload"]["model_version"] == "1.0.0"
    assert ok(post(good), 200) == row  # a retry whose answer was lost: the same answer
    assert "has uploaded 3 samples for capture" in refused(post(npz(**sample(sha, seed=9))), 409)
    ok(post(npz(**sample(sha, rows=2, seed=2)), device="cap-2"), 201)

    export = api.get(f"/captures/{cid}/export")
    assert export.status_code == 200, export.text
    data = np.load(io.BytesIO(export.content), allow_pickle=False)
    columns = ["input/x", "output/y", "timestamp", "device_id", "bundle_sha256", "model_name",
               "model_version"]  # fmt: skip
    assert sorted(data.files) == sorted(columns)
    assert list(data["device_id"]) == ["cap-1"] * 3 + ["cap-2"] * 2
    np.testing.assert_array_equal(data["input/x"][:3], sample(sha, seed=1)["input/x"])
    np.testing.assert_array_equal(data["input/x"][3:], sample(sha, rows=2, seed=2)["input/x"])
    assert set(data["bundle_sha256"]) == {sha} and set(data["model_version"]) == {"1.0.0"}

    canceled = ok(api.post(f"/captures/{cid}/cancel", json={"reason": "enough"}))
    assert canceled["status"] == "canceled"
    assert "was canceled" in refused(post(npz(**sample(sha)), device="cap-3"), 409)
    assert "is canceled" in refused(api.post(f"/captures/{cid}/cancel"), 409)
    audit = [(e["actor"], e["action"]) for e in ok(api.get("/audit"))]
    for action in ("capture_create", "capture_export", "capture_cancel"):
        assert ("dana", action) in audit


def test_capture_targets_and_a_rollout_that_captures(controller: Start, tmp_path: Path) -> None:
    api = controller()
    sha = bundle(api, tmp_path, "1.0.0")["manifest_sha256"]
    spec = {"rate": 0.1, "max_samples": 100, "duration_s": 3600}
    assert "needs a target" in refused(api.post("/captures", json=spec), 422)
    assert "'rate'" in refused(api.post("/captures", json={**spec, "devices": ["a"], "rate": 0}),
                               422)  # fmt: skip
    assert "'wave' narrows a 'rollout'" in refused(
        api.post("/captures", json={**spec, "devices": ["a"], "wave": 1}), 422
    )
    assert "invalid device id 'A/B'" in refused(
        api.post("/captures", json={**spec, "devices": ["A/B"]}), 422
    )
    body = {"bundle": sha, "devices": [f"r-{i}" for i in range(4)],
            "waves": {"steps": [{"count": 1}, {"percent": 100}]}, "capture": spec}  # fmt: skip
    rollout = ok(api.post("/rollouts", json=body), 201)
    from_rollout = ok(api.get("/captures", params={"rollout": rollout["id"]}))
    assert len(from_rollout) == 1
    assert from_rollout[0]["total"] == 4 and from_rollout[0]["bundle"]["manifest_sha256"] == sha
    wave_one = ok(api.post("/captures", json={**spec, "rollout": rollout["id"], "wave": 1}), 201)
    assert wave_one["total"] == 1 and wave_one["bundle"]["manifest_sha256"] == sha
    assert "no uploads yet" in refused(api.get(f"/captures/{wave_one['id']}/export"), 409)


def test_an_operator_runs_a_capture_from_the_cli(
    controller: Start, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = controller()
    url = str(api.base_url).rstrip("/").removesuffix("/api/v1")
    sha = bundle(api, tmp_path, "1.0.0")["manifest_sha256"]

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["capture", "--controller", url, "--actor", "fay", *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = run("create", "--devices", "cap-1,cap-2", "--bundle", sha, "--rate", "0.5",
                         "--max-samples", "5", "--duration", "10m")  # fmt: skip
    assert code == 0, err
    cid = out.splitlines()[0].split()[1]
    assert "status   active" in out and "devices  2: requested 2" in out
    assert "rate 0.5, up to 5 samples per device" in out and "mlp@1.0.0" in out
    code, _, err = run("create", "--devices", "cap-1", "--rate", "2", "--max-samples", "5",
                       "--duration", "1h")  # fmt: skip
    assert code == 2 and "field 'rate' (body)" in err
    code, _, err = run("create", "--devices", "cap-1", "--rate", "1", "--max-samples", "5",
                       "--duration", "soon")  # fmt: skip
    assert code == 2 and "--duration 'soon'" in err
    code, _, err = run("export", cid, "-o", str(tmp_path / "none.npz"))
    assert code == 2 and "has no uploads yet" in err and not (tmp_path / "none.npz").exists()

    ok(api.post(f"/captures/{cid}/uploads/cap-1", content=npz(**sample(sha))), 201)
    code, out, _ = run("status", cid)
    line = next(line for line in out.splitlines() if line.strip().startswith("cap-1"))
    assert line.split()[1:3] == ["uploaded", "3"] and line.endswith("mlp@1.0.0")
    code, out, _ = run("export", cid, "-o", str(tmp_path / "data.npz"))
    assert code == 0 and "wrote 3 rows from 1 devices (model versions 1.0.0)" in out
    with np.load(tmp_path / "data.npz", allow_pickle=False) as data:
        np.testing.assert_array_equal(data["input/x"], sample(sha)["input/x"])
    code, out, _ = run("cancel", cid, "--reason", "enough")
    assert code == 0 and "status   canceled" in out
    code, out, _ = run("list")
    assert cid in out and "canceled" in out
