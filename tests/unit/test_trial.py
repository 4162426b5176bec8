from __future__ import annotations

import pytest

from agent.trial import TrialCounts, TrialPolicy, judge_trial
from firmware_bundles.errors import WireError
from firmware_bundles.latency_histogram import bucket_of

POLICY = TrialPolicy(
    min_inferences=20,
    min_seconds=10,
    max_seconds=60,
    max_error_rate=0.1,
    max_p95_ms=50.0,
    min_samples=10,
    max_boot_attempts=2,
)


def counts(n: int = 0, errors: int = 0, latency: float = 1.0, boots: int = 1) -> TrialCounts:
    ok = n - errors
    return TrialCounts(
        started_at=100.0,
        inferences=n,
        errors=errors,
        latency_histogram={bucket_of(latency): ok} if ok else {},
        boot_attempts=boots,
    )


def test_commits_after_enough_clean_traffic_and_time() -> None:
    assert judge_trial(POLICY, counts(25), now=105).action == "continue"  # too early
    assert judge_trial(POLICY, counts(5), now=115).action == "continue"  # too few
    assert judge_trial(POLICY, counts(25), now=111).action == "commit"


def test_idle_device_commits_at_max_seconds() -> None:
    assert judge_trial(POLICY, counts(0), now=159).action == "continue"
    assert judge_trial(POLICY, counts(0), now=160).action == "commit"


def test_error_rate_rolls_back_once_there_are_enough_samples() -> None:
    assert judge_trial(POLICY, counts(5, errors=3), now=101).action == "continue"
    verdict = judge_trial(POLICY, counts(20, errors=3), now=101)
    assert (verdict.action, verdict.code) == ("rollback", "trial_errors")
    assert "3 of 20" in verdict.reason


def test_latency_over_budget_rolls_back() -> None:
    verdict = judge_trial(POLICY, counts(30, latency=80.0), now=120)
    assert (verdict.action, verdict.code) == ("rollback", "trial_latency")


def test_restarts_while_on_trial_roll_back() -> None:
    assert judge_trial(POLICY, counts(0, boots=2), now=101).action == "continue"
    verdict = judge_trial(POLICY, counts(0, boots=3), now=101)
    assert (verdict.action, verdict.code) == ("rollback", "trial_crash")


def test_policy_from_dict_validates() -> None:
    assert TrialPolicy.from_dict({"min_inferences": 5}).min_inferences == 5
    assert TrialPolicy.from_dict({"max_p95_ms": None}).max_p95_ms is None
    for bad in (
        {"min_seconds": -1},
        {"min_seconds": "x"},
        {"nope": 1},
        {"max_boot_attempts": True},
    ):
        with pytest.raises(WireError):
            TrialPolicy.from_dict(bad)
