"""Small ONNX models for the compression tests, generated with onnx.helper.

Not a pytest conftest (pytest only loads ``conftest.py``): the compression test modules
import these builders directly. Every model is checked with ``onnx.checker`` before use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _save(graph: onnx.GraphProto, path: Path, opset: int = OPSET) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _w(rng: np.random.Generator, *shape: int, scale: float | None = None) -> np.ndarray:
    fan_in = shape[-1] if len(shape) == 2 else int(np.prod(shape[1:]))
    std = scale if scale is not None else 1.0 / np.sqrt(fan_in)
    return (rng.standard_normal(shape) * std).astype(np.float32)


def gemm_mlp(
    path: Path, *, seed: int = 0, inputs: int = 32, hidden: int = 128, classes: int = 10
) -> Path:
    """``logits = Gemm(relu(Gemm(x, W1^T) + b1), W2^T) + b2``; x is [N, inputs]."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(_w(rng, hidden, inputs), "W1"),
        numpy_helper.from_array(_w(rng, hidden, scale=0.1), "b1"),
        numpy_helper.from_array(_w(rng, classes, hidden), "W2"),
        numpy_helper.from_array(_w(rng, classes, scale=0.1), "b2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu1"),
        helper.make_node("Gemm", ["r", "W2", "b2"], ["logits"], name="fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "gemm_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", inputs])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    return _save(graph, path)


def matmul_mlp(
    path: Path,
    *,
    seed: int = 0,
    inputs: int = 32,
    hidden: int = 128,
    classes: int = 10,
    opset: int = OPSET,
) -> Path:
    """``logits = relu(x @ W1 + b1) @ W2 + b2``, as MatMul + Add."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(_w(rng, inputs, hidden), "W1"),
        numpy_helper.from_array(_w(rng, hidden, scale=0.1), "b1"),
        numpy_helper.from_array(_w(rng, hidden, classes), "W2"),
        numpy_helper.from_array(_w(rng, classes, scale=0.1), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="add1"),
        helper.make_node("Relu", ["hb"], ["r"], name="relu1"),
        helper.make_node("MatMul", ["r", "W2"], ["o"], name="mm2"),
        helper.make_node("Add", ["o", "b2"], ["logits"], name="add2"),
    ]
    graph = helper.make_graph(
        nodes,
        "matmul_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", inputs])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    return _save(graph, path, opset)


def conv_net(path: Path, *, seed: int = 0, classes: int = 4, size: int = 16) -> Path:
    """Conv(3->16) Relu Conv(16->32) Relu GlobalAveragePool Flatten Gemm; x [N,3,size,size]."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(_w(rng, 16, 3, 3, 3), "C1"),
        numpy_helper.from_array(_w(rng, 16, scale=0.1), "c1"),
        numpy_helper.from_array(_w(rng, 32, 16, 3, 3), "C2"),
        numpy_helper.from_array(_w(rng, 32, scale=0.1), "c2"),
        numpy_helper.from_array(_w(rng, classes, 32), "W"),
        numpy_helper.from_array(_w(rng, classes, scale=0.1), "b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "C1", "c1"], ["a1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "C2", "c2"], ["a2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "W", "b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    return _save(graph, path)


def constant_weights_mlp(path: Path, *, seed: int = 0, inputs: int = 32, hidden: int = 64) -> Path:
    """An MLP whose weights are Constant nodes, as some exporters write them."""
    rng = np.random.default_rng(seed)
    w1, w2 = _w(rng, inputs, hidden), _w(rng, hidden, 10)
    nodes = [
        helper.make_node(
            "Constant", [], ["W1"], name="const_w1", value=numpy_helper.from_array(w1)
        ),
        helper.make_node(
            "Constant", [], ["W2"], name="const_w2", value=numpy_helper.from_array(w2)
        ),
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu1"),
        helper.make_node("MatMul", ["r", "W2"], ["logits"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes,
        "constant_weights_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", inputs])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
    )
    return _save(graph, path)


def cast_mlp(path: Path, *, seed: int = 0, inputs: int = 32, hidden: int = 64) -> Path:
    """An MLP with Cast nodes in the middle (to float, and via int64 and back).

    onnxconverter-common's fp16 converter leaves such a graph type-inconsistent.
    """
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(_w(rng, inputs, hidden), "W1"),
        numpy_helper.from_array(_w(rng, hidden, 10), "W2"),
        numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "flat_shape"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
        helper.make_node("Cast", ["h"], ["hc"], name="cast_float", to=TensorProto.FLOAT),
        helper.make_node("Relu", ["hc"], ["r"], name="relu1"),
        helper.make_node("Shape", ["r"], ["shape"], name="shape"),
        helper.make_node("Cast", ["shape"], ["shape_f"], name="cast_shape", to=TensorProto.FLOAT),
        helper.make_node("Cast", ["shape_f"], ["shape_i"], name="cast_back", to=TensorProto.INT64),
        helper.make_node("Reshape", ["r", "shape_i"], ["rr"], name="reshape"),
        helper.make_node("MatMul", ["rr", "W2"], ["logits"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes,
        "cast_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", inputs])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return _save(graph, path)


def run_model(path_or_bytes: Path | bytes, feed: dict[str, np.ndarray]) -> list[Any]:
    """Run a model in onnxruntime (proves it loads) and return its outputs."""
    source = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return list(session.run(None, feed))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)))


def bn_conv_net(path: Path, *, seed: int = 0, width: int = 32, classes: int = 5) -> Path:
    """Conv BN Relu MaxPool Conv(+bias Add) Relu GlobalAveragePool Flatten Gemm."""
    rng = np.random.default_rng(seed)
    w = width
    inits = [
        numpy_helper.from_array(_w(rng, w, 3, 3, 3), "C1"),
        numpy_helper.from_array((1.0 + 0.1 * rng.standard_normal(w)).astype(np.float32), "g"),
        numpy_helper.from_array((0.1 * rng.standard_normal(w)).astype(np.float32), "beta"),
        numpy_helper.from_array((0.1 * rng.standard_normal(w)).astype(np.float32), "mean"),
        numpy_helper.from_array((1.0 + rng.random(w)).astype(np.float32), "var"),
        numpy_helper.from_array(_w(rng, 2 * w, w, 3, 3), "C2"),
        numpy_helper.from_array(_w(rng, 1, 2 * w, 1, 1, scale=0.1), "c2"),
        numpy_helper.from_array(_w(rng, classes, 2 * w), "W"),
        numpy_helper.from_array(_w(rng, classes, scale=0.1), "b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "C1"], ["a1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["a1", "g", "beta", "mean", "var"], ["n1"], name="bn1"
        ),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node(
            "MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node("Conv", ["p1", "C2"], ["a2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["a2", "c2"], ["a2b"], name="bias2"),
        helper.make_node("Relu", ["a2b"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gp"], name="gap"),
        helper.make_node("Flatten", ["gp"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "W", "b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "bn_conv_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    return _save(graph, path)


def residual_mlp(path: Path, *, seed: int = 0, width: int = 32) -> Path:
    """``h = relu(x @ W0) @ W1; y = (h + relu(h) @ W2) @ W3``: ``h`` has two readers."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(_w(rng, width, width), "W0"),
        numpy_helper.from_array(_w(rng, width, width), "W1"),
        numpy_helper.from_array(_w(rng, width, width), "W2"),
        numpy_helper.from_array(_w(rng, width, 10), "W3"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W0"], ["h0"], name="mm0"),
        helper.make_node("Relu", ["h0"], ["r0"], name="relu0"),
        helper.make_node("MatMul", ["r0", "W1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "W2"], ["h2"], name="mm2"),
        helper.make_node("Add", ["h", "h2"], ["s"], name="residual"),
        helper.make_node("MatMul", ["s", "W3"], ["y"], name="mm3"),
    ]
    graph = helper.make_graph(
        nodes,
        "residual_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return _save(graph, path)


def dead_unit_mlp(path: Path, *, seed: int = 0, hidden: int = 64, dead: int = 16) -> Path:
    """A MatMul MLP whose last ``dead`` hidden units have zero weights and bias: removing
    them changes nothing, so structured pruning must give identical outputs."""
    rng = np.random.default_rng(seed)
    w1 = _w(rng, 32, hidden)
    b1 = _w(rng, hidden, scale=0.1)
    w1[:, hidden - dead :] = 0.0
    b1[hidden - dead :] = 0.0
    inits = [
        numpy_helper.from_array(w1, "W1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(_w(rng, hidden, 10), "W2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="add1"),
        helper.make_node("Relu", ["hb"], ["r"], name="relu1"),
        helper.make_node("MatMul", ["r", "W2"], ["logits"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes,
        "dead_unit_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return _save(graph, path)
