"""What ``auto`` must respect: constraints on a candidate, and the target device profile.

Pure data and checks on :class:`~compress.evaluate.Evaluation` values; nothing here runs a
model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from compress.errors import CompressError, InputsError
from compress.measurements import Evaluation

Objective = Literal["balanced", "size", "latency", "download"]

# Latency medians of one model timed against itself in turns (50 runs each) came out at
# 0.99-1.00 at 1 thread and 0.957-1.038 at 2 threads (*measured*, 6.8 MB CNN, 2 cores), so
# up to this ratio a candidate counts as "not slower". Pass --max-latency-ratio to be
# stricter or to allow a slower model.
DEFAULT_MAX_LATENCY_RATIO = 1.05
# Top-1 agreement (or cosine similarity for outputs without a class axis) a candidate
# must keep with the original unless told otherwise.
DEFAULT_MIN_AGREEMENT = 0.99


@dataclass(frozen=True)
class Constraints:
    """Limits every chosen candidate must meet; None disables a limit.

    Attributes:
        max_size_ratio: Largest raw size, as a fraction of the original's.
        max_zstd_ratio: Largest zstd-compressed (download) size, as a fraction.
        max_latency_ratio: Largest latency ratio at any thread count timed. The default
            (1.05) means "not slower than the original, within timing noise".
        min_agreement: Lowest top-1 agreement with the original; for models whose outputs
            have no class axis, the lowest cosine similarity.
        min_cosine: Lowest cosine similarity with the original's outputs.
        max_accuracy_drop: Largest drop in task accuracy (needs ``labels`` in the
            evaluation set).
    """

    max_size_ratio: float | None = None
    max_zstd_ratio: float | None = None
    max_latency_ratio: float | None = DEFAULT_MAX_LATENCY_RATIO
    min_agreement: float | None = DEFAULT_MIN_AGREEMENT
    min_cosine: float | None = None
    max_accuracy_drop: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)

    def quality_only(self) -> Constraints:
        """Only the agreement/accuracy limits: the gate a pruning search climbs against."""
        return Constraints(
            max_latency_ratio=None,
            min_agreement=self.min_agreement,
            min_cosine=self.min_cosine,
            max_accuracy_drop=self.max_accuracy_drop,
        )


@dataclass(frozen=True)
class Violation:
    """One constraint a candidate broke, with the measured value (None: not measurable)."""

    constraint: str
    metric: str
    value: float | None
    limit: float
    upper: bool

    def __str__(self) -> str:
        if self.value is None:
            return f"{self.metric} not measured (needed for {self.constraint})"
        sign = ">" if self.upper else "<"
        return f"{self.metric} {self.value:.4g} {sign} {self.limit:g}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "constraint": self.constraint,
            "metric": self.metric,
            "value": self.value,
            "limit": self.limit,
        }


def agreement_value(evaluation: Evaluation) -> tuple[str, float]:
    """The agreement figure ``min_agreement`` applies to: top-1, else cosine."""
    agreement = evaluation.agreement
    if agreement.top1_agreement is not None:
        return "top1_agreement", agreement.top1_agreement
    return "cosine_similarity", agreement.cosine_similarity


def check(evaluation: Evaluation, constraints: Constraints) -> list[Violation]:
    """Every constraint ``evaluation`` breaks (empty: it meets them all).

    Raises:
        InputsError: ``max_accuracy_drop`` is set but the evaluation has no labels.
    """
    found: list[Violation] = []

    def upper(name: str, metric: str, value: float | None, limit: float | None) -> None:
        if limit is not None and (value is None or not value <= limit):
            found.append(Violation(name, metric, value, limit, upper=True))

    def lower(name: str, metric: str, value: float | None, limit: float | None) -> None:
        if limit is not None and (value is None or not value >= limit):
            found.append(Violation(name, metric, value, limit, upper=False))

    sizes = evaluation.sizes
    upper("max_size_ratio", "size_ratio", sizes.ratio, constraints.max_size_ratio)
    upper("max_zstd_ratio", "zstd_ratio", sizes.zstd_ratio, constraints.max_zstd_ratio)
    if evaluation.latency:
        upper(
            "max_latency_ratio",
            "latency_ratio",
            evaluation.latency_ratio,
            constraints.max_latency_ratio,
        )
    metric, value = agreement_value(evaluation)
    lower("min_agreement", metric, value, constraints.min_agreement)
    lower(
        "min_cosine",
        "cosine_similarity",
        evaluation.agreement.cosine_similarity,
        constraints.min_cosine,
    )
    if constraints.max_accuracy_drop is not None:
        drop = evaluation.agreement.accuracy_drop
        if drop is None:
            raise InputsError(
                "max_accuracy_drop needs task labels: add a 'labels' array to the evaluation .npz"
            )
        upper("max_accuracy_drop", "accuracy_drop", drop, constraints.max_accuracy_drop)
    return found


@dataclass(frozen=True)
class TargetProfile:
    """The device class ``auto`` chooses for.

    Attributes:
        name: Profile name.
        threads: intra-op thread counts the device runs at (latency is timed at each, and
            the worst ratio is the one constrained).
        objective: What "best" means among candidates that meet every constraint:
            ``"balanced"`` (lowest size ratio x latency ratio: what the model costs to
            store and to run), ``"size"`` (smallest raw model), ``"latency"`` (fastest)
            or ``"download"`` (smallest zstd-compressed model).
        description: One line for help texts.
    """

    name: str
    threads: tuple[int, ...]
    objective: Objective
    description: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "name": self.name,
            "threads": list(self.threads),
            "objective": self.objective,
            "description": self.description,
        }


PROFILES: dict[str, TargetProfile] = {
    p.name: p
    for p in (
        TargetProfile("cpu", (1, 2), "balanced", "small CPU, 1-2 threads; lowest size x latency"),
        TargetProfile("cpu-1t", (1,), "balanced", "single-core CPU; lowest size x latency"),
        TargetProfile("smallest", (1, 2), "size", "smallest model (1-2 threads timed)"),
        TargetProfile("fastest", (1, 2), "latency", "fastest model at 1 and 2 threads"),
        TargetProfile("download", (1, 2), "download", "smallest zstd-compressed download"),
    )
}

DEFAULT_PROFILE = "cpu"


def get_profile(name: str) -> TargetProfile:
    """The named profile.

    Raises:
        CompressError: Unknown profile name.
    """
    try:
        return PROFILES[name]
    except KeyError:
        raise CompressError(
            f"unknown target profile {name!r}; choose one of {sorted(PROFILES)}"
        ) from None
