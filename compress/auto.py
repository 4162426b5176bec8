"""``auto``: try candidate recipes, measure each against the original, pick one.

The right recipe depends on the model and the device (*measured*: static int8 keeps a
CNN's top-1 but runs slower, dynamic int8 speeds a transformer up but slows Conv down), so
nothing here guesses: every candidate is applied, evaluated on the same inputs, gated on
the constraints, and the best one by the profile's objective wins. Pruning sparsity is
searched: the highest sparsity on a grid that still passes the quality gate, refined by one
bisection step (agreement falls as sparsity rises, so the first failure ends the climb).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from compress.compression import load_eval_set
from compress.constraints import (
    DEFAULT_PROFILE,
    Constraints,
    TargetProfile,
    agreement_value,
    check,
    get_profile,
)
from compress.errors import CompressError
from compress.evaluate import DEFAULT_RUNS, Reference, evaluate_candidate
from compress.inputs import EvalSet
from compress.measurements import Evaluation
from compress.model_file import load_model, model_to_bytes, write_bytes_atomic
from compress.recipes import Recipe, Step, apply_recipe
from compress.report import CompressionReport
from compress.selection import Candidate, choose, format_table, gate, mark_pareto, not_met_error

PathLike = str | os.PathLike[str]
Progress = Callable[[str], None]

DEFAULT_AUTO_SAMPLES = 64
SPARSITY_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PRUNE_KINDS = ("prune-magnitude", "prune-structured")
AUTO_SCHEMA = "edgefleet.compression-auto.v1"
_MATMUL_OPS = ["MatMul", "Gemm"]


def _recipe(name: str, *steps: Step) -> Recipe:
    return Recipe(name, tuple(steps))


def default_candidates(model: onnx.ModelProto, *, has_calibration: bool) -> list[Recipe]:
    """The fixed (non-searched) recipes worth trying on ``model``.

    fp16 always; dynamic int8 on MatMul/Gemm (per-tensor s8 and u8, per-channel s8) when
    the model has them, and on every op including Conv when it has convolutions; static
    QDQ per-channel with each calibration method when a calibration set is given.
    """
    ops = {node.op_type for node in model.graph.node}
    recipes = [_recipe("fp16", Step("fp16"))]
    if ops & set(_MATMUL_OPS):
        recipes += [
            _recipe("int8-dyn", Step("int8-dynamic", {"op_types": _MATMUL_OPS})),
            _recipe(
                "int8-dyn-u8", Step("int8-dynamic", {"op_types": _MATMUL_OPS, "weight_type": "u8"})
            ),
            _recipe(
                "int8-dyn-pc", Step("int8-dynamic", {"op_types": _MATMUL_OPS, "per_channel": True})
            ),
        ]
    if "Conv" in ops:
        recipes.append(_recipe("int8-dyn-all", Step("int8-dynamic")))
    if has_calibration and ops & {"Conv", "MatMul", "Gemm"}:
        recipes += [
            _recipe(f"int8-qdq-pc-{method}", Step("int8-static", {"calibration": method}))
            for method in ("minmax", "entropy", "percentile")
        ]
    return recipes


def _prune_recipe(kind: str, sparsity: float, *extra: Step) -> Recipe:
    suffix = "".join(f"+{s.kind}" for s in extra)
    name = f"{kind}-{round(sparsity * 100)}{suffix}"
    return Recipe(name, (Step(kind, {"sparsity": sparsity}), *extra))


@dataclass
class AutoResult:
    """What ``auto`` measured and chose.

    Attributes:
        chosen: The winning candidate.
        candidates: Every candidate tried, in the order tried.
        constraints: The constraints applied.
        profile: The target profile.
        report: The compression report of the chosen model.
    """

    chosen: Candidate
    candidates: list[Candidate]
    constraints: Constraints
    profile: TargetProfile
    report: CompressionReport

    def table(self) -> str:
        """The candidate table as text."""
        return format_table(self.candidates, self.chosen)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: the chosen recipe, the full table, and the report."""
        return {
            "schema": AUTO_SCHEMA,
            "chosen": self.chosen.recipe.to_dict(),
            "constraints": self.constraints.to_dict(),
            "profile": self.profile.to_dict(),
            "table": [c.to_dict() for c in self.candidates],
            "report": self.report.to_dict(),
        }


class _Runner:
    """Applies recipes to one model and measures them against one reference."""

    def __init__(
        self,
        model: onnx.ModelProto,
        reference: Reference,
        calibration: EvalSet | None,
        keep_float: Sequence[str],
        threads: Sequence[int],
        runs: int,
        progress: Progress,
    ) -> None:
        self.model = model
        self.reference = reference
        self.calibration = calibration
        self.keep_float = tuple(keep_float)
        self.threads = tuple(threads)
        self.runs = runs
        self.progress = progress
        self.outputs: dict[str, tuple[bytes, list[str]]] = {}

    def measure(self, recipe: Recipe, *, timed: bool = True) -> Candidate:
        try:
            applied = apply_recipe(
                self.model, recipe, calibration=self.calibration, keep_float=self.keep_float
            )
            candidate_bytes = model_to_bytes(applied.model)
            evaluation = evaluate_candidate(
                self.reference,
                candidate_bytes,
                runs=self.runs if timed else 0,
                threads=self.threads,
            )
        except CompressError as exc:
            self.progress(f"  {recipe.name}: failed: {exc}")
            return Candidate(recipe, error=str(exc))
        if timed:  # only fully measured candidates can be chosen; keep their bytes
            self.outputs[recipe.name] = (candidate_bytes, applied.notes)
        self.progress(f"  {recipe.name}: {_brief(evaluation)}")
        return Candidate(recipe, evaluation)

    def search(
        self, kind: str, quality: Constraints, grid: Sequence[float]
    ) -> tuple[Candidate, float | None]:
        """The highest sparsity of ``kind`` that passes ``quality``, fully measured."""
        trail: list[dict[str, Any]] = []
        best: float | None = None
        failed_at: float | None = None

        def attempt(sparsity: float) -> bool:
            candidate = self.measure(_prune_recipe(kind, sparsity), timed=False)
            if candidate.evaluation is None:
                trail.append({"sparsity": sparsity, "passed": False, "error": candidate.error})
                raise _SearchAborted(candidate)
            passed = not check(candidate.evaluation, quality)
            metric, value = agreement_value(candidate.evaluation)
            trail.append({"sparsity": sparsity, "passed": passed, metric: value})
            return passed

        try:
            for sparsity in grid:
                if not attempt(sparsity):
                    failed_at = sparsity
                    break
                best = sparsity
            if failed_at is not None:
                low = best if best is not None else 0.0
                middle = round((low + failed_at) / 2, 3)
                if low < middle < failed_at and attempt(middle):
                    best = middle
        except _SearchAborted as aborted:
            aborted.candidate.search = trail
            return aborted.candidate, None
        final_sparsity = best if best is not None else grid[0]
        final = self.measure(_prune_recipe(kind, final_sparsity))
        final.search = trail
        return final, best


class _SearchAborted(Exception):
    def __init__(self, candidate: Candidate) -> None:
        super().__init__(candidate.error)
        self.candidate = candidate


def _brief(ev: Evaluation) -> str:
    latency = ev.latency_ratio
    metric, value = agreement_value(ev)
    timing = f", latency {latency:.2f}x" if latency is not None else ""
    sizes = f"size {ev.sizes.ratio:.3f}x (zstd {ev.sizes.zstd_ratio:.3f}x)"
    return f"{sizes}{timing}, {metric} {value:.4f}"


def auto_compress(
    model_path: PathLike,
    out_path: PathLike | None = None,
    *,
    eval_inputs: PathLike | EvalSet | None = None,
    calibration_inputs: PathLike | EvalSet | None = None,
    constraints: Constraints | None = None,
    profile: str | TargetProfile = DEFAULT_PROFILE,
    recipes: Sequence[Recipe] | None = None,
    search_pruning: bool = True,
    sparsity_grid: Sequence[float] = SPARSITY_GRID,
    runs: int = DEFAULT_RUNS,
    keep_float: Sequence[str] = (),
    samples: int = DEFAULT_AUTO_SAMPLES,
    seed: int = 0,
    progress: Progress | None = None,
) -> AutoResult:
    """Try candidate recipes, and write and report the best one that meets every constraint.

    Args:
        model_path: The original ``.onnx`` model.
        out_path: Where to write the chosen model (None: do not write).
        eval_inputs: Evaluation inputs (``.npz`` path with optional ``labels``, or an
            :class:`EvalSet`); None generates ``samples`` inputs from the model's spec.
        calibration_inputs: Calibration inputs for static int8; without them static int8
            is not tried.
        constraints: Limits to meet (default: not slower, top-1 agreement >= 0.99).
        profile: Target profile name or object (thread counts and objective).
        recipes: Fixed recipes to try instead of :func:`default_candidates`.
        search_pruning: Also search the highest passing sparsity for magnitude and
            structured pruning, and try each with fp16 on top.
        sparsity_grid: Sparsities the pruning search climbs, ascending.
        runs: Timed runs per model and thread count.
        keep_float: Node names or graph outputs whose heads stay in float.
        samples: Generated inputs when ``eval_inputs`` is None.
        seed: Seed for generated inputs.
        progress: Called with one line per candidate measured.

    Returns:
        The chosen candidate, the full table, and the report of the chosen model.

    Raises:
        ConstraintsNotMetError: No candidate met every constraint; the error names the
            constraint nothing met and carries the table.
        CompressError: The model or the inputs cannot be used.
    """
    say = progress or (lambda line: None)
    limits = constraints or Constraints()
    target = profile if isinstance(profile, TargetProfile) else get_profile(profile)
    if list(sparsity_grid) != sorted(sparsity_grid) or not sparsity_grid:
        raise CompressError(f"sparsity grid must be non-empty and ascending, got {sparsity_grid}")
    source = Path(model_path)
    model = load_model(source)
    eval_set = load_eval_set(source, eval_inputs, samples=samples, seed=seed)
    calibration = (
        None
        if calibration_inputs is None
        else load_eval_set(source, calibration_inputs, samples=samples, seed=seed + 1)
    )
    reference = Reference.build(source.read_bytes(), eval_set)
    runner = _Runner(model, reference, calibration, keep_float, target.threads, runs, say)

    fixed = (
        list(recipes)
        if recipes is not None
        else default_candidates(model, has_calibration=calibration is not None)
    )
    say(f"measuring {len(fixed)} recipe(s) on {eval_set.samples} sample(s) from {eval_set.source}")
    candidates = [runner.measure(recipe) for recipe in fixed]
    if search_pruning:
        quality = limits.quality_only()
        for kind in PRUNE_KINDS:
            say(f"searching {kind} sparsity")
            found, sparsity = runner.search(kind, quality, sparsity_grid)
            candidates.append(found)
            if sparsity is not None:
                candidates.append(runner.measure(_prune_recipe(kind, sparsity, Step("fp16"))))

    gate(candidates, limits)
    mark_pareto(candidates)
    chosen = choose(candidates, target.objective)
    if chosen is None:
        raise not_met_error(candidates, limits)
    assert chosen.evaluation is not None
    chosen_bytes, notes = runner.outputs[chosen.recipe.name]
    output = str(write_bytes_atomic(chosen_bytes, out_path)) if out_path is not None else ""
    report = CompressionReport(
        method=chosen.recipe.name,
        recipe=chosen.recipe,
        evaluation=chosen.evaluation,
        source_path=str(source),
        output_path=output,
        notes=tuple(notes),
    )
    return AutoResult(chosen, candidates, limits, target, report)
