"""What a compression job should do, validated before it is queued (pure).

The request names a method (any ``edgefleet compress --method``) or ``auto``, plus
options: the method's own options, or ``auto``'s constraints and profile, and a few
common ones (timed runs, generated samples, seed, nodes kept in float). Everything is
checked here, at submission, by the compress library itself, so a job that starts can
only fail on the model or its data, never on a misspelt option.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from compress.constraints import PROFILES, Constraints
from compress.errors import CompressError
from compress.recipes import METHODS, recipe_for_method

AUTO = "auto"
CONSTRAINT_OPTIONS = tuple(f.name for f in fields(Constraints))
AUTO_OPTIONS = (*CONSTRAINT_OPTIONS, "profile", "search_pruning")
COMMON_OPTIONS = ("runs", "samples", "seed", "keep_float")
# Bounds that keep one job's cost predictable on a shared controller.
MAX_RUNS = 1000
MAX_SAMPLES = 10_000
DEFAULT_RUNS = 20
DEFAULT_SAMPLES = 64


class JobRequestError(ValueError):
    """A compression request that cannot run; the message names the field and value."""


@dataclass(frozen=True)
class JobSpec:
    """A validated compression request, stored with the job as JSON."""

    method: str
    target_version: str
    method_options: dict[str, Any] = field(default_factory=dict)
    constraints: dict[str, float | None] = field(default_factory=dict)
    profile: str | None = None
    search_pruning: bool = True
    runs: int = DEFAULT_RUNS
    samples: int = DEFAULT_SAMPLES
    seed: int = 0
    keep_float: tuple[str, ...] = ()
    calibration_sha256: str | None = None
    evaluation_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["keep_float"] = list(self.keep_float)
        return data

    @staticmethod
    def from_dict(data: dict[str, Any]) -> JobSpec:
        return JobSpec(**{**data, "keep_float": tuple(data.get("keep_float", ()))})

    def constraints_object(self) -> Constraints:
        """The ``auto`` constraints; unset ones keep the library's defaults."""
        return Constraints(**self.constraints)


def _number(options: dict[str, Any], key: str, kind: type, low: float, high: float) -> Any:
    value = options[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise JobRequestError(f"option {key!r} must be a number, got {value!r}")
    if kind is int and not float(value).is_integer():
        raise JobRequestError(f"option {key!r} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise JobRequestError(f"option {key!r} must be in [{low}, {high}], got {value!r}")
    return kind(value)


def parse_job_request(
    method: str,
    options: dict[str, Any],
    *,
    source_version: str,
    target_version: str | None = None,
) -> JobSpec:
    """Check ``method`` and ``options``; return the spec a worker will run.

    Raises:
        JobRequestError: an unknown method or option, or a value out of range.
    """
    if method != AUTO and method not in METHODS:
        raise JobRequestError(
            f"unknown method {method!r}; choose 'auto' or one of {sorted(METHODS)}"
        )
    if method == AUTO:
        allowed = sorted({*AUTO_OPTIONS, *COMMON_OPTIONS})
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise JobRequestError(f"option(s) {unknown} do not apply to 'auto'; known: {allowed}")
    common: dict[str, Any] = {}
    if "runs" in options:
        common["runs"] = _number(options, "runs", int, 0, MAX_RUNS)
    if "samples" in options:
        common["samples"] = _number(options, "samples", int, 1, MAX_SAMPLES)
    if "seed" in options:
        common["seed"] = _number(options, "seed", int, 0, 2**31 - 1)
    if "keep_float" in options:
        keep = options["keep_float"]
        if not isinstance(keep, list) or not all(isinstance(k, str) for k in keep):
            raise JobRequestError(f"option 'keep_float' must be a list of names, got {keep!r}")
        common["keep_float"] = tuple(keep)
    target = target_version or f"{source_version}-{method}"
    if method != AUTO:
        # The method's pass knows its own options and names the ones it does not take.
        method_options = {k: v for k, v in options.items() if k not in COMMON_OPTIONS}
        try:
            recipe_for_method(method, **method_options)
        except CompressError as exc:
            raise JobRequestError(str(exc)) from exc
        return JobSpec(method, target, method_options=method_options, **common)
    constraints: dict[str, float | None] = {}
    for key in CONSTRAINT_OPTIONS:
        if key in options:
            value = options[key]
            if value is None:
                constraints[key] = None  # explicitly lifted
                continue
            limit = _number(options, key, float, 0.0, math.inf)
            if key != "max_latency_ratio" and key != "max_accuracy_drop" and limit > 1.0:
                raise JobRequestError(f"option {key!r} must be in [0, 1], got {limit}")
            constraints[key] = limit
    profile = options.get("profile")
    if profile is not None and profile not in PROFILES:
        raise JobRequestError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    search = options.get("search_pruning", True)
    if not isinstance(search, bool):
        raise JobRequestError(f"option 'search_pruning' must be true or false, got {search!r}")
    return JobSpec(
        AUTO,
        target,
        constraints=constraints,
        profile=profile,
        search_pruning=search,
        **common,
    )
