"""Small TFLite models written without TensorFlow, for tests (never committed as binaries).

The ``tflite`` package ships the FlatBuffers builders generated from TFLite's schema;
with them (and ``flatbuffers``) we write ``FULLY_CONNECTED`` models, optionally with a
fused RELU and a SOFTMAX head, that ai-edge-litert and tflite-runtime both run. The
numpy reference in :func:`mlp_reference` is what the tests check interpreter output
against.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import flatbuffers
import numpy as np
import numpy.typing as npt
from tflite.ActivationFunctionType import ActivationFunctionType
from tflite.BuiltinOperator import BuiltinOperator
from tflite.BuiltinOptions import BuiltinOptions
from tflite.TensorType import TensorType

# The generated modules hold the builder functions (Start/Add.../End); the package's
# top level re-exports only the reader classes of the same names.
Buffer = importlib.import_module("tflite.Buffer")
FullyConnectedOptions = importlib.import_module("tflite.FullyConnectedOptions")
Model = importlib.import_module("tflite.Model")
Operator = importlib.import_module("tflite.Operator")
OperatorCode = importlib.import_module("tflite.OperatorCode")
SoftmaxOptions = importlib.import_module("tflite.SoftmaxOptions")
SubGraph = importlib.import_module("tflite.SubGraph")
Tensor = importlib.import_module("tflite.Tensor")

SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"
# TFLite maps constant buffers in place; 16-byte alignment keeps every kernel happy.
BUFFER_ALIGNMENT = 16

Floats = npt.NDArray[np.float32]


@dataclass(frozen=True)
class MlpWeights:
    """``y = softmax?(relu(x @ w1.T + b1) @ w2.T + b2)``; weights in TFLite's [out, in]."""

    w1: Floats
    b1: Floats
    w2: Floats
    b2: Floats
    softmax: bool


def mlp_weights(
    *, seed: int = 0, inputs: int = 8, hidden: int = 16, outputs: int = 4, softmax: bool = False
) -> MlpWeights:
    rng = np.random.default_rng(seed)
    return MlpWeights(
        w1=rng.standard_normal((hidden, inputs)).astype(np.float32),
        b1=rng.standard_normal(hidden).astype(np.float32),
        w2=rng.standard_normal((outputs, hidden)).astype(np.float32),
        b2=rng.standard_normal(outputs).astype(np.float32),
        softmax=softmax,
    )


def mlp_reference(weights: MlpWeights, x: Floats) -> Floats:
    """What the model computes, in numpy (float64 inside, float32 out)."""
    hidden = np.maximum(x.astype(np.float64) @ weights.w1.T + weights.b1, 0.0)
    logits = hidden @ weights.w2.T + weights.b2
    if weights.softmax:
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        logits = shifted / shifted.sum(axis=-1, keepdims=True)
    return logits.astype(np.float32)


def _int_vector(builder: flatbuffers.Builder, values: list[int]) -> int:
    builder.StartVector(4, len(values), 4)
    for value in reversed(values):
        builder.PrependInt32(value)
    return int(builder.EndVector())


def _byte_vector(builder: flatbuffers.Builder, data: bytes) -> int:
    builder.StartVector(1, len(data), BUFFER_ALIGNMENT)
    builder.head = builder.head - len(data)
    builder.Bytes[builder.head : builder.head + len(data)] = data
    return int(builder.EndVector())


def mlp_tflite_bytes(
    weights: MlpWeights, *, dynamic_batch: bool = True, input_name: str = "x"
) -> bytes:
    """Serialise ``weights`` as a TFLite FlatBuffer (input [N, in], output [N, out]).

    With ``dynamic_batch`` the batch dimension is -1 in ``shape_signature``, so the
    interpreter may resize it; without, the model takes exactly one row.
    """
    hidden, inputs = weights.w1.shape
    outputs = weights.w2.shape[0]
    builder = flatbuffers.Builder(4096)

    # Buffers: 0 is the empty sentinel TFLite requires; then the four constants.
    constants = [weights.w1, weights.b1, weights.w2, weights.b2]
    buffer_offsets = []
    for array in [None, *constants]:
        data = None if array is None else _byte_vector(builder, array.tobytes())
        Buffer.Start(builder)
        if data is not None:
            Buffer.AddData(builder, data)
        buffer_offsets.append(Buffer.End(builder))

    # Tensors: (name, shape, buffer index).
    tensors: list[tuple[str, list[int], int]] = [
        (input_name, [1, inputs], 0),
        ("w1", [hidden, inputs], 1),
        ("b1", [hidden], 2),
        ("h", [1, hidden], 0),
        ("w2", [outputs, hidden], 3),
        ("b2", [outputs], 4),
        ("logits", [1, outputs], 0),
    ]
    if weights.softmax:
        tensors.append(("probs", [1, outputs], 0))
    tensor_offsets = []
    for name, shape, buffer in tensors:
        name_offset = builder.CreateString(name)
        shape_offset = _int_vector(builder, shape)
        signature = None
        if dynamic_batch and buffer == 0:
            signature = _int_vector(builder, [-1, *shape[1:]])
        Tensor.Start(builder)
        Tensor.AddShape(builder, shape_offset)
        if signature is not None:
            Tensor.AddShapeSignature(builder, signature)
        Tensor.AddType(builder, TensorType.FLOAT32)
        Tensor.AddBuffer(builder, buffer)
        Tensor.AddName(builder, name_offset)
        tensor_offsets.append(Tensor.End(builder))

    def fully_connected(activation: int, ins: list[int], out: int) -> int:
        FullyConnectedOptions.Start(builder)
        FullyConnectedOptions.AddFusedActivationFunction(builder, activation)
        options = FullyConnectedOptions.End(builder)
        return _operator(builder, 0, ins, [out], BuiltinOptions.FullyConnectedOptions, options)

    relu = ActivationFunctionType.RELU
    none = ActivationFunctionType.NONE
    operators = [fully_connected(relu, [0, 1, 2], 3), fully_connected(none, [3, 4, 5], 6)]
    codes = [BuiltinOperator.FULLY_CONNECTED]
    if weights.softmax:
        SoftmaxOptions.Start(builder)
        SoftmaxOptions.AddBeta(builder, 1.0)
        options = SoftmaxOptions.End(builder)
        operators.append(_operator(builder, 1, [6], [7], BuiltinOptions.SoftmaxOptions, options))
        codes.append(BuiltinOperator.SOFTMAX)

    subgraph_inputs = _int_vector(builder, [0])
    subgraph_outputs = _int_vector(builder, [len(tensors) - 1])
    tensors_vec = _offset_vector(builder, tensor_offsets)
    operators_vec = _offset_vector(builder, operators)
    SubGraph.Start(builder)
    SubGraph.AddTensors(builder, tensors_vec)
    SubGraph.AddInputs(builder, subgraph_inputs)
    SubGraph.AddOutputs(builder, subgraph_outputs)
    SubGraph.AddOperators(builder, operators_vec)
    subgraph = SubGraph.End(builder)

    code_offsets = []
    for code in codes:
        OperatorCode.Start(builder)
        # Codes below 127 also go in the deprecated int8 field, which old readers use.
        OperatorCode.AddDeprecatedBuiltinCode(builder, code)
        OperatorCode.AddBuiltinCode(builder, code)
        OperatorCode.AddVersion(builder, 1)
        code_offsets.append(OperatorCode.End(builder))

    codes_vec = _offset_vector(builder, code_offsets)
    subgraphs_vec = _offset_vector(builder, [subgraph])
    buffers_vec = _offset_vector(builder, buffer_offsets)
    description = builder.CreateString("edgefleet test mlp")
    Model.Start(builder)
    Model.AddVersion(builder, SCHEMA_VERSION)
    Model.AddOperatorCodes(builder, codes_vec)
    Model.AddSubgraphs(builder, subgraphs_vec)
    Model.AddDescription(builder, description)
    Model.AddBuffers(builder, buffers_vec)
    builder.Finish(Model.End(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _operator(
    builder: flatbuffers.Builder,
    opcode: int,
    inputs: list[int],
    outputs: list[int],
    options_type: int,
    options: int,
) -> int:
    ins = _int_vector(builder, inputs)
    outs = _int_vector(builder, outputs)
    Operator.Start(builder)
    Operator.AddOpcodeIndex(builder, opcode)
    Operator.AddInputs(builder, ins)
    Operator.AddOutputs(builder, outs)
    Operator.AddBuiltinOptionsType(builder, options_type)
    Operator.AddBuiltinOptions(builder, options)
    return int(Operator.End(builder))


def _offset_vector(builder: flatbuffers.Builder, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return int(builder.EndVector())


def mlp_tflite(path: Path, weights: MlpWeights | None = None, **kw: bool | str) -> Path:
    """Write an MLP ``.tflite`` to ``path`` (default weights: seed 0, 8-16-4)."""
    data = mlp_tflite_bytes(weights or mlp_weights(), **kw)  # type: ignore[arg-type]
    path.write_bytes(data)
    return path
