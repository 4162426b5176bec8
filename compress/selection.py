"""Choosing among measured candidates: Pareto front, constraint gate, objective.

Pure: takes measured :class:`Candidate` rows and returns decisions and text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from compress.agreement import finite_or_none
from compress.constraints import (
    Constraints,
    Objective,
    Violation,
    agreement_value,
    check,
)
from compress.errors import ConstraintsNotMetError
from compress.measurements import Evaluation
from compress.recipes import Recipe


@dataclass
class Candidate:
    """One recipe ``auto`` tried.

    Attributes:
        recipe: The recipe.
        evaluation: Its measurements, or None when the recipe failed to apply.
        error: Why the recipe failed, or None.
        violations: Constraints it broke.
        pareto: True when no other candidate is at least as good on size, latency and
            agreement and better on one.
        search: For pruning, the sparsities tried and whether each passed the gate.
    """

    recipe: Recipe
    evaluation: Evaluation | None = None
    error: str | None = None
    violations: list[Violation] = field(default_factory=list)
    pareto: bool = False
    search: list[dict[str, Any]] = field(default_factory=list)

    @property
    def meets_constraints(self) -> bool:
        """Measured, and broke no constraint."""
        return self.evaluation is not None and not self.violations

    def objectives(self) -> tuple[float, float, float]:
        """(size ratio, latency ratio, -agreement): lower is better on each."""
        assert self.evaluation is not None
        latency = self.evaluation.latency_ratio
        return (
            self.evaluation.sizes.ratio,
            latency if latency is not None else 1.0,
            -agreement_value(self.evaluation)[1],
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable row of the table."""
        row: dict[str, Any] = {
            "recipe": self.recipe.to_dict(),
            "name": self.recipe.name,
            "meets_constraints": self.meets_constraints,
            "pareto": self.pareto,
            "violations": [v.to_dict() for v in self.violations],
            "error": self.error,
        }
        if self.evaluation is not None:
            ev = self.evaluation
            row.update(
                size_ratio=ev.sizes.ratio,
                zstd_ratio=ev.sizes.zstd_ratio,
                latency_ratio=ev.latency_ratio,
                latency={str(r.threads): r.ratio for r in ev.latency},
                cosine_similarity=finite_or_none(ev.agreement.cosine_similarity),
                max_abs_diff=finite_or_none(ev.agreement.max_abs_diff),
                top1_agreement=ev.agreement.top1_agreement,
                accuracy_drop=ev.agreement.accuracy_drop,
                evaluation=ev.to_dict(),
            )
        if self.search:
            row["search"] = list(self.search)
        return row


def gate(candidates: Sequence[Candidate], constraints: Constraints) -> None:
    """Record each measured candidate's violations, in place."""
    for candidate in candidates:
        if candidate.evaluation is not None:
            candidate.violations = check(candidate.evaluation, constraints)


def mark_pareto(candidates: Sequence[Candidate]) -> None:
    """Set ``pareto`` on every measured candidate no other one dominates, in place."""
    measured = [c for c in candidates if c.evaluation is not None]
    points = [c.objectives() for c in measured]
    for candidate, point in zip(measured, points, strict=True):
        candidate.pareto = not any(
            all(o <= p for o, p in zip(other, point, strict=True)) and other != point
            for other in points
        )


def _rank_key(candidate: Candidate, objective: Objective) -> tuple[float, ...]:
    assert candidate.evaluation is not None
    ev = candidate.evaluation
    size, latency, neg_agreement = candidate.objectives()
    if objective == "latency":
        return (latency, size, neg_agreement)
    if objective == "download":
        return (ev.sizes.zstd_ratio, size, latency, neg_agreement)
    if objective == "balanced":
        # *Measured* on a 6.8 MB CNN: dynamic int8 (0.268x size) ran 9x slower than the
        # original, static QDQ (0.280x) 1.4x; size x latency keeps the former from winning
        # on 4% of bytes.
        return (size * latency, size, neg_agreement)
    # Equal raw sizes (fp16 with or without pruning) are told apart by the download size.
    return (size, ev.sizes.zstd_ratio, latency, neg_agreement)


def choose(candidates: Sequence[Candidate], objective: Objective) -> Candidate | None:
    """The best candidate that meets every constraint, or None."""
    passing = [c for c in candidates if c.meets_constraints]
    if not passing:
        return None
    return min(passing, key=lambda c: _rank_key(c, objective))


def not_met_error(
    candidates: Sequence[Candidate], constraints: Constraints
) -> ConstraintsNotMetError:
    """The error saying which constraint nothing met (or that none met them together)."""
    measured = [c for c in candidates if c.evaluation is not None]
    table = [c.to_dict() for c in candidates]
    if not measured:
        errors = "; ".join(f"{c.recipe.name}: {c.error}" for c in candidates)
        return ConstraintsNotMetError(
            f"no candidate recipe could be applied to this model ({errors})",
            table=table,
            table_text=format_table(candidates),
        )
    failed: dict[str, int] = {}
    for candidate in measured:
        for violation in candidate.violations:
            failed[violation.constraint] = failed.get(violation.constraint, 0) + 1
    limits = constraints.to_dict()
    unmet = [name for name, count in failed.items() if count == len(measured)]
    if unmet:
        parts = []
        for name in unmet:
            best = _best_violation(measured, name)
            parts.append(
                f"{name} = {limits[name]:g} (closest: {best[1]} by {best[0]})"
                if best
                else f"{name} = {limits[name]:g}"
            )
        message = f"no candidate met {'; '.join(parts)} [{len(measured)} candidates measured]"
    else:
        closest = sorted(measured, key=lambda c: (len(c.violations), _total_gap(c)))[:3]
        described = "; ".join(
            f"{c.recipe.name} broke {', '.join(str(v) for v in c.violations)}" for c in closest
        )
        message = (
            f"each constraint was met by some candidate, but none met all at once: {described}"
        )
    return ConstraintsNotMetError(
        message, failed=failed, table=table, table_text=format_table(candidates)
    )


def _total_gap(candidate: Candidate) -> float:
    """How far, relative to each limit, a candidate is from meeting its constraints."""
    return sum(
        abs(v.value - v.limit) / max(abs(v.limit), 1e-9) if v.value is not None else 1.0
        for v in candidate.violations
    )


def _best_violation(measured: Sequence[Candidate], name: str) -> tuple[str, str] | None:
    """The candidate that came closest to constraint ``name``, and its violation text."""
    rows = [(c, v) for c in measured for v in c.violations if v.constraint == name]
    scored = [(c, v) for c, v in rows if v.value is not None]
    if not scored:
        return None

    def gap(item: tuple[Candidate, Violation]) -> float:
        violation = item[1]
        assert violation.value is not None
        return abs(violation.value - violation.limit)

    candidate, violation = min(scored, key=gap)
    return candidate.recipe.name, str(violation)


def format_table(candidates: Sequence[Candidate], chosen: Candidate | None = None) -> str:
    """The candidate table as aligned text, chosen row marked ``*`` and Pareto rows ``P``."""
    header = ("", "recipe", "size", "zstd", "latency", "cosine", "top1", "acc drop", "verdict")
    rows: list[tuple[str, ...]] = [header]
    for c in candidates:
        mark = ("*" if c is chosen else " ") + ("P" if c.pareto else " ")
        if c.evaluation is None:
            rows.append((mark, c.recipe.name, "-", "-", "-", "-", "-", "-", f"error: {c.error}"))
            continue
        ev = c.evaluation
        latency = " ".join(f"{r.ratio:.2f}@{r.threads}t" for r in ev.latency) or "-"
        top1 = ev.agreement.top1_agreement
        drop = ev.agreement.accuracy_drop
        verdict = "ok" if not c.violations else "; ".join(str(v) for v in c.violations)
        rows.append(
            (
                mark,
                c.recipe.name,
                f"{ev.sizes.ratio:.3f}",
                f"{ev.sizes.zstd_ratio:.3f}",
                latency,
                f"{ev.agreement.cosine_similarity:.5f}",
                "-" if top1 is None else f"{top1:.3f}",
                "-" if drop is None else f"{drop:+.3f}",
                verdict,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(r[:-1], widths, strict=True))
        + "  "
        + r[-1]
        for r in rows
    ]
    return "\n".join(line.rstrip() for line in lines)
