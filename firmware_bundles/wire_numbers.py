"""Numbers in device payloads: finite, within range, and drift counts that add up.

A device (or anything that can publish on its topics) decides what these JSON numbers
are. ``NaN``/``Infinity`` tokens, ``1e400`` (which Python reads as infinity) and
integers past 2**53 would otherwise travel into sums the controller keeps for good
(roll-ups), into JSON that PostgreSQL refuses, and into time arithmetic that raises.
Pure: values in, values out or :class:`~firmware_bundles.errors.WireError`.
"""

from __future__ import annotations

import math
from typing import Any

from firmware_bundles.errors import WireError

MAX_COUNT = 2**53  # exact in a double: sums of counts stay exact in JSON consumers too
MAX_BUCKETS = 1024  # bins <= 100, vocabulary <= 1,000 (+ OTHER)
DRIFT_KEYS = ("counts", "missing", "n", "min", "max", "sum", "sumsq")


def reject_constant(token: str) -> Any:
    """``json.loads(parse_constant=...)``: refuse ``NaN``, ``Infinity``, ``-Infinity``."""
    raise ValueError(f"{token} is not a number EdgeFleet accepts")


def finite(value: object, what: str) -> float:
    """``value`` as a finite float (JSON int or float, not bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WireError(f"{what} must be a number, got {value!r:.80}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise WireError(f"{what} must be a finite number, got {value!r:.40}")
    return number


def count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise WireError(f"{what} must be an integer 0..2**53, got {value!r:.40}")
    return value


def check_drift_stats(stats: object, what: str) -> None:
    """One feature of a drift window: counts per bucket, n, missing, min/max/sum/sumsq.

    ``n`` must equal the sum of the counts (every counted value lands in one bucket),
    ``min``/``max`` are null exactly when ``n`` is 0.
    """
    if not isinstance(stats, dict) or set(stats) != set(DRIFT_KEYS):
        raise WireError(f"{what} must have exactly the keys {DRIFT_KEYS}")
    counts = stats["counts"]
    if not isinstance(counts, list) or not 1 <= len(counts) <= MAX_BUCKETS:
        raise WireError(f"{what}.counts must be a list of 1..{MAX_BUCKETS} counts")
    total = sum(count(c, f"{what}.counts[]") for c in counts)
    n = count(stats["n"], f"{what}.n")
    count(stats["missing"], f"{what}.missing")
    if n != total:
        raise WireError(f"{what}.n is {n} but its counts add up to {total}")
    for key in ("sum", "sumsq"):
        finite(stats[key], f"{what}.{key}")
    for key in ("min", "max"):
        if (stats[key] is None) != (n == 0):
            raise WireError(f"{what}.{key} must be null exactly when n is 0")
        if stats[key] is not None:
            finite(stats[key], f"{what}.{key}")
