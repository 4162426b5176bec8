"""Choosing among measured candidates: pure decisions on made-up measurements."""

from __future__ import annotations

import pytest

from compress import Constraints, InputsError, Recipe, Step
from compress.agreement import Agreement, OutputAgreement
from compress.measurements import Evaluation, LatencyResult, SizeMetrics
from compress.selection import Candidate, choose, format_table, gate, mark_pareto, not_met_error


def candidate(
    name: str, size: float, latency: float, top1: float, accuracy_drop: float | None = None
) -> Candidate:
    agreement = Agreement(
        outputs=(OutputAgreement("y", 0.999, 0.99, 0.1, top1),),
        cosine_similarity=0.999,
        max_abs_diff=0.1,
        top1_agreement=top1,
        accuracy_original=None if accuracy_drop is None else 0.9,
        accuracy_candidate=None if accuracy_drop is None else 0.9 - accuracy_drop,
    )
    evaluation = Evaluation(
        sizes=SizeMetrics(1000, int(size * 1000), 900, int(size * 800)),
        agreement=agreement,
        latency=(LatencyResult(1, 10, 1.0, latency, latency),),
        samples=100,
        inputs_source="test",
    )
    return Candidate(Recipe(name, (Step("fp16"),)), evaluation)


def test_balanced_objective_does_not_trade_9x_latency_for_4_percent_size() -> None:
    rows = [candidate("int8-dyn-all", 0.268, 9.5, 1.0), candidate("qdq", 0.280, 1.35, 1.0)]
    limits = Constraints(max_size_ratio=0.3, max_latency_ratio=None)
    gate(rows, limits)
    assert choose(rows, "balanced") is rows[1]
    assert choose(rows, "size") is rows[0]  # when size is all that counts


def test_default_constraints_refuse_slower_and_disagreeing_candidates() -> None:
    rows = [
        candidate("slow", 0.3, 1.4, 1.0),
        candidate("wrong", 0.3, 0.9, 0.95),
        candidate("ok", 0.5, 1.0, 1.0),
    ]
    gate(rows, Constraints())
    assert [str(v) for v in rows[0].violations] == ["latency_ratio 1.4 > 1.05"]
    assert [str(v) for v in rows[1].violations] == ["top1_agreement 0.95 < 0.99"]
    assert choose(rows, "balanced") is rows[2]


def test_nothing_met_names_the_constraint_and_the_closest_candidate() -> None:
    rows = [candidate("fp16", 0.5, 1.0, 1.0), candidate("qdq", 0.28, 1.3, 1.0)]
    limits = Constraints(max_size_ratio=0.2, max_latency_ratio=None)
    gate(rows, limits)
    error = not_met_error(rows, limits)
    assert str(error).startswith("no candidate met max_size_ratio = 0.2")
    assert "closest: size_ratio 0.28 > 0.2 by qdq" in str(error)


def test_nothing_met_together_lists_the_nearest_misses_first() -> None:
    rows = [
        candidate("int8-dyn", 0.998, 1.0, 1.0),
        candidate("pruned+fp16", 0.304, 0.95, 1.0),
        candidate("qdq", 0.28, 1.35, 1.0),
    ]
    limits = Constraints(max_size_ratio=0.3)
    gate(rows, limits)
    message = str(not_met_error(rows, limits))
    assert "none met all at once" in message
    assert message.index("pruned+fp16") < message.index("qdq") < message.index("int8-dyn")


def test_accuracy_drop_needs_labels() -> None:
    with pytest.raises(InputsError, match="needs task labels"):
        gate([candidate("x", 0.5, 1.0, 1.0)], Constraints(max_accuracy_drop=0.01))
    rows = [candidate("x", 0.5, 1.0, 1.0, accuracy_drop=0.02)]
    gate(rows, Constraints(max_accuracy_drop=0.01))
    assert [v.constraint for v in rows[0].violations] == ["max_accuracy_drop"]


def test_pareto_front_and_table() -> None:
    rows = [
        candidate("a", 0.5, 1.0, 1.0),
        candidate("b", 0.6, 1.1, 1.0),  # worse than a on everything
        candidate("c", 0.3, 1.5, 1.0),
        Candidate(Recipe("broken", (Step("fp16"),)), error="no prunable layer"),
    ]
    mark_pareto(rows)
    assert [r.pareto for r in rows] == [True, False, True, False]
    text = format_table(rows, rows[0])
    assert text.splitlines()[1].startswith("*P  a")
    assert "error: no prunable layer" in text
