"""``compress_model``: one model, one recipe, a written output and its report."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from compress.errors import CompressError
from compress.evaluate import DEFAULT_RUNS, DEFAULT_THREADS, Reference, evaluate_candidate
from compress.inputs import (
    DEFAULT_GENERATED_SAMPLES,
    EvalSet,
    generate_inputs,
    input_specs,
    load_npz,
)
from compress.model_file import load_model, model_to_bytes, write_bytes_atomic
from compress.recipes import Recipe, apply_recipe, recipe_for_method
from compress.report import CompressionReport

PathLike = str | os.PathLike[str]


def load_eval_set(
    model_path: PathLike,
    inputs: PathLike | EvalSet | None,
    *,
    samples: int = DEFAULT_GENERATED_SAMPLES,
    seed: int = 0,
) -> EvalSet:
    """Inputs for a model: an :class:`EvalSet` as given, loaded from ``.npz``, or generated.

    Raises:
        CompressError: The model or the inputs cannot be read, or do not fit each other.
    """
    if isinstance(inputs, EvalSet):
        return inputs
    specs = input_specs(load_model(model_path))
    if inputs is None:
        return generate_inputs(specs, samples=samples, seed=seed)
    return load_npz(inputs, specs)


def compress_model(
    model_path: PathLike,
    out_path: PathLike,
    method: str | Recipe,
    *,
    eval_inputs: PathLike | EvalSet | None = None,
    calibration_inputs: PathLike | EvalSet | None = None,
    runs: int = DEFAULT_RUNS,
    threads: Sequence[int] = DEFAULT_THREADS,
    keep_float: Sequence[str] = (),
    samples: int = DEFAULT_GENERATED_SAMPLES,
    seed: int = 0,
    **options: Any,
) -> CompressionReport:
    """Compress a model with one method, write it, and measure it against the original.

    Args:
        model_path: The original ``.onnx`` model.
        out_path: Where to write the compressed model (written atomically).
        method: A method name (``"int8-dynamic"``, ``"int8-dynamic-per-channel"``,
            ``"int8-static"``, ``"fp16"``, ``"prune-magnitude"``, ``"prune-structured"``)
            or a :class:`Recipe`.
        eval_inputs: Evaluation inputs: an ``.npz`` path (optionally with ``labels``), an
            :class:`EvalSet`, or None to generate ``samples`` inputs from the model's spec.
        calibration_inputs: Calibration inputs for static int8 (default: the evaluation
            inputs, which flatters the agreement figures; pass a separate set when you can).
        runs: Timed runs per model for latency (0 skips timing).
        threads: intra-op thread counts to time at.
        keep_float: Node names or graph output names whose heads stay in float.
        samples: How many inputs to generate when ``eval_inputs`` is None.
        seed: Seed for generated inputs.
        **options: Options of the method's pass, e.g. ``per_channel=True``,
            ``weight_type="u8"``, ``sparsity=0.2``, ``calibration="entropy"``.

    Returns:
        The report; the compressed model is at ``out_path``.

    Raises:
        CompressError: Unreadable model or inputs, unknown method or option, or a pass
            that fails on this model. Nothing is written then.
    """
    recipe = method if isinstance(method, Recipe) else recipe_for_method(method, **options)
    if isinstance(method, Recipe) and options:
        raise CompressError(f"options {sorted(options)} given with a Recipe; put them in its steps")
    source = Path(model_path)
    model = load_model(source)
    original = source.read_bytes()
    eval_set = load_eval_set(source, eval_inputs, samples=samples, seed=seed)
    calibration = (
        eval_set
        if calibration_inputs is None
        else load_eval_set(source, calibration_inputs, samples=samples, seed=seed + 1)
    )
    applied = apply_recipe(model, recipe, calibration=calibration, keep_float=keep_float)
    candidate = model_to_bytes(applied.model)
    reference = Reference.build(original, eval_set)
    evaluation = evaluate_candidate(reference, candidate, runs=runs, threads=threads)
    written = write_bytes_atomic(candidate, out_path)
    return CompressionReport(
        method=recipe.name,
        recipe=recipe,
        evaluation=evaluation,
        source_path=str(source),
        output_path=str(written),
        notes=tuple(applied.notes),
    )
