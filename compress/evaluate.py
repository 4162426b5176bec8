"""Evaluate a candidate model against the original: agreement, latency, size.

:class:`Reference` holds what only depends on the original model (its bytes, its outputs
on the evaluation set, its zstd size), so ``auto`` computes it once for many candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from compress.agreement import compare_outputs
from compress.inputs import Array, EvalSet
from compress.measurements import ZSTD_LEVEL, Evaluation, LatencyResult, SizeMetrics
from compress.sessions import create_session, measure_latency, run_eval_set
from firmware_bundles.blob_encoding import zstd_compress

DEFAULT_RUNS = 50
DEFAULT_THREADS: tuple[int, ...] = (1,)


def zstd_size(data: bytes, level: int = ZSTD_LEVEL) -> int:
    """Length of ``data`` once zstd-compressed at ``level`` (as a bundle stores it)."""
    return len(zstd_compress(data, level))


@dataclass
class Reference:
    """The original model and what it gives on the evaluation set.

    Attributes:
        model: Serialised original model.
        eval_set: The evaluation inputs.
        outputs: The original's outputs on ``eval_set``, ``[samples, ...]`` per output.
        zstd_bytes: The original's zstd-compressed size.
    """

    model: bytes
    eval_set: EvalSet
    outputs: dict[str, Array]
    zstd_bytes: int

    @classmethod
    def build(cls, model: bytes, eval_set: EvalSet) -> Reference:
        """Run the original on the evaluation set once.

        Raises:
            CompressError: The original does not load, or fails on the inputs.
        """
        session = create_session(model, what="original model")
        outputs = run_eval_set(session, eval_set, what="original model")
        return cls(model, eval_set, outputs, zstd_size(model))


def evaluate_candidate(
    reference: Reference,
    candidate: bytes,
    *,
    runs: int = DEFAULT_RUNS,
    threads: Sequence[int] = DEFAULT_THREADS,
) -> Evaluation:
    """Measure a candidate against the reference.

    Args:
        reference: The original model and its outputs (see :meth:`Reference.build`).
        candidate: Serialised candidate model.
        runs: Timed runs per model and thread count (0 skips timing).
        threads: intra-op thread counts to time at.

    Returns:
        Sizes, agreement and latency.

    Raises:
        CompressError: The candidate does not load, fails on the inputs, or changes the
            outputs' names or shapes.
    """
    eval_set = reference.eval_set
    session = create_session(candidate, what="candidate model")
    outputs = run_eval_set(session, eval_set, what="candidate model")
    agreement = compare_outputs(reference.outputs, outputs, eval_set.labels)
    latency: tuple[LatencyResult, ...] = ()
    if runs > 0:
        feed = eval_set.latency_feed()
        latency = tuple(
            measure_latency(reference.model, candidate, feed, runs=runs, threads=t) for t in threads
        )
    sizes = SizeMetrics(
        original_bytes=len(reference.model),
        candidate_bytes=len(candidate),
        original_zstd_bytes=reference.zstd_bytes,
        candidate_zstd_bytes=zstd_size(candidate),
    )
    return Evaluation(sizes, agreement, latency, eval_set.samples, eval_set.source)
