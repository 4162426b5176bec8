"""The compression report: what was done to a model and what it cost, as data.

It travels with the model into the bundle manifest (``compression`` field), so it holds
plain numbers and strings and :meth:`CompressionReport.to_dict` is JSON-serialisable.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import Any

import onnx
import onnxruntime

from compress.agreement import finite_or_none
from compress.measurements import Evaluation
from compress.recipes import Recipe

REPORT_SCHEMA = "edgefleet.compression-report.v1"
# Latency medians of two equal models still differ by a few percent from run to run;
# below this ratio the summary does not call the compressed model slower.
SLOWER_WARNING_RATIO = 1.05


def tool_versions() -> dict[str, str]:
    """Versions of the libraries that produced (and measured) a compressed model."""
    return {
        "onnx": str(onnx.__version__),
        "onnxruntime": str(onnxruntime.__version__),
        "python": platform.python_version(),
    }


@dataclass(frozen=True)
class CompressionReport:
    """The outcome of compressing one model.

    Attributes:
        method: The method or recipe name (``fp16``, ``int8-dynamic``, ...).
        recipe: The recipe applied.
        evaluation: Sizes, agreement and latency against the original.
        source_path: Path of the original model.
        output_path: Path the compressed model was written to.
        notes: What preparation and the passes changed, one line each.
        versions: onnx/onnxruntime/python versions.
    """

    method: str
    recipe: Recipe
    evaluation: Evaluation
    source_path: str
    output_path: str
    notes: tuple[str, ...] = ()
    versions: dict[str, str] = field(default_factory=tool_versions)

    @property
    def size_ratio(self) -> float:
        """Raw size ratio, compressed / original."""
        return self.evaluation.sizes.ratio

    @property
    def latency_ratio(self) -> float | None:
        """Worst latency ratio over the thread counts timed, or None when not timed."""
        return self.evaluation.latency_ratio

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form.

        Headline numbers sit at the top level (``size_ratio``, ``latency_ratio``,
        ``cosine_similarity``, ``max_abs_diff``, ``top1_agreement``, accuracy); the full
        measurements are under ``sizes``, ``agreement`` and ``latency``.
        """
        ev = self.evaluation
        agreement = ev.agreement
        return {
            "schema": REPORT_SCHEMA,
            "method": self.method,
            "recipe": self.recipe.to_dict(),
            "source_path": self.source_path,
            "output_path": self.output_path,
            "original_bytes": ev.sizes.original_bytes,
            "compressed_bytes": ev.sizes.candidate_bytes,
            "size_ratio": ev.sizes.ratio,
            "zstd_ratio": ev.sizes.zstd_ratio,
            "latency_ratio": ev.latency_ratio,
            "cosine_similarity": finite_or_none(agreement.cosine_similarity),
            "max_abs_diff": finite_or_none(agreement.max_abs_diff),
            "top1_agreement": agreement.top1_agreement,
            "accuracy_original": agreement.accuracy_original,
            "accuracy_compressed": agreement.accuracy_candidate,
            "accuracy_drop": agreement.accuracy_drop,
            "sizes": ev.sizes.to_dict(),
            "agreement": agreement.to_dict(),
            "latency": [r.to_dict() for r in ev.latency],
            "samples": ev.samples,
            "inputs_source": ev.inputs_source,
            "notes": list(self.notes),
            "versions": dict(self.versions),
        }

    def summary(self) -> str:
        """A few lines for a human at a terminal."""
        ev = self.evaluation
        sizes, agreement = ev.sizes, ev.agreement
        lines = [
            f"{self.method}: {self.source_path} -> {self.output_path}",
            f"  size     {sizes.original_bytes:,} B -> {sizes.candidate_bytes:,} B "
            f"({sizes.ratio:.3f}x; zstd {sizes.zstd_ratio:.3f}x)",
        ]
        for result in ev.latency:
            lines.append(
                f"  latency  {result.threads} thread(s): {result.original_ms:.3f} ms -> "
                f"{result.candidate_ms:.3f} ms ({result.ratio:.2f}x, median of {result.runs})"
            )
        top1 = "n/a" if agreement.top1_agreement is None else f"{agreement.top1_agreement:.3f}"
        lines.append(
            f"  agree    cosine {agreement.cosine_similarity:.5f}, max |diff| "
            f"{agreement.max_abs_diff:.3g}, top-1 {top1} on {ev.samples} sample(s) "
            f"from {ev.inputs_source}"
        )
        if agreement.accuracy_original is not None and agreement.accuracy_candidate is not None:
            lines.append(
                f"  accuracy {agreement.accuracy_original:.3f} -> "
                f"{agreement.accuracy_candidate:.3f}"
            )
        ratio = ev.latency_ratio
        if ratio is not None and ratio > SLOWER_WARNING_RATIO:
            lines.append(
                f"  warning: the compressed model is slower than the original ({ratio:.2f}x)"
            )
        return "\n".join(lines)
