"""The rollout engine's rules on a fake clock: waves, rate, gates, time-outs, retries."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from controller.rollout_engine import (
    COMMITTED,
    FAILED,
    NOTIFIED,
    QUEUED,
    ROLLED_BACK,
    TIMED_OUT,
    GateMetrics,
    RolloutState,
    assign_waves,
    gate_values,
    plan_abort,
    plan_tick,
    resume,
    state_after_rollback,
    wave_sizes,
)
from controller.rollout_policy import (
    AbortCriterion,
    ExponentialRate,
    RolloutPolicy,
    Waves,
    WaveStep,
    policy_from_dict,
    policy_to_dict,
)

WAVES = Waves(
    steps=(WaveStep(percent=5), WaveStep(percent=25), WaveStep(percent=100)),
    min_devices=2,
    soak_s=10,
)
POLICY = RolloutPolicy(WAVES, in_progress_timeout_s=60)
IDS = [f"d{i:03d}" for i in range(200)]


class Sim:
    """Applies plans the way the controller does, so tests read like a rollout."""

    def __init__(self, policy: RolloutPolicy, ids: list[str] = IDS) -> None:
        self.policy = policy
        self.devices = {d.device_id: d for d in assign_waves("r1", ids, policy)}
        self.state = RolloutState(status="running")
        self.audit: list[str] = []

    def tick(self, now: float, metrics: GateMetrics | None = None):  # type: ignore[no-untyped-def]
        devices = list(self.devices.values())
        plan = plan_tick(self.policy, self.state, devices, metrics or GateMetrics(), now)
        self.state = plan.state
        self.audit += plan.audit
        for d in plan.notify + plan.retry:
            dev = self.devices[d]
            self.devices[d] = replace(
                dev, state=NOTIFIED, notified_at=now, attempts=dev.attempts + 1
            )
        for d in plan.timed_out:
            self.devices[d] = replace(self.devices[d], state=TIMED_OUT, updated_at=now)
        return plan

    def finish(
        self,
        ids: tuple[str, ...],
        state: str = COMMITTED,
        now: float = 0.0,
        code: str | None = None,
    ) -> None:
        for d in ids:
            self.devices[d] = replace(self.devices[d], state=state, updated_at=now, error_code=code)

    def count(self, state: str) -> int:
        return sum(1 for d in self.devices.values() if d.state == state)


def test_wave_sizes_respect_minimum_and_reach_everyone() -> None:
    assert wave_sizes(WAVES, 200) == [10, 50, 200]
    assert wave_sizes(WAVES, 10) == [2, 3, 10]
    assert wave_sizes(Waves((WaveStep(count=3),)), 10) == [3, 10]


def test_waves_advance_only_after_success_and_soak() -> None:
    sim = Sim(POLICY)
    first = sim.tick(0).notify
    assert len(first) == 10 and sim.count(QUEUED) == 190
    assert sim.tick(1).notify == ()  # nothing more until wave 1 finishes
    sim.finish(first, now=5)
    assert sim.tick(6).notify == ()  # soaking
    second = sim.tick(16.5).notify
    assert len(second) == 40
    sim.finish(second, now=20)
    third = sim.tick(31).notify
    assert len(third) == 150
    sim.finish(third, now=40)
    sim.tick(45)
    assert sim.state.status == "running"
    sim.tick(51)
    assert sim.state.status == "completed" and sim.count(COMMITTED) == 200


def test_wave_below_success_threshold_pauses_and_later_waves_never_start() -> None:
    sim = Sim(RolloutPolicy(replace(WAVES, success_threshold=0.9)))
    first = sim.tick(0).notify
    sim.finish(first[:7], now=1)
    sim.finish(first[7:], ROLLED_BACK, now=1)
    sim.tick(20)
    assert sim.state.status == "paused" and "7 of 10" in sim.state.reason
    assert sim.count(QUEUED) == 190
    assert sim.tick(100).notify == ()  # paused: nothing moves


def test_failure_share_abort_rolls_back_and_cancels() -> None:
    abort = AbortCriterion("failure_share", threshold=0.2, min_finished=5, action="abort")
    sim = Sim(RolloutPolicy(WAVES, abort=(abort,)))
    first = sim.tick(0).notify
    sim.finish(first[:3], ROLLED_BACK, now=1)
    sim.finish(first[3:4], COMMITTED, now=1)
    assert sim.tick(2).roll_back == ()  # only 4 finished: below min_finished
    sim.finish(first[4:5], COMMITTED, now=2)
    plan = sim.tick(3)
    assert sim.state.status == "aborted" and "3 of 5" in sim.state.reason
    assert set(plan.roll_back) == set(first) and len(plan.cancel) == 190


@pytest.mark.parametrize(
    ("metrics", "criterion", "fires"),
    [
        (
            GateMetrics(latency_ratio=2.1, latency_devices=5),
            AbortCriterion("latency_ratio", 1.5, 5),
            True,
        ),
        (
            GateMetrics(latency_ratio=2.1, latency_devices=4),
            AbortCriterion("latency_ratio", 1.5, 5),
            False,
        ),
        (
            GateMetrics(latency_ratio=1.2, latency_devices=9),
            AbortCriterion("latency_ratio", 1.5, 5),
            False,
        ),
        (
            GateMetrics(error_rate=0.2, error_samples=500),
            AbortCriterion("error_rate", 0.05, 100),
            True,
        ),
        (
            GateMetrics(error_rate=0.2, error_samples=50),
            AbortCriterion("error_rate", 0.05, 100),
            False,
        ),
    ],
)
def test_model_health_gates_pause(
    metrics: GateMetrics, criterion: AbortCriterion, fires: bool
) -> None:
    sim = Sim(RolloutPolicy(WAVES, abort=(criterion,)))
    sim.tick(0)
    sim.tick(1, metrics)
    assert (sim.state.status == "paused") is fires
    if fires:
        assert "x the previous" in sim.state.reason or "error rate" in sim.state.reason


def test_in_progress_timeout_and_download_retry_with_backoff() -> None:
    policy = RolloutPolicy(WAVES, in_progress_timeout_s=60, max_retries=2, retry_backoff_s=5)
    sim = Sim(policy, IDS[:2])
    first = sim.tick(0).notify
    assert len(first) == 2
    sim.finish(first[:1], FAILED, now=1, code="download")
    sim.finish(first[1:], FAILED, now=1, code="signature")
    assert sim.tick(3).retry == ()  # backoff: 5 s after the first failure
    assert sim.tick(6).retry == (first[0],)  # a bad signature is never retried
    assert sim.tick(70).timed_out == (first[0],)  # the retry hung past its time-out
    assert sim.devices[first[0]].state == TIMED_OUT


def test_failed_downloads_are_retried_at_growing_intervals_until_retries_run_out() -> None:
    one_wave = Waves((WaveStep(percent=100),), success_threshold=0.5)
    policy = RolloutPolicy(one_wave, max_retries=3, retry_backoff_s=4, in_progress_timeout_s=600)
    sim = Sim(policy, IDS[:4])
    first = sim.tick(0).notify
    flaky = first[0]
    sim.finish(first[1:], COMMITTED, now=1)
    t = failed_at = 1.0
    sim.finish((flaky,), FAILED, now=t, code="download")
    waited: list[float] = []
    while t < 300 and sim.state.status == "running":
        t += 0.5
        if flaky not in sim.tick(t).retry:
            continue
        waited.append(t - failed_at)
        assert sim.devices[flaky].state == NOTIFIED
        # Retries left: not finished, not counted as failed, the rollout waits for it.
        figures = gate_values(policy, list(sim.devices.values()), GateMetrics())
        assert (figures["finished"], figures["failed"]) == (3, 0)
        # Its download fails again at once.
        failed_at = t
        sim.finish((flaky,), FAILED, now=t, code="download")
    # Each wait doubles the one before; after three retries the device has failed.
    assert waited == [4.0, 8.0, 16.0]
    assert sim.devices[flaky].attempts == 1 + 3 and sim.devices[flaky].state == FAILED
    assert sim.state.status == "completed" and t == failed_at + 0.5
    assert (sim.count(COMMITTED), sim.count(FAILED)) == (3, 1)
    figures = gate_values(policy, list(sim.devices.values()), GateMetrics())
    assert (figures["finished"], figures["failed"], figures["failure_share"]) == (4, 1, 0.25)


def test_a_failure_gate_waits_for_retries_to_run_out() -> None:
    gate = AbortCriterion("failure_share", threshold=0.2, min_finished=2)
    policy = RolloutPolicy(WAVES, abort=(gate,), max_retries=1, retry_backoff_s=2)
    sim = Sim(policy, IDS[:10])
    first = sim.tick(0).notify  # wave 1: two devices
    sim.finish(first, FAILED, now=1, code="download")
    sim.tick(2)
    assert sim.state.status == "running"  # both may still succeed on a retry
    assert set(sim.tick(3).retry) == set(first)
    sim.finish(first, FAILED, now=4, code="download")
    sim.tick(4.5)  # no retries left: both finished, both failed
    assert sim.state.status == "paused", sim.state
    assert sim.state.reason.startswith("2 of 2 finished devices failed")
    assert sim.count(QUEUED) == 8


def test_exponential_rate_grows_and_is_smooth() -> None:
    rate = ExponentialRate(base_per_minute=60, increment_factor=2, increase_every=10)
    sim = Sim(RolloutPolicy(rate), IDS[:100])
    notified_at: list[float] = []
    t = 0.0
    while sim.count(QUEUED) and t < 600:
        n = len(sim.tick(t).notify)
        notified_at += [t] * n
        t += 0.5
    assert sim.count(QUEUED) == 0
    # 10 at 1/s, 10 at 2/s, ... : first ten take ~10 s, the next ten ~5 s.
    assert 8 <= notified_at[9] <= 11
    assert 2.5 <= notified_at[19] - notified_at[9] <= 6
    assert notified_at[-1] < 40


def test_resume_after_a_gate_needs_new_evidence_before_the_gate_fires_again() -> None:
    gate = AbortCriterion("failure_share", threshold=0.2, min_finished=5)
    sim = Sim(RolloutPolicy(replace(WAVES, success_threshold=0.5), abort=(gate,)))
    first = sim.tick(0).notify
    sim.finish(first[:3], ROLLED_BACK, now=1)
    sim.finish(first[3:], COMMITTED, now=1)
    sim.tick(2)
    assert sim.state.status == "paused" and "3 of 10" in sim.state.reason
    sim.state = resume(sim.policy, sim.state, list(sim.devices.values()), GateMetrics())
    assert sim.state.status == "running" and sim.state.acknowledged["failure_share"] == 10
    second = sim.tick(20).notify  # the gate stays quiet on the same evidence
    assert sim.state.status == "running" and len(second) == 40
    sim.finish(second[:4], COMMITTED, now=21)
    sim.tick(22)
    assert sim.state.status == "running"  # 4 new samples < min_finished 5
    sim.finish(second[4:6], ROLLED_BACK, now=23)
    sim.tick(24)
    assert sim.state.status == "paused" and "5 of 16" in sim.state.reason


def test_resume_lets_a_wave_below_its_success_threshold_through() -> None:
    sim = Sim(RolloutPolicy(replace(WAVES, success_threshold=0.9)))
    first = sim.tick(0).notify
    sim.finish(first[:7], now=1)
    sim.finish(first[7:], ROLLED_BACK, now=1)
    sim.tick(20)
    assert sim.state.status == "paused"
    sim.state = resume(sim.policy, sim.state, list(sim.devices.values()), GateMetrics())
    assert len(sim.tick(21).notify) == 40


def test_a_paused_rollout_still_times_out_hung_devices_but_notifies_nobody() -> None:
    sim = Sim(RolloutPolicy(WAVES, in_progress_timeout_s=60))
    first = sim.tick(0).notify
    sim.state = replace(sim.state, status="paused", reason="operator")
    plan = sim.tick(61)
    assert set(plan.timed_out) == set(first) and plan.notify == () and plan.retry == ()


def test_operator_abort_cancels_the_queue_and_rolls_back_only_when_asked() -> None:
    sim = Sim(POLICY)
    first = sim.tick(0).notify
    devices = list(sim.devices.values())
    stop = plan_abort(sim.state, devices, "operator", roll_back=False)
    assert stop.state.status == "aborted" and stop.roll_back == () and len(stop.cancel) == 190
    back = plan_abort(sim.state, devices, "operator", roll_back=True)
    assert set(back.roll_back) == set(first)
    assert state_after_rollback(COMMITTED) == ROLLED_BACK
    assert state_after_rollback(NOTIFIED) == "canceled"
    assert state_after_rollback(FAILED) == FAILED


@pytest.mark.parametrize(
    ("kind", "metrics", "fires"),
    [
        ("input_drift", GateMetrics(input_drift_share=0.3, drift_samples=500), True),
        ("input_drift", GateMetrics(input_drift_share=0.3, drift_samples=50), False),
        ("input_drift", GateMetrics(prediction_drift_share=0.9, drift_samples=500), False),
        ("prediction_drift", GateMetrics(prediction_drift_share=0.5, drift_samples=500), True),
    ],
)
def test_drift_gates(kind: str, metrics: GateMetrics, fires: bool) -> None:
    criterion = AbortCriterion(kind, threshold=0.2, min_finished=100)  # type: ignore[arg-type]
    sim = Sim(RolloutPolicy(WAVES, abort=(criterion,)))
    sim.tick(0)
    sim.tick(1, metrics)
    assert (sim.state.status == "paused") is fires
    if fires:
        assert "drift on" in sim.state.reason


def test_policy_round_trips_through_its_stored_form() -> None:
    policies = [
        RolloutPolicy(
            WAVES,
            abort=(AbortCriterion("latency_ratio", 1.5, 5, "abort"),),
            in_progress_timeout_s=30,
            max_retries=1,
            retry_backoff_s=2,
            retry_codes=frozenset({"download", "internal"}),
        ),
        RolloutPolicy(ExponentialRate(10, 1.5, 20, "succeeded")),
    ]
    for policy in policies:
        stored = json.loads(json.dumps(policy_to_dict(policy)))
        assert policy_from_dict(stored) == policy
