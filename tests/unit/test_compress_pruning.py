"""Magnitude and structured pruning: the sparsity asked for, valid graphs, real shrinking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from compress import (
    CompressError,
    UnsupportedModelError,
    find_chains,
    load_model,
    magnitude_prune,
    measure_latency,
    prepare_model,
    structured_prune,
)
from compress.evaluate import zstd_size
from compress.structured_pruning import kept_channels
from tests.unit.conftest_compress import (
    bn_conv_net,
    cast_mlp,
    conv_net,
    cosine,
    dead_unit_mlp,
    gemm_mlp,
    matmul_mlp,
    residual_mlp,
    run_model,
)

X = np.random.default_rng(4).standard_normal((8, 32)).astype(np.float32)
IMAGES = np.random.default_rng(5).standard_normal((4, 3, 16, 16)).astype(np.float32)


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _zeros(arr: np.ndarray) -> float:
    return float(np.mean(arr == 0))


def test_global_magnitude_pruning_hits_the_sparsity_and_compresses(tmp_path: Path) -> None:
    model = load_model(gemm_mlp(tmp_path / "m.onnx"))
    result = magnitude_prune(model, 0.5)
    w = _weights(result.model)
    total = w["W1"].size + w["W2"].size
    zeros = int((w["W1"] == 0).sum() + (w["W2"] == 0).sum())
    assert zeros == total // 2
    assert _zeros(w["b1"]) == 0.0  # biases are not pruned
    assert result.pruned == total // 2 and "50.0%" in result.summary()
    assert zstd_size(result.model.SerializeToString()) < 0.8 * zstd_size(model.SerializeToString())
    (got,) = run_model(result.model.SerializeToString(), {"x": X})
    assert got.shape == (8, 10)


def test_layer_magnitude_pruning_prunes_each_tensor_alike(tmp_path: Path) -> None:
    model = load_model(conv_net(tmp_path / "c.onnx"))
    result = magnitude_prune(model, 0.3, scope="layer")
    for name in ("C1", "C2", "W"):
        assert result.sparsity[name] == pytest.approx(0.3, abs=0.01)


def test_magnitude_pruning_leaves_excluded_nodes_alone(tmp_path: Path) -> None:
    model = load_model(gemm_mlp(tmp_path / "m.onnx"))
    result = magnitude_prune(model, 0.5, nodes_to_exclude=["fc2"])
    assert set(result.sparsity) == {"W1"}
    assert _zeros(_weights(result.model)["W2"]) == 0.0


def test_magnitude_pruning_refuses_bad_arguments(tmp_path: Path) -> None:
    model = load_model(gemm_mlp(tmp_path / "m.onnx"))
    with pytest.raises(CompressError, match=r"sparsity must be in \[0, 1\), got 1.5"):
        magnitude_prune(model, 1.5)
    with pytest.raises(CompressError, match="scope must be 'global' or 'layer', got 'row'"):
        magnitude_prune(model, 0.5, scope="row")  # type: ignore[arg-type]


def test_structured_pruning_shrinks_mlp_tensors(tmp_path: Path) -> None:
    path = matmul_mlp(tmp_path / "m.onnx", hidden=128)
    result = structured_prune(load_model(path), 0.5)
    w = _weights(result.model)
    assert w["W1"].shape == (32, 64) and w["b1"].shape == (64,) and w["W2"].shape == (64, 10)
    assert result.layers == {"mm1": (128, 64)}
    onnx.checker.check_model(result.model, full_check=True)
    (got,) = run_model(result.model.SerializeToString(), {"x": X})
    assert got.shape == (8, 10)


def test_structured_pruning_removes_dead_units_without_changing_outputs(tmp_path: Path) -> None:
    path = dead_unit_mlp(tmp_path / "d.onnx", hidden=64, dead=16)
    result = structured_prune(load_model(path), 0.25)
    assert _weights(result.model)["W1"].shape == (32, 48)
    np.testing.assert_allclose(
        run_model(result.model.SerializeToString(), {"x": X})[0],
        run_model(path, {"x": X})[0],
        rtol=1e-5,
        atol=1e-5,
    )


def test_structured_pruning_through_bn_pool_and_flatten(tmp_path: Path) -> None:
    path = bn_conv_net(tmp_path / "bn.onnx", width=32)
    model = prepare_model(load_model(path)).model  # with value_info from shape inference
    result = structured_prune(model, 0.25)
    w = _weights(result.model)
    assert w["C1"].shape[0] == 24 and w["g"].shape == (24,) and w["var"].shape == (24,)
    assert w["C2"].shape == (48, 24, 3, 3) and w["c2"].shape == (1, 48, 1, 1)
    assert w["W"].shape == (5, 48)
    onnx.checker.check_model(result.model, full_check=True)
    (got,) = run_model(result.model.SerializeToString(), {"x": IMAGES})
    (expected,) = run_model(path, {"x": IMAGES})
    assert got.shape == expected.shape
    assert cosine(expected, got) > 0.5  # no retraining: close-ish, not equal


def test_structured_pruning_skips_branches_and_says_why(tmp_path: Path) -> None:
    model = load_model(residual_mlp(tmp_path / "r.onnx"))
    chains, skipped = find_chains(model)
    assert [c.producer for c in chains] == ["mm0"]
    assert "2 readers" in skipped["mm1"]
    assert "non-constant" in skipped["mm2"]
    assert "graph output" in skipped["mm3"]
    result = structured_prune(model, 0.5)
    w = _weights(result.model)
    assert w["W0"].shape == (32, 16) and w["W1"].shape == (16, 32)  # inputs shrink only
    assert w["W2"].shape == (32, 32)  # feeds the residual Add: untouched
    (got,) = run_model(result.model.SerializeToString(), {"x": X})
    assert got.shape == (8, 10)


def test_structured_pruning_refuses_models_without_chains(tmp_path: Path) -> None:
    model = load_model(residual_mlp(tmp_path / "r.onnx"))
    with pytest.raises(UnsupportedModelError, match="no layer can be pruned structurally"):
        structured_prune(model, 0.5, nodes_to_exclude=["mm0"])


def test_structured_pruning_stops_at_a_shape_read(tmp_path: Path) -> None:
    model = load_model(cast_mlp(tmp_path / "c.onnx"))
    chains, skipped = find_chains(model)
    # The Cast passes through, but the Relu output is also read by Shape.
    assert chains == []
    assert "tensor 'r'" in skipped["mm1"] and "2 readers" in skipped["mm1"]


def test_kept_channels_rounds_to_kernel_blocks() -> None:
    assert kept_channels(64, 0.25) == 48
    assert kept_channels(64, 0.1) == 64  # 58 rounds up to 64: nothing to remove
    assert kept_channels(32, 0.25) == 24
    assert kept_channels(30, 0.5) == 15
    assert kept_channels(64, 0.1, multiple=1) == 58
    assert kept_channels(4, 0.99) == 1


def test_structured_pruning_really_speeds_up(tmp_path: Path) -> None:
    path = matmul_mlp(tmp_path / "big.onnx", inputs=256, hidden=2048, classes=256)
    original = path.read_bytes()
    pruned = structured_prune(load_model(path), 0.5).model.SerializeToString()
    assert len(pruned) < 0.55 * len(original)
    feed = {"x": np.ones((1, 256), np.float32)}
    result = measure_latency(original, pruned, feed, runs=40)
    assert result.ratio < 0.8, result
