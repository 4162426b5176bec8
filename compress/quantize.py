"""int8 quantization through onnxruntime's quantizer: dynamic, and static QDQ.

Measured on real models (see DESIGN.md): dynamic int8 suits MatMul-heavy transformers
(0.25x size, 0.42x latency) but makes Conv 3-15x slower; static QDQ per-channel keeps a
CNN's top-1 at 0.28x size yet runs slower on CPU. So both are offered, and ``auto``
measures rather than guesses.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import onnx

from compress.errors import CompressError, UnknownMethodError, UnsupportedModelError
from compress.inputs import EvalSet, Feed
from compress.prepare import default_opset

log = logging.getLogger(__name__)

WeightType = Literal["s8", "u8"]
CalibrationMethodName = Literal["minmax", "entropy", "percentile"]

WEIGHT_TYPES = ("s8", "u8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Per-channel QDQ writes DequantizeLinear with an ``axis`` attribute, added in opset 13.
PER_CHANNEL_MIN_OPSET = 13
# Dynamic quantization relies on DynamicQuantizeLinear (opset 11).
DYNAMIC_MIN_OPSET = 11


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    if name == "s8":
        return QuantType.QInt8
    if name == "u8":
        return QuantType.QUInt8
    raise UnknownMethodError(f"unknown int8 type {name!r}; choose one of {list(WEIGHT_TYPES)}")


def _check_opset(model: onnx.ModelProto, needed: int, what: str) -> None:
    opset = default_opset(model)
    if opset < needed:
        raise UnsupportedModelError(
            f"{what} needs opset >= {needed}, the model has opset {opset}; "
            "prepare it with prepare_model(min_opset=...) first"
        )


class _RootToDebug(logging.Filter):
    """Moves what the quantizer logs on the *root* logger (advice to pre-process, per-weight
    axis warnings, on every call) to this module's debug log, so applications that log at
    INFO are not flooded by a library they did not call directly."""

    def filter(self, record: logging.LogRecord) -> bool:
        log.debug("onnxruntime quantizer: %s", record.getMessage())
        return False


def _run_quantizer(run: Any, model: onnx.ModelProto, what: str) -> onnx.ModelProto:
    """Run an onnxruntime quantizer that writes to a path, and load what it wrote."""
    source = onnx.ModelProto()
    source.CopyFrom(model)  # the quantizer edits its input in place
    to_debug = _RootToDebug()
    root = logging.getLogger()
    root.addFilter(to_debug)
    # The calibrators print progress to stdout, which belongs to the CLI's table.
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            return _quantize_to_temp(run, source, what)
    finally:
        root.removeFilter(to_debug)
        if printed.getvalue().strip():
            log.debug("onnxruntime quantizer printed: %s", printed.getvalue().strip())


def _quantize_to_temp(run: Any, source: onnx.ModelProto, what: str) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory(prefix="edgefleet-quant-") as tmp:
        target = Path(tmp) / "quantized.onnx"
        try:
            run(source, target)
        except CompressError:
            raise
        except Exception as exc:
            raise UnsupportedModelError(
                f"{what} failed on this model: {type(exc).__name__}: {exc}"
            ) from exc
        return onnx.load(str(target))


def quantize_dynamic_int8(
    model: onnx.ModelProto,
    *,
    per_channel: bool = False,
    weight_type: WeightType = "s8",
    op_types: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] = (),
) -> onnx.ModelProto:
    """Dynamic int8: weights stored as int8, activations quantized at run time.

    Args:
        model: A prepared model (opset >= 11; Constant weights moved to initializers).
        per_channel: One scale per output channel instead of one per tensor.
        weight_type: ``"s8"`` (signed) or ``"u8"`` (unsigned) weights.
        op_types: Op types to quantize (default: every type onnxruntime supports, which
            includes Conv; pass ``["MatMul"]`` to leave convolutions in float).
        nodes_to_exclude: Node names to keep in float.

    Returns:
        The quantized model.

    Raises:
        UnsupportedModelError: The opset is too old, or the quantizer fails.
        UnknownMethodError: ``weight_type`` is not ``"s8"`` or ``"u8"``.
    """
    from onnxruntime.quantization import quantize_dynamic

    _check_opset(model, PER_CHANNEL_MIN_OPSET if per_channel else DYNAMIC_MIN_OPSET, "dynamic int8")
    qtype = _quant_type(weight_type)

    def run(source: onnx.ModelProto, target: Path) -> None:
        quantize_dynamic(
            source,
            target,
            per_channel=per_channel,
            weight_type=qtype,
            op_types_to_quantize=list(op_types) if op_types else None,
            nodes_to_exclude=list(nodes_to_exclude),
            # Only weights are worth quantizing ahead of time; a MatMul of two activations
            # (attention scores) gains nothing and loses precision.
            extra_options={"MatMulConstBOnly": True},
        )

    return _run_quantizer(run, model, "dynamic int8 quantization")


class _FeedReader:
    """onnxruntime's CalibrationDataReader protocol over an :class:`EvalSet`."""

    def __init__(self, feeds: list[Feed]) -> None:
        self._feeds = feeds
        self._iter: Iterator[Feed] = iter(feeds)

    def get_next(self) -> Feed | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._feeds)


def quantize_static_qdq(
    model: onnx.ModelProto,
    calibration: EvalSet,
    *,
    per_channel: bool = True,
    calibration_method: CalibrationMethodName = "minmax",
    activation_type: WeightType = "u8",
    weight_type: WeightType = "s8",
    op_types: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] = (),
) -> onnx.ModelProto:
    """Static int8 in QDQ format, with activation ranges from a calibration set.

    Args:
        model: A prepared model (opset >= 13 for per-channel).
        calibration: Representative inputs; their ranges set the activation scales.
        per_channel: One weight scale per output channel.
        calibration_method: ``"minmax"``, ``"entropy"`` or ``"percentile"``.
        activation_type: int8 type of activations (``"u8"`` is what CPU kernels favour).
        weight_type: int8 type of weights.
        op_types: Op types to quantize (default: all onnxruntime's QDQ quantizer supports).
        nodes_to_exclude: Node names to keep in float.

    Returns:
        The quantized model.

    Raises:
        UnsupportedModelError: The opset is too old, or the quantizer fails.
        UnknownMethodError: An unknown calibration method or int8 type.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if calibration_method not in methods:
        raise UnknownMethodError(
            f"unknown calibration method {calibration_method!r}; "
            f"choose one of {list(CALIBRATION_METHODS)}"
        )
    _check_opset(model, PER_CHANNEL_MIN_OPSET if per_channel else DYNAMIC_MIN_OPSET, "static QDQ")
    act, wt = _quant_type(activation_type), _quant_type(weight_type)
    reader = _FeedReader(calibration.feeds)

    def run(source: onnx.ModelProto, target: Path) -> None:
        quantize_static(
            source,
            target,
            reader,  # duck-typed CalibrationDataReader
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types) if op_types else None,
            per_channel=per_channel,
            activation_type=act,
            weight_type=wt,
            nodes_to_exclude=list(nodes_to_exclude),
            calibrate_method=methods[calibration_method],
        )

    return _run_quantizer(run, model, f"static QDQ quantization ({calibration_method})")
