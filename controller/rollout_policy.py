"""What a rollout is told to do: its strategy, abort criteria, time-outs and retries.

Pure dataclasses and their JSON codec (the ``rollouts.policy`` column). The rules that
act on a policy live in :mod:`controller.rollout_engine`; the API's request model
(:mod:`controller.rollout_schemas`) validates operator input and builds these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

GateKind = Literal[
    "failure_share", "error_rate", "latency_ratio", "input_drift", "prediction_drift"
]
GATE_KINDS: tuple[GateKind, ...] = (
    "failure_share",
    "error_rate",
    "latency_ratio",
    "input_drift",
    "prediction_drift",
)


@dataclass(frozen=True)
class WaveStep:
    """One wave: a cumulative share of the target (``percent``) or device ``count``."""

    percent: float | None = None
    count: int | None = None


@dataclass(frozen=True)
class Waves:
    steps: tuple[WaveStep, ...]
    min_devices: int = 1
    soak_s: float = 0.0
    # Share of a wave's devices that must be committed before the next wave starts.
    success_threshold: float = 1.0


@dataclass(frozen=True)
class ExponentialRate:
    base_per_minute: float
    increment_factor: float = 2.0
    # The rate grows each time this many more devices were notified (or succeeded).
    increase_every: int = 10
    increase_on: Literal["notified", "succeeded"] = "notified"


@dataclass(frozen=True)
class AbortCriterion:
    """Fires once at least ``min_finished`` samples exist and the value passes ``threshold``.

    kinds: ``failure_share`` (failed, rolled back or timed out / finished devices),
    ``error_rate`` (of the new model's inferences; samples are inferences),
    ``latency_ratio`` (p95 new / p95 previous model on the same devices; samples are
    devices), ``input_drift`` / ``prediction_drift`` (share of the new model's
    monitored features that drift; samples are inferences).
    """

    kind: GateKind
    threshold: float
    min_finished: int = 1
    action: Literal["pause", "abort"] = "pause"


@dataclass(frozen=True)
class RolloutPolicy:
    strategy: Waves | ExponentialRate
    abort: tuple[AbortCriterion, ...] = ()
    in_progress_timeout_s: float = 600.0
    max_retries: int = 2
    retry_backoff_s: float = 5.0
    # Failure codes worth retrying (network trouble); a bad bundle is not retried.
    retry_codes: frozenset[str] = frozenset({"download"})


def policy_to_dict(policy: RolloutPolicy) -> dict[str, Any]:
    """JSON-ready form; :func:`policy_from_dict` reads it back unchanged."""
    if isinstance(policy.strategy, Waves):
        strategy: dict[str, Any] = {"waves": asdict(policy.strategy)}
    else:
        strategy = {"exponential_rate": asdict(policy.strategy)}
    return {
        "strategy": strategy,
        "abort": [asdict(a) for a in policy.abort],
        "in_progress_timeout_s": policy.in_progress_timeout_s,
        "max_retries": policy.max_retries,
        "retry_backoff_s": policy.retry_backoff_s,
        "retry_codes": sorted(policy.retry_codes),
    }


def policy_from_dict(data: Mapping[str, Any]) -> RolloutPolicy:
    """Inverse of :func:`policy_to_dict` (the stored form; the API validated it)."""
    strategy = data["strategy"]
    chosen: Waves | ExponentialRate
    if "waves" in strategy:
        raw = dict(strategy["waves"])
        raw["steps"] = tuple(WaveStep(**step) for step in raw["steps"])
        chosen = Waves(**raw)
    else:
        chosen = ExponentialRate(**strategy["exponential_rate"])
    return RolloutPolicy(
        strategy=chosen,
        abort=tuple(
            AbortCriterion(**{**a, "kind": cast(GateKind, a["kind"])}) for a in data["abort"]
        ),
        in_progress_timeout_s=float(data["in_progress_timeout_s"]),
        max_retries=int(data["max_retries"]),
        retry_backoff_s=float(data["retry_backoff_s"]),
        retry_codes=frozenset(data["retry_codes"]),
    )
