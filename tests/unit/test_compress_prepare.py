"""Preparation passes keep what the model computes and make it ready for the quantizers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from compress import (
    UnsupportedModelError,
    constants_to_initializers,
    gemm_to_matmul,
    infer_shapes,
    load_model,
    prepare_model,
    upgrade_opset,
)
from compress.prepare import default_opset
from tests.unit.conftest_compress import constant_weights_mlp, gemm_mlp, matmul_mlp, run_model

X = np.random.default_rng(1).standard_normal((4, 32)).astype(np.float32)


def test_constant_weights_become_initializers_with_same_outputs(tmp_path: Path) -> None:
    path = constant_weights_mlp(tmp_path / "const.onnx")
    model = load_model(path)
    moved, count = constants_to_initializers(model)
    assert count == 2
    assert not [n for n in moved.graph.node if n.op_type == "Constant"]
    assert {i.name for i in moved.graph.initializer} == {"W1", "W2"}
    onnx.checker.check_model(moved)
    before = run_model(path, {"x": X})[0]
    after = run_model(moved.SerializeToString(), {"x": X})[0]
    np.testing.assert_array_equal(before, after)
    # The input model is left as it was.
    assert len([n for n in model.graph.node if n.op_type == "Constant"]) == 2


def test_opset_upgrade_converts_old_models_only(tmp_path: Path) -> None:
    path = matmul_mlp(tmp_path / "old.onnx", opset=11)
    model = load_model(path)
    upgraded, changed = upgrade_opset(model, 13)
    assert changed and default_opset(upgraded) == 13
    np.testing.assert_allclose(
        run_model(path, {"x": X})[0], run_model(upgraded.SerializeToString(), {"x": X})[0]
    )
    same, changed_again = upgrade_opset(upgraded, 13)
    assert not changed_again and same is upgraded


def test_opset_upgrade_failure_is_a_clear_error(tmp_path: Path) -> None:
    model = load_model(matmul_mlp(tmp_path / "m.onnx"))
    del model.opset_import[:]
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedModelError, match="no default-domain"):
        upgrade_opset(model, 13)


def test_shape_inference_annotates_intermediates(tmp_path: Path) -> None:
    model = load_model(gemm_mlp(tmp_path / "m.onnx"))
    inferred, method = infer_shapes(model)
    assert method in ("symbolic", "onnx")
    assert {"h", "r"} <= {v.name for v in inferred.graph.value_info}


def test_shape_inference_falls_back_when_symbolic_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxruntime.tools import symbolic_shape_infer

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("sympy says no")

    monkeypatch.setattr(symbolic_shape_infer.SymbolicShapeInference, "infer_shapes", broken)
    model = load_model(gemm_mlp(tmp_path / "m.onnx"))
    inferred, method = infer_shapes(model)
    assert method == "onnx"
    assert "h" in {v.name for v in inferred.graph.value_info}


def test_gemm_rewrite_keeps_outputs(tmp_path: Path) -> None:
    path = gemm_mlp(tmp_path / "gemm.onnx")
    rewritten, count = gemm_to_matmul(load_model(path))
    assert count == 2
    assert [n.op_type for n in rewritten.graph.node] == ["MatMul", "Add", "Relu", "MatMul", "Add"]
    onnx.checker.check_model(rewritten)
    np.testing.assert_allclose(
        run_model(path, {"x": X})[0],
        run_model(rewritten.SerializeToString(), {"x": X})[0],
        rtol=1e-5,
        atol=1e-5,
    )


def test_prepare_model_reports_what_it_changed(tmp_path: Path) -> None:
    model = load_model(constant_weights_mlp(tmp_path / "c.onnx"))
    for node in model.graph.node:
        node.name = ""
    prepared = prepare_model(model, min_opset=18)
    assert any("Constant" in note for note in prepared.notes)
    assert any("named" in note for note in prepared.notes)
    assert any("opset 17 -> 18" in note for note in prepared.notes)
    assert all(n.name for n in prepared.model.graph.node)
    np.testing.assert_allclose(
        run_model(tmp_path / "c.onnx", {"x": X})[0],
        run_model(prepared.model.SerializeToString(), {"x": X})[0],
        rtol=1e-6,
    )
