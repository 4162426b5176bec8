"""The rollout engine's decisions: pure, given the rollout, its devices, gate metrics and now.

Each tick the controller loads a rollout's persisted state, calls :func:`plan_tick`, and
applies the returned :class:`TickPlan` in one transaction (notify devices, mark time-outs,
change status). Nothing here touches the database, MQTT or the clock, so the rules are
testable with a fake clock and auditable in one place.

Semantics borrowed from hawkBit (rollout groups with success thresholds), AWS IoT Jobs
(``exponentialRate``, ``abortConfig`` with a minimum executed count, in-progress
timeouts, retries) and Greengrass (rollback on failure); the model-health gates (error
rate of the new model, p95 latency against the same devices' previous model) are ours.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from controller.rollout_policy import (
    AbortCriterion,
    ExponentialRate,
    RolloutPolicy,
    Waves,
)

# Per-device execution states.
QUEUED = "queued"
NOTIFIED = "notified"
DOWNLOADING = "downloading"
VERIFYING = "verifying"
INSTALLED = "installed"
ON_TRIAL = "on_trial"
COMMITTED = "committed"
FAILED = "failed"
ROLLED_BACK = "rolled_back"
TIMED_OUT = "timed_out"
CANCELED = "canceled"

EXEC_STATES = (
    QUEUED, NOTIFIED, DOWNLOADING, VERIFYING, INSTALLED, ON_TRIAL,
    COMMITTED, FAILED, ROLLED_BACK, TIMED_OUT, CANCELED,
)  # fmt: skip
IN_PROGRESS = frozenset({NOTIFIED, DOWNLOADING, VERIFYING, INSTALLED, ON_TRIAL})
BAD = frozenset({FAILED, ROLLED_BACK, TIMED_OUT})
TERMINAL = BAD | {COMMITTED, CANCELED}

# Rollout statuses.
Status = Literal["created", "running", "paused", "aborted", "completed", "rolled_back"]


@dataclass(frozen=True)
class DeviceExec:
    device_id: str
    wave: int
    state: str = QUEUED
    updated_at: float = 0.0
    notified_at: float | None = None
    attempts: int = 0
    error_code: str | None = None


@dataclass(frozen=True)
class RolloutState:
    status: Status = "created"
    wave: int = -1  # current wave; -1 before the start
    wave_started_at: float | None = None
    started_at: float | None = None
    rate_tokens: float = 0.0
    rate_updated_at: float | None = None
    reason: str = ""
    # What an operator resumed past: gate kind -> its sample count then, and
    # "wave_success:<n>" for a wave let through below its success threshold.
    acknowledged: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class GateMetrics:
    """Model-health figures of the new bundle on this rollout's devices."""

    error_rate: float | None = None
    error_samples: int = 0
    latency_ratio: float | None = None
    latency_devices: int = 0
    # Share of monitored features that drift (inputs, model outputs) and the inferences
    # behind the verdict.
    input_drift_share: float | None = None
    prediction_drift_share: float | None = None
    drift_samples: int = 0
    drift_detail: str = ""


@dataclass(frozen=True)
class TickPlan:
    state: RolloutState
    notify: tuple[str, ...] = ()
    retry: tuple[str, ...] = ()
    timed_out: tuple[str, ...] = ()
    cancel: tuple[str, ...] = ()
    roll_back: tuple[str, ...] = ()  # devices to send back to their previous bundle
    audit: tuple[str, ...] = field(default_factory=tuple)


# ---------------------------------------------------------------------- planning


def order_devices(rollout_id: str, device_ids: Sequence[str]) -> list[str]:
    """A stable pseudo-random order, so wave 1 is not always the same devices."""
    return sorted(device_ids, key=lambda d: hashlib.sha256(f"{rollout_id}/{d}".encode()).digest())


def wave_sizes(waves: Waves, total: int) -> list[int]:
    """Cumulative device counts per wave; the last wave always reaches ``total``."""
    sizes: list[int] = []
    for step in waves.steps:
        if step.count is not None:
            want = step.count
        else:
            want = math.ceil((step.percent or 0.0) / 100.0 * total)
        want = max(want, waves.min_devices, sizes[-1] if sizes else 0)
        sizes.append(min(want, total))
    if not sizes or sizes[-1] < total:
        sizes.append(total)
    return sizes


def assign_waves(
    rollout_id: str, device_ids: Sequence[str], policy: RolloutPolicy
) -> list[DeviceExec]:
    """Initial executions: every device queued in its wave (0 for exponential rate)."""
    ordered = order_devices(rollout_id, device_ids)
    if not isinstance(policy.strategy, Waves):
        return [DeviceExec(d, 0) for d in ordered]
    bounds = wave_sizes(policy.strategy, len(ordered))
    execs, start = [], 0
    for wave, end in enumerate(bounds):
        execs += [DeviceExec(d, wave) for d in ordered[start:end]]
        start = end
    return execs


def awaiting_retry(policy: RolloutPolicy, d: DeviceExec) -> bool:
    """A failure worth retrying that has retries left: not finished yet."""
    return (
        d.state == FAILED
        and d.error_code in policy.retry_codes
        and d.attempts <= policy.max_retries
    )


def is_final(policy: RolloutPolicy, d: DeviceExec) -> bool:
    return d.state in TERMINAL and not awaiting_retry(policy, d)


def _finished(policy: RolloutPolicy, devices: Sequence[DeviceExec]) -> list[DeviceExec]:
    return [d for d in devices if is_final(policy, d) and d.state != CANCELED]


def gate_samples(
    criterion: AbortCriterion,
    devices: Sequence[DeviceExec],
    metrics: GateMetrics,
    policy: RolloutPolicy,
) -> int:
    """How much evidence a criterion has: finished devices, inferences or devices."""
    if criterion.kind == "failure_share":
        return len(_finished(policy, devices))
    if criterion.kind == "error_rate":
        return metrics.error_samples
    if criterion.kind == "latency_ratio":
        return metrics.latency_devices
    return metrics.drift_samples


def _judge(
    criterion: AbortCriterion,
    devices: Sequence[DeviceExec],
    metrics: GateMetrics,
    policy: RolloutPolicy,
) -> str | None:
    """The reason ``criterion`` fires on these figures, or None."""
    if criterion.kind == "failure_share":
        finished = _finished(policy, devices)
        if not finished:
            return None
        bad = sum(1 for d in finished if d.state in BAD)
        share = bad / len(finished)
        if share <= criterion.threshold:
            return None
        return (
            f"{bad} of {len(finished)} finished devices failed, rolled back or timed out "
            f"({share:.0%} > {criterion.threshold:.0%})"
        )
    if criterion.kind == "error_rate":
        if metrics.error_rate is None or metrics.error_rate <= criterion.threshold:
            return None
        return (
            f"new model error rate {metrics.error_rate:.2%} over {metrics.error_samples} "
            f"inferences > {criterion.threshold:.2%}"
        )
    if criterion.kind == "latency_ratio":
        if metrics.latency_ratio is None or metrics.latency_ratio <= criterion.threshold:
            return None
        return (
            f"new model p95 latency is {metrics.latency_ratio:.2f}x the previous model's "
            f"on {metrics.latency_devices} devices (> {criterion.threshold:.2f}x)"
        )
    drifting = (
        metrics.input_drift_share
        if criterion.kind == "input_drift"
        else metrics.prediction_drift_share
    )
    if drifting is None or drifting <= criterion.threshold:
        return None
    what = "input" if criterion.kind == "input_drift" else "prediction"
    detail = f": {metrics.drift_detail}" if metrics.drift_detail else ""
    return (
        f"{what} drift on {drifting:.0%} of monitored features of the new model "
        f"(> {criterion.threshold:.0%}) over {metrics.drift_samples} inferences{detail}"
    )


def check_abort(
    policy: RolloutPolicy,
    devices: Sequence[DeviceExec],
    metrics: GateMetrics,
    acknowledged: Mapping[str, int] | None = None,
) -> tuple[AbortCriterion, str] | None:
    """The first abort criterion that fires, with a reason naming the value.

    A criterion needs ``min_finished`` samples; one an operator resumed past needs
    ``min_finished`` *more* samples than it had then before it may fire again.
    """
    acknowledged = acknowledged or {}
    for criterion in policy.abort:
        samples = gate_samples(criterion, devices, metrics, policy)
        if samples < criterion.min_finished:
            continue
        if criterion.kind in acknowledged and (
            samples - acknowledged[criterion.kind] < max(criterion.min_finished, 1)
        ):
            continue
        reason = _judge(criterion, devices, metrics, policy)
        if reason is not None:
            return criterion, reason
    return None


def gate_values(
    policy: RolloutPolicy, devices: Sequence[DeviceExec], metrics: GateMetrics
) -> dict[str, float | int | None]:
    """The figures every gate looks at, for the operator's status view."""
    finished = _finished(policy, devices)
    bad = sum(1 for d in finished if d.state in BAD)
    return {
        "finished": len(finished),
        "failed": bad,
        "failure_share": bad / len(finished) if finished else None,
        "error_rate": metrics.error_rate,
        "error_samples": metrics.error_samples,
        "latency_ratio": metrics.latency_ratio,
        "latency_devices": metrics.latency_devices,
        "input_drift_share": metrics.input_drift_share,
        "prediction_drift_share": metrics.prediction_drift_share,
        "drift_samples": metrics.drift_samples,
    }


def resume(
    policy: RolloutPolicy,
    state: RolloutState,
    devices: Sequence[DeviceExec],
    metrics: GateMetrics,
) -> RolloutState:
    """The state after an operator resumes a paused rollout.

    Whatever paused it is acknowledged, so it does not fire again on the same evidence:
    a gate waits for ``min_finished`` new samples, a wave below its success threshold is
    let through.
    """
    acknowledged = dict(state.acknowledged)
    for criterion in policy.abort:
        if _judge(criterion, devices, metrics, policy) is not None:
            acknowledged[criterion.kind] = gate_samples(criterion, devices, metrics, policy)
    if state.wave >= 0:
        acknowledged[f"wave_success:{state.wave}"] = 1
    return replace(state, status="running", reason="", acknowledged=acknowledged)


def plan_abort(
    state: RolloutState, devices: Sequence[DeviceExec], reason: str, *, roll_back: bool
) -> TickPlan:
    """Operator abort: queued devices are canceled; with ``roll_back`` every device told
    about the bundle also returns to its previous one (still in its other slot)."""
    plan = _abort(state, devices, reason, ())
    return plan if roll_back else replace(plan, roll_back=())


def state_after_rollback(state: str) -> str:
    """A device's execution state once the controller sent it back to its previous bundle.

    Devices that ran the new model are ``rolled_back``; those still on the way are
    ``canceled``; those that had already failed, rolled back or timed out keep saying so.
    """
    if state in (ON_TRIAL, COMMITTED):
        return ROLLED_BACK
    if state in IN_PROGRESS:
        return CANCELED
    return state


def plan_tick(
    policy: RolloutPolicy,
    state: RolloutState,
    devices: Sequence[DeviceExec],
    metrics: GateMetrics,
    now: float,
) -> TickPlan:
    """Decide this tick's actions for one rollout.

    Only a ``running`` rollout notifies devices; a ``paused`` one still times out the
    devices that hang in progress, so what the operator sees stays true.
    """
    if state.status == "paused":
        timed_out, _ = _timeouts_and_retries(policy, devices, now)
        return TickPlan(state, timed_out=timed_out)
    if state.status != "running":
        return TickPlan(state)
    if state.started_at is None:
        state = replace(state, started_at=now)

    audit: list[str] = []
    timed_out, retry = _timeouts_and_retries(policy, devices, now)
    # Judge with this tick's time-outs applied, so a gate sees them at once.
    after = [replace(d, state=TIMED_OUT) if d.device_id in timed_out else d for d in devices]
    fired = check_abort(policy, after, metrics, state.acknowledged)
    if fired is not None:
        criterion, reason = fired
        if criterion.action == "abort":
            return _abort(state, after, reason, timed_out)
        audit.append(f"paused: {reason}")
        return TickPlan(
            replace(state, status="paused", reason=reason), timed_out=timed_out, audit=tuple(audit)
        )

    if isinstance(policy.strategy, Waves):
        plan = _tick_waves(policy, policy.strategy, state, after, now)
    else:
        plan = _tick_rate(policy, policy.strategy, state, after, now)
    return replace(plan, timed_out=timed_out, retry=retry, audit=plan.audit + tuple(audit))


def _abort(
    state: RolloutState, devices: Sequence[DeviceExec], reason: str, timed_out: tuple[str, ...]
) -> TickPlan:
    cancel = tuple(d.device_id for d in devices if d.state == QUEUED)
    # Every device that was told about the new bundle goes back; one still on its old
    # model just gets its old desired state again (idempotent, no download).
    back = tuple(d.device_id for d in devices if d.state not in (QUEUED, CANCELED))
    return TickPlan(
        replace(state, status="aborted", reason=reason),
        cancel=cancel,
        roll_back=back,
        timed_out=timed_out,
        audit=(f"aborted: {reason}",),
    )


def _timeouts_and_retries(
    policy: RolloutPolicy, devices: Sequence[DeviceExec], now: float
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    timed_out, retry = [], []
    for d in devices:
        if d.state in IN_PROGRESS and d.notified_at is not None:
            if now - d.notified_at > policy.in_progress_timeout_s:
                timed_out.append(d.device_id)
        elif awaiting_retry(policy, d) and now - d.updated_at >= policy.retry_backoff_s * 2 ** max(
            d.attempts - 1, 0
        ):
            retry.append(d.device_id)
    return tuple(timed_out), tuple(retry)


def _tick_waves(
    policy: RolloutPolicy,
    waves: Waves,
    state: RolloutState,
    devices: Sequence[DeviceExec],
    now: float,
) -> TickPlan:
    last_wave = max((d.wave for d in devices), default=-1)
    if state.wave < 0:
        state = replace(state, wave=0, wave_started_at=now)
    notify = tuple(d.device_id for d in devices if d.wave <= state.wave and d.state == QUEUED)
    if notify:
        return TickPlan(
            state, notify=notify, audit=(f"wave {state.wave + 1}: notify {len(notify)}",)
        )
    current = [d for d in devices if d.wave == state.wave]
    if not all(is_final(policy, d) for d in current):
        return TickPlan(state)
    # The soak runs from the moment the wave's last device finished.
    done_at = max((d.updated_at for d in current), default=now)
    # Devices another rollout took over (canceled) are not this wave's to judge.
    judged = [d for d in current if d.state != CANCELED]
    committed = sum(1 for d in judged if d.state == COMMITTED)
    share = committed / len(judged) if judged else 1.0
    let_through = f"wave_success:{state.wave}" in state.acknowledged
    if share < waves.success_threshold and not let_through:
        reason = (
            f"wave {state.wave + 1}: {committed} of {len(judged)} devices committed "
            f"({share:.0%} < {waves.success_threshold:.0%})"
        )
        return TickPlan(
            replace(state, status="paused", reason=reason), audit=(f"paused: {reason}",)
        )
    if now - done_at < waves.soak_s:
        return TickPlan(state)
    if state.wave >= last_wave:
        return TickPlan(replace(state, status="completed", reason=""), audit=("completed",))
    nxt = replace(state, wave=state.wave + 1, wave_started_at=now)
    notify = tuple(d.device_id for d in devices if d.wave == nxt.wave and d.state == QUEUED)
    return TickPlan(nxt, notify=notify, audit=(f"wave {nxt.wave + 1}: notify {len(notify)}",))


def current_rate(rate: ExponentialRate, devices: Sequence[DeviceExec]) -> float:
    """Devices per minute now: grows by ``increment_factor`` every ``increase_every``."""
    if rate.increase_on == "succeeded":
        done = sum(1 for d in devices if d.state == COMMITTED)
    else:
        done = sum(1 for d in devices if d.state != QUEUED)
    steps = done // max(rate.increase_every, 1)
    return float(rate.base_per_minute * rate.increment_factor**steps)


def _tick_rate(
    policy: RolloutPolicy,
    rate: ExponentialRate,
    state: RolloutState,
    devices: Sequence[DeviceExec],
    now: float,
) -> TickPlan:
    queued = [d.device_id for d in devices if d.state == QUEUED]
    if not queued:
        if all(is_final(policy, d) for d in devices):
            return TickPlan(replace(state, status="completed", reason=""), audit=("completed",))
        return TickPlan(state)
    per_minute = current_rate(rate, devices)
    last = state.rate_updated_at if state.rate_updated_at is not None else now
    # Start with one token so the first device goes at once; cap the burst at one
    # minute's worth so a long pause does not release a flood.
    tokens = state.rate_tokens if state.rate_updated_at is not None else 1.0
    tokens = min(tokens + per_minute * (now - last) / 60.0, max(per_minute, 1.0))
    count = min(int(tokens), len(queued))
    state = replace(state, rate_tokens=tokens - count, rate_updated_at=now, wave=0)
    notify = tuple(queued[:count])
    audit = (f"rate {per_minute:.1f}/min: notify {count}",) if count else ()
    return TickPlan(state, notify=notify, audit=audit)
