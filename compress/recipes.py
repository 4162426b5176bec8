"""Recipes: named sequences of compression passes, as data.

A :class:`Recipe` is what ``auto`` tries, what the report records and what a bundle
manifest can carry: plain data (``to_dict``/``from_dict``), applied by
:func:`apply_recipe`. Each pass kind declares the options it accepts and the opset it
needs, so preparation runs once, before the first pass, with the highest opset any step
asks for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx

from compress.errors import CompressError, UnknownMethodError
from compress.float16 import convert_to_fp16, fp16_converter_name
from compress.graph_edits import gemm_to_matmul
from compress.heads import resolve_keep_float
from compress.inputs import EvalSet
from compress.prepare import name_unnamed_nodes, prepare_model, quant_preprocess
from compress.pruning import magnitude_prune
from compress.quantize import (
    DYNAMIC_MIN_OPSET,
    PER_CHANNEL_MIN_OPSET,
    quantize_dynamic_int8,
    quantize_static_qdq,
)
from compress.structured_pruning import structured_prune


@dataclass(frozen=True)
class Step:
    """One pass and its options, e.g. ``Step("int8-dynamic", {"per_channel": True})``."""

    kind: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"kind": self.kind, "options": dict(self.options)}


@dataclass(frozen=True)
class Recipe:
    """A named sequence of passes.

    Attributes:
        name: Short label shown in tables (``fp16``, ``int8-dynamic-pc-s8``, ...).
        steps: Passes applied in order.
    """

    name: str
    steps: tuple[Step, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"name": self.name, "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """Inverse of :meth:`to_dict`.

        Raises:
            UnknownMethodError: A step names an unknown pass or option.
        """
        steps = tuple(Step(str(s["kind"]), dict(s.get("options", {}))) for s in data["steps"])
        for step in steps:
            validate_step(step)
        return cls(str(data["name"]), steps)


@dataclass
class PassContext:
    """What passes may need beyond the model: calibration data and float-kept names."""

    calibration: EvalSet | None = None
    keep_float: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)


PassFn = Callable[[onnx.ModelProto, Mapping[str, Any], PassContext], onnx.ModelProto]


@dataclass(frozen=True)
class PassKind:
    """A pass: its options with defaults, the opset it needs, and the function."""

    run: PassFn
    defaults: Mapping[str, Any]
    min_opset: Callable[[Mapping[str, Any]], int | None]


def _int8_dynamic(
    model: onnx.ModelProto, opts: Mapping[str, Any], ctx: PassContext
) -> onnx.ModelProto:
    op_types = opts["op_types"]
    if op_types is None or "Gemm" in op_types:
        # onnxruntime has no dynamic integer Gemm; as MatMul + Add the layer gets quantized.
        model, rewritten = gemm_to_matmul(model)
        if rewritten:
            ctx.notes.append(f"rewrote {rewritten} Gemm node(s) as MatMul + Add")
        if op_types is not None:
            op_types = sorted({*op_types, "MatMul"} - {"Gemm"})
    return quantize_dynamic_int8(
        model,
        per_channel=bool(opts["per_channel"]),
        weight_type=opts["weight_type"],
        op_types=op_types,
        nodes_to_exclude=resolve_keep_float(model, ctx.keep_float),
    )


def _int8_static(
    model: onnx.ModelProto, opts: Mapping[str, Any], ctx: PassContext
) -> onnx.ModelProto:
    if ctx.calibration is None:
        raise CompressError("static int8 needs a calibration set; none was given")
    if opts["preprocess"]:
        model, note = quant_preprocess(model)
        model, _ = name_unnamed_nodes(model)
        ctx.notes.append(note)
    return quantize_static_qdq(
        model,
        ctx.calibration,
        per_channel=bool(opts["per_channel"]),
        calibration_method=opts["calibration"],
        activation_type=opts["activation_type"],
        weight_type=opts["weight_type"],
        op_types=opts["op_types"],
        nodes_to_exclude=resolve_keep_float(model, ctx.keep_float),
    )


def _fp16(model: onnx.ModelProto, opts: Mapping[str, Any], ctx: PassContext) -> onnx.ModelProto:
    ctx.notes.append(f"fp16 converter: {fp16_converter_name()}")
    return convert_to_fp16(
        model,
        keep_io_types=bool(opts["keep_io_types"]),
        op_block_list=tuple(opts["op_block_list"]),
        node_block_list=resolve_keep_float(model, ctx.keep_float),
    )


def _magnitude(
    model: onnx.ModelProto, opts: Mapping[str, Any], ctx: PassContext
) -> onnx.ModelProto:
    result = magnitude_prune(
        model,
        float(opts["sparsity"]),
        scope=opts["scope"],
        op_types=opts["op_types"],
        nodes_to_exclude=resolve_keep_float(model, ctx.keep_float),
    )
    ctx.notes.append(result.summary())
    return result.model


def _structured(
    model: onnx.ModelProto, opts: Mapping[str, Any], ctx: PassContext
) -> onnx.ModelProto:
    result = structured_prune(
        model,
        float(opts["sparsity"]),
        nodes_to_exclude=resolve_keep_float(model, ctx.keep_float),
        channel_multiple=opts["channel_multiple"],
    )
    ctx.notes.append(result.summary())
    return result.model


PASSES: dict[str, PassKind] = {
    "int8-dynamic": PassKind(
        _int8_dynamic,
        {"per_channel": False, "weight_type": "s8", "op_types": None},
        lambda o: PER_CHANNEL_MIN_OPSET if o["per_channel"] else DYNAMIC_MIN_OPSET,
    ),
    "int8-static": PassKind(
        _int8_static,
        {
            "per_channel": True,
            "calibration": "minmax",
            "activation_type": "u8",
            "weight_type": "s8",
            "op_types": None,
            "preprocess": True,
        },
        lambda o: PER_CHANNEL_MIN_OPSET if o["per_channel"] else DYNAMIC_MIN_OPSET,
    ),
    "fp16": PassKind(_fp16, {"keep_io_types": True, "op_block_list": ()}, lambda o: None),
    "prune-magnitude": PassKind(
        _magnitude, {"sparsity": 0.5, "scope": "global", "op_types": None}, lambda o: None
    ),
    "prune-structured": PassKind(
        _structured, {"sparsity": 0.25, "channel_multiple": None}, lambda o: None
    ),
}

# Methods accepted by ``compress_model`` and ``edgefleet compress --method``.
METHODS: dict[str, Step] = {
    "int8-dynamic": Step("int8-dynamic"),
    "int8-dynamic-per-channel": Step("int8-dynamic", {"per_channel": True}),
    "int8-static": Step("int8-static"),
    "fp16": Step("fp16"),
    "prune-magnitude": Step("prune-magnitude"),
    "prune-structured": Step("prune-structured"),
}


def validate_step(step: Step) -> dict[str, Any]:
    """The step's options merged over its pass's defaults.

    Raises:
        UnknownMethodError: Unknown pass kind or option name.
        CompressError: A sparsity outside [0, 1).
    """
    kind = PASSES.get(step.kind)
    if kind is None:
        raise UnknownMethodError(
            f"unknown compression pass {step.kind!r}; choose one of {sorted(PASSES)}"
        )
    unknown = sorted(set(step.options) - set(kind.defaults))
    if unknown:
        raise UnknownMethodError(
            f"pass {step.kind!r} has no option(s) {unknown}; it accepts {sorted(kind.defaults)}"
        )
    merged = {**kind.defaults, **step.options}
    sparsity = merged.get("sparsity")
    if sparsity is not None and (
        isinstance(sparsity, bool)
        or not isinstance(sparsity, (int, float))
        or not 0.0 <= sparsity < 1.0
    ):
        raise CompressError(
            f"option 'sparsity' of pass {step.kind!r} must be in [0, 1), got {sparsity!r}"
        )
    return merged


def recipe_for_method(method: str, **options: Any) -> Recipe:
    """The one-step recipe for a method name, with ``options`` overriding its defaults.

    Raises:
        UnknownMethodError: Unknown method, or an option the method does not take.
    """
    base = METHODS.get(method)
    if base is None:
        raise UnknownMethodError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    step = Step(base.kind, {**base.options, **{k: v for k, v in options.items() if v is not None}})
    validate_step(step)
    return Recipe(method, (step,))


@dataclass
class AppliedRecipe:
    """The result of :func:`apply_recipe`: the compressed model and notes on each change."""

    model: onnx.ModelProto
    notes: list[str]


def apply_recipe(
    model: onnx.ModelProto,
    recipe: Recipe,
    *,
    calibration: EvalSet | None = None,
    keep_float: Sequence[str] = (),
) -> AppliedRecipe:
    """Prepare the model once, then apply the recipe's passes in order.

    Args:
        model: The original model; not modified.
        recipe: The passes to apply.
        calibration: Inputs for passes that calibrate (static int8).
        keep_float: Node names or graph output names whose heads stay in float.

    Returns:
        The compressed model and notes.

    Raises:
        CompressError: A pass refuses the model or its options.
    """
    merged = [(step, validate_step(step)) for step in recipe.steps]
    opsets = [PASSES[step.kind].min_opset(opts) for step, opts in merged]
    needed = max((o for o in opsets if o is not None), default=None)
    prepared = prepare_model(model, min_opset=needed)
    ctx = PassContext(calibration, tuple(keep_float), list(prepared.notes))
    ctx.notes.append(f"shape inference: {prepared.shape_inference}")
    current = prepared.model
    for step, opts in merged:
        current = PASSES[step.kind].run(current, opts, ctx)
    return AppliedRecipe(current, ctx.notes)
