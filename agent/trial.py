"""Trial of a freshly activated model: commit it, or roll back to the previous slot.

Pure: takes counts, times and a policy, returns a verdict. The agent feeds it what it
saw since activation (inferences, errors, latency histogram, restarts while on trial).
A restart while on trial counts as a failed start, as in Mender's and Greengrass'
rollback-on-failed-boot: the watchdog that restarted us is the evidence.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from firmware_bundles.errors import WireError
from firmware_bundles.latency_histogram import percentile


@dataclass(frozen=True)
class TrialPolicy:
    """When a model on trial commits and when it rolls back.

    It commits once ``min_seconds`` have passed and it served ``min_inferences``
    cleanly, or once ``max_seconds`` have passed at all (a device with no traffic has
    nothing more to prove). Error rate and p95 latency are judged once there are
    ``min_samples`` inferences, so one early error cannot roll back a good model.
    """

    min_inferences: int = 20
    min_seconds: float = 10.0
    max_seconds: float = 300.0
    max_error_rate: float = 0.05
    max_p95_ms: float | None = None
    min_samples: int = 10
    max_boot_attempts: int = 2

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @staticmethod
    def from_dict(raw: object, what: str = "trial") -> TrialPolicy:
        if not isinstance(raw, dict):
            raise WireError(f"{what} must be an object, got {raw!r:.80}")
        defaults = TrialPolicy()
        values: dict[str, Any] = {}
        for key, default in defaults.__dict__.items():
            value = raw.get(key, default)
            if value is None and key == "max_p95_ms":
                values[key] = None
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise WireError(f"{what}.{key} must be a number >= 0, got {value!r:.40}")
            values[key] = type(default)(value) if default is not None else float(value)
        unknown = set(raw) - set(defaults.__dict__)
        if unknown:
            raise WireError(f"{what} has unknown field(s) {sorted(unknown)}")
        return TrialPolicy(**values)


@dataclass(frozen=True)
class TrialCounts:
    started_at: float
    inferences: int
    errors: int
    latency_histogram: dict[int, int]
    boot_attempts: int


@dataclass(frozen=True)
class Verdict:
    action: str  # "continue" | "commit" | "rollback"
    code: str = ""
    reason: str = ""


CONTINUE = Verdict("continue")


def judge_trial(policy: TrialPolicy, counts: TrialCounts, now: float) -> Verdict:
    """Decide what to do with a model on trial at time ``now``."""
    if counts.boot_attempts > policy.max_boot_attempts:
        return Verdict(
            "rollback",
            "trial_crash",
            f"agent restarted {counts.boot_attempts - 1} time(s) while the model was on trial "
            f"(limit {policy.max_boot_attempts - 1})",
        )
    total = counts.inferences
    if total >= policy.min_samples:
        rate = counts.errors / total
        if rate > policy.max_error_rate:
            return Verdict(
                "rollback",
                "trial_errors",
                f"{counts.errors} of {total} inferences failed ({rate:.1%}, "
                f"limit {policy.max_error_rate:.1%})",
            )
        p95 = percentile(Counter(counts.latency_histogram), 0.95)
        if policy.max_p95_ms is not None and p95 is not None and p95 > policy.max_p95_ms:
            return Verdict(
                "rollback",
                "trial_latency",
                f"p95 latency {p95:.2f} ms over the {policy.max_p95_ms} ms budget",
            )
    elapsed = now - counts.started_at
    if elapsed >= policy.max_seconds or (
        elapsed >= policy.min_seconds and total - counts.errors >= policy.min_inferences
    ):
        return Verdict("commit")
    return CONTINUE
