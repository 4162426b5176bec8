"""int8 and fp16 passes: the outputs load in onnxruntime, shrink, and still agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from compress import (
    EvalSet,
    UnsupportedModelError,
    convert_to_fp16,
    generate_inputs,
    input_specs,
    load_model,
    prepare_model,
    quantize_dynamic_int8,
    quantize_static_qdq,
)
from tests.unit.conftest_compress import (
    cast_mlp,
    conv_net,
    cosine,
    gemm_mlp,
    matmul_mlp,
    run_model,
)

RNG = np.random.default_rng(3)
X = RNG.standard_normal((16, 32)).astype(np.float32)
IMAGES = RNG.standard_normal((4, 3, 16, 16)).astype(np.float32)


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _calibration(model: onnx.ModelProto) -> EvalSet:
    return generate_inputs(input_specs(model), samples=8, seed=5)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("weight_type", ["s8", "u8"])
def test_dynamic_int8_shrinks_matmul_mlp_and_agrees(
    tmp_path: Path, per_channel: bool, weight_type: str
) -> None:
    path = matmul_mlp(tmp_path / "m.onnx")
    model = prepare_model(load_model(path), min_opset=13).model
    quantized = quantize_dynamic_int8(
        model,
        per_channel=per_channel,
        weight_type=weight_type,  # type: ignore[arg-type]
    )
    assert "MatMulInteger" in _ops(quantized) or "DynamicQuantizeMatMul" in _ops(quantized)
    assert quantized.ByteSize() < 0.4 * model.ByteSize()
    expected = run_model(path, {"x": X})[0]
    got = run_model(quantized.SerializeToString(), {"x": X})[0]
    assert got.shape == expected.shape
    assert cosine(expected, got) > 0.99


def test_dynamic_int8_leaves_excluded_nodes_in_float(tmp_path: Path) -> None:
    model = prepare_model(load_model(matmul_mlp(tmp_path / "m.onnx"))).model
    quantized = quantize_dynamic_int8(model, nodes_to_exclude=["mm2"])
    float_matmuls = [n.name for n in quantized.graph.node if n.op_type == "MatMul"]
    assert float_matmuls == ["mm2"]


def test_dynamic_int8_refuses_an_old_opset(tmp_path: Path) -> None:
    model = load_model(matmul_mlp(tmp_path / "m.onnx", opset=11))
    with pytest.raises(UnsupportedModelError, match="opset >= 13.*opset 11"):
        quantize_dynamic_int8(model, per_channel=True)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_qdq_per_channel_conv_net(tmp_path: Path, method: str) -> None:
    path = conv_net(tmp_path / "conv.onnx")
    model = prepare_model(load_model(path), min_opset=13).model
    quantized = quantize_static_qdq(
        model,
        _calibration(model),
        calibration_method=method,  # type: ignore[arg-type]
    )
    ops = _ops(quantized)
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # Per-channel: the Conv weights get one scale per output channel.
    scales = {i.name: i for i in quantized.graph.initializer if i.name.endswith("_scale")}
    assert any(list(s.dims) == [16] for s in scales.values())
    expected = run_model(path, {"x": IMAGES})[0]
    got = run_model(quantized.SerializeToString(), {"x": IMAGES})[0]
    assert got.shape == expected.shape
    assert cosine(expected, got) > 0.95


def test_fp16_copes_with_cast_nodes(tmp_path: Path) -> None:
    path = cast_mlp(tmp_path / "cast.onnx")
    model = load_model(path)
    half = convert_to_fp16(model)
    onnx.checker.check_model(half)
    weights = {i.name: i for i in half.graph.initializer}
    assert weights["W1"].data_type == onnx.TensorProto.FLOAT16
    expected = run_model(path, {"x": X})[0]
    got = run_model(half.SerializeToString(), {"x": X})[0]
    assert got.dtype == np.float32  # keep_io_types: callers see float32
    assert got.shape == expected.shape
    assert cosine(expected, got) > 0.999


def test_fp16_keeps_blocked_nodes_in_float(tmp_path: Path) -> None:
    path = gemm_mlp(tmp_path / "g.onnx")
    half = convert_to_fp16(load_model(path), node_block_list=["fc2"])
    weights = {i.name: i.data_type for i in half.graph.initializer}
    assert weights["W1"] == onnx.TensorProto.FLOAT16
    assert weights["W2"] == onnx.TensorProto.FLOAT
    got = run_model(half.SerializeToString(), {"x": X})[0]
    assert cosine(run_model(path, {"x": X})[0], got) > 0.999
