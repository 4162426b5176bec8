"""The post-install health check: golden inputs must give the golden outputs.

Within the manifest's tolerance and latency budget. One warm-up run is not timed:
the first run of a fresh session allocates its arenas.
"""

from __future__ import annotations

import time
from pathlib import Path

from agent.errors import UpdateError
from firmware_bundles.golden import compare_outputs, decode_arrays
from firmware_bundles.manifest import Manifest
from firmware_bundles.runtimes import ModelRunner


def run_health_check(
    runner: ModelRunner, manifest: Manifest, golden_inputs: Path, golden_outputs: Path
) -> float:
    """Return the health-check latency in ms, or raise ``UpdateError("health_check")``."""
    feeds = decode_arrays(golden_inputs.read_bytes(), "golden inputs")
    expected = decode_arrays(golden_outputs.read_bytes(), "golden outputs")
    try:
        runner.run(feeds)
        started = time.perf_counter()
        actual = runner.run(feeds)
        latency_ms = (time.perf_counter() - started) * 1000.0
    except Exception as exc:  # any runtime failure on golden inputs fails the check
        raise UpdateError("health_check", f"model failed on its golden inputs: {exc}") from exc
    result = compare_outputs(expected, actual, manifest.health_check)
    if not result.ok:
        raise UpdateError("health_check", result.reason)
    budget = manifest.health_check.latency_budget_ms
    if latency_ms > budget:
        raise UpdateError(
            "health_check",
            f"golden inference took {latency_ms:.1f} ms, over the {budget} ms budget",
        )
    return latency_ms
