"""How closely a candidate's outputs follow the original's: pure numpy, no runtime.

Per output: mean and worst per-sample cosine similarity, max absolute difference, and
top-1 agreement when the output has a class axis (``[samples, classes]`` scores, or
``[samples]`` integer class ids). With labels, task accuracy of both models on the first
output that has a class axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from compress.errors import CompressError, InputsError
from compress.inputs import Array


@dataclass(frozen=True)
class OutputAgreement:
    """Agreement on one output.

    Attributes:
        name: Output name.
        cosine_similarity: Mean over samples of the cosine similarity of the flattened
            per-sample outputs (1.0 is identical direction).
        min_cosine_similarity: The worst sample's cosine similarity.
        max_abs_diff: Largest absolute element-wise difference (inf when the candidate
            gives NaN or inf where the original does not).
        top1_agreement: Fraction of samples whose arg-max class matches, or None when the
            output has no class axis.
    """

    name: str
    cosine_similarity: float
    min_cosine_similarity: float
    max_abs_diff: float
    top1_agreement: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (non-finite numbers become None)."""
        return {
            "name": self.name,
            "cosine_similarity": finite_or_none(self.cosine_similarity),
            "min_cosine_similarity": finite_or_none(self.min_cosine_similarity),
            "max_abs_diff": finite_or_none(self.max_abs_diff),
            "top1_agreement": self.top1_agreement,
        }


@dataclass(frozen=True)
class Agreement:
    """Agreement over all outputs, plus task accuracy when labels were given.

    Attributes:
        outputs: Per-output agreement, in graph output order.
        cosine_similarity: The lowest mean cosine similarity over outputs.
        max_abs_diff: The largest max absolute difference over outputs.
        top1_agreement: The lowest top-1 agreement over outputs with a class axis, or None.
        accuracy_original: Original model's accuracy on the labels, or None.
        accuracy_candidate: Candidate's accuracy on the labels, or None.
    """

    outputs: tuple[OutputAgreement, ...]
    cosine_similarity: float
    max_abs_diff: float
    top1_agreement: float | None
    accuracy_original: float | None = None
    accuracy_candidate: float | None = None

    @property
    def accuracy_drop(self) -> float | None:
        """``accuracy_original - accuracy_candidate`` (positive is worse), or None."""
        if self.accuracy_original is None or self.accuracy_candidate is None:
            return None
        return self.accuracy_original - self.accuracy_candidate

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (non-finite numbers become None)."""
        return {
            "cosine_similarity": finite_or_none(self.cosine_similarity),
            "max_abs_diff": finite_or_none(self.max_abs_diff),
            "top1_agreement": self.top1_agreement,
            "accuracy_original": self.accuracy_original,
            "accuracy_candidate": self.accuracy_candidate,
            "accuracy_drop": self.accuracy_drop,
            "outputs": [o.to_dict() for o in self.outputs],
        }


def finite_or_none(value: float) -> float | None:
    """``value``, or None when it is NaN or infinite (JSON has no such numbers)."""
    return value if math.isfinite(value) else None


def class_predictions(output: Array) -> Array | None:
    """Predicted class per sample, or None when the output has no class axis.

    ``[samples, classes]`` floats (classes > 1) give the arg-max; ``[samples]`` integers
    are already class ids.
    """
    if output.ndim == 2 and output.shape[1] > 1:
        return np.asarray(np.argmax(output, axis=1))
    if output.ndim == 1 and output.dtype.kind in "iu":
        return output
    return None


def compare_output(name: str, original: Array, candidate: Array) -> OutputAgreement:
    """Agreement on one output; both arrays are ``[samples, ...]`` and the same shape.

    Raises:
        CompressError: The shapes differ (a pass changed what the model computes).
    """
    if original.shape != candidate.shape:
        raise CompressError(
            f"output {name!r}: candidate shape {candidate.shape} != original {original.shape}"
        )
    a = original.astype(np.float64).reshape(original.shape[0], -1)
    b = candidate.astype(np.float64).reshape(candidate.shape[0], -1)
    bad = ~np.isfinite(b) & np.isfinite(a)
    if bad.any():
        max_abs = math.inf
    else:
        diff = np.abs(a - b)
        max_abs = float(np.nanmax(diff)) if diff.size else 0.0
    cosines = _cosines(np.nan_to_num(a), np.where(bad, 0.0, np.nan_to_num(b)))
    top1 = None
    pred_a, pred_b = class_predictions(original), class_predictions(candidate)
    if pred_a is not None and pred_b is not None:
        top1 = float(np.mean(pred_a == pred_b))
    return OutputAgreement(
        name=name,
        cosine_similarity=float(np.mean(cosines)),
        min_cosine_similarity=float(np.min(cosines)),
        max_abs_diff=max_abs,
        top1_agreement=top1,
    )


def _cosines(a: Array, b: Array) -> Array:
    norm_a = np.linalg.norm(a, axis=1)
    norm_b = np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    both_zero = (norm_a == 0) & (norm_b == 0)
    denom = np.where(norm_a * norm_b == 0, 1.0, norm_a * norm_b)
    cos = np.where(norm_a * norm_b == 0, 0.0, dots / denom)
    return np.asarray(np.where(both_zero, 1.0, np.clip(cos, -1.0, 1.0)))


def compare_outputs(
    original: dict[str, Array], candidate: dict[str, Array], labels: Array | None = None
) -> Agreement:
    """Agreement over all outputs, and accuracy against ``labels`` when given.

    Args:
        original: ``{output name: [samples, ...]}`` from the original model.
        candidate: The same from the candidate; must have the same names and shapes.
        labels: Integer class ids, one per sample, or None.

    Raises:
        CompressError: Output names or shapes differ.
        InputsError: Labels were given but no output has a class axis to score them
            against, or their count differs from the samples'.
    """
    if list(original) != list(candidate):
        raise CompressError(f"candidate outputs {list(candidate)} != original {list(original)}")
    per_output = tuple(compare_output(n, original[n], candidate[n]) for n in original)
    top1s = [o.top1_agreement for o in per_output if o.top1_agreement is not None]
    acc_original = acc_candidate = None
    if labels is not None:
        scored = next((n for n in original if class_predictions(original[n]) is not None), None)
        if scored is None:
            raise InputsError(
                "labels were given but no output has a class axis "
                f"(shapes: { {n: a.shape for n, a in original.items()} })"
            )
        acc_original = _accuracy(original[scored], labels)
        acc_candidate = _accuracy(candidate[scored], labels)
    return Agreement(
        outputs=per_output,
        cosine_similarity=min(o.cosine_similarity for o in per_output),
        max_abs_diff=max(o.max_abs_diff for o in per_output),
        top1_agreement=min(top1s) if top1s else None,
        accuracy_original=acc_original,
        accuracy_candidate=acc_candidate,
    )


def _accuracy(output: Array, labels: Array) -> float:
    predictions = class_predictions(output)
    assert predictions is not None  # checked by the caller
    if predictions.shape[0] != labels.shape[0]:
        raise InputsError(f"{labels.shape[0]} labels for {predictions.shape[0]} samples")
    return float(np.mean(predictions == labels))
