"""Fleet drift decisions and the life of an alert (pure: counts and a fake clock)."""

from __future__ import annotations

import numpy as np

from controller import drift_watch as dw
from controller.drift_stats import FeatureBins
from firmware_bundles.drift_reference import (
    ExtractorConfig,
    FeatureExtractor,
    build_reference,
)
from firmware_bundles.manifest import TensorSpec

POLICY = dw.AlertPolicy(confirmations=2, resolve_after=2)


def reference(rng: np.random.Generator, features: int = 10) -> dict[str, FeatureBins]:
    spec = TensorSpec("x", "float32", (None, features))
    extractor = FeatureExtractor([spec], [], ExtractorConfig())
    refs = build_reference(extractor, {"x": rng.standard_normal((5000, features))}, {})
    return {n: FeatureBins(r.counts, r.edges, r.lo, r.hi) for n, r in refs.items()}


def device_window(
    rng: np.random.Generator, bins: dict[str, FeatureBins], n: int, shift: float = 0.0
) -> dict[str, dict[str, object]]:
    sample = rng.standard_normal((n, len(bins)))
    if shift:
        sample[:, 3] += shift
    out = {}
    for j in range(len(bins)):
        edges = np.asarray(bins[f"x[{j}]"].edges)
        counts = np.bincount(np.searchsorted(edges, sample[:, j], side="right"),
                             minlength=edges.size + 1)  # fmt: skip
        out[f"x[{j}]"] = {"counts": counts.tolist(), "missing": 0, "n": n, "min": None,
                          "max": None, "sum": 0.0, "sumsq": 0.0}  # fmt: skip
    return out


def test_a_quiet_fleet_of_100_devices_rarely_alarms_and_shifted_devices_are_named() -> None:
    rng = np.random.default_rng(3)
    bins = reference(rng)
    checks, alarms = 20, 0
    for _ in range(checks):
        per_device = {f"d{i}": device_window(rng, bins, 500) for i in range(100)}
        finding = dw.find_drift(bins, per_device, alpha=0.01, min_samples=200)
        assert finding.judged and finding.tested == 100 * 10
        alarms += bool(finding.drifting)
    # One family of 1,000 tests per check: about alpha of checks alarm, not 1,000 x alpha.
    assert alarms / checks <= 0.05, alarms

    per_device = {f"d{i}": device_window(rng, bins, 2000, shift=0.5 if i < 20 else 0.0)
                  for i in range(200)}  # fmt: skip
    finding = dw.find_drift(bins, per_device, alpha=0.01, min_samples=200)
    assert set(finding.drifting) == {"x[3]"}
    assert set(finding.drifting["x[3]"]) >= {f"d{i}" for i in range(18)}
    assert len(set(finding.devices) - {f"d{i}" for i in range(20)}) <= 1


def test_devices_with_too_few_samples_get_no_verdict() -> None:
    rng = np.random.default_rng(4)
    bins = reference(rng)
    finding = dw.find_drift(
        bins, {"d0": device_window(rng, bins, 50, shift=3.0)}, alpha=0.01, min_samples=200
    )
    assert not finding.judged and not finding.drifting


def test_merge_skips_features_of_another_reference_and_says_so() -> None:
    rng = np.random.default_rng(5)
    bins = reference(rng, features=2)
    good = device_window(rng, bins, 10)
    bad = {"x[0]": {**good["x[0]"], "counts": [1, 2, 3]}, "z": good["x[1]"]}
    merged, problems = dw.merge_windows([("a", good), ("a", bad)], bins)
    assert merged["a"]["x[0]"]["n"] == 10 and "z" not in merged["a"]
    assert problems == ["a: feature 'x[0]' has 3 buckets, the reference 10"]


def test_drifting_since_is_the_start_of_the_current_run() -> None:
    assert dw.drifting_since([(0, False), (10, True), (20, None), (30, True)]) == 10
    assert dw.drifting_since([(0, True), (10, False), (20, True)]) == 20
    assert dw.drifting_since([(0, True), (10, False)]) is None
    assert dw.drifting_since([(0, None)]) is None


def test_onset_is_the_start_of_the_last_drifting_run_even_if_newer_steps_are_thin() -> None:
    assert dw.onset([(0, False), (10, True), (20, True), (30, None)]) == 10
    assert dw.onset([(0, False), (10, True), (20, False), (30, True), (40, False)]) == 30
    assert dw.onset([(0, None), (10, False), (20, False)]) == 10  # spread thin: from the data
    assert dw.onset([(0, None)]) is None


def feature(name: str, devices: tuple[str, ...], since: float) -> dw.AlertFeature:
    return dw.AlertFeature(name, devices, since, {"psi": 0.2})


def finding(drifting: dict[str, tuple[str, ...]], tested: int = 10) -> dw.Finding:
    return dw.Finding(tested, drifting)


def test_an_alert_opens_on_confirmation_grows_and_resolves_after_quiet_checks() -> None:
    f1 = [feature("x[3]", ("a", "b"), 100.0)]
    alert, event = dw.step_alert(None, finding({"x[3]": ("a", "b")}), f1, 110.0, POLICY)
    assert alert is not None and alert.status == dw.PENDING and event is None
    # Too few samples to judge: nothing changes, in either direction.
    assert dw.step_alert(alert, finding({}, tested=0), [], 120.0, POLICY) == (alert, None)
    alert, event = dw.step_alert(alert, finding({"x[3]": ("a",)}), f1[:1], 130.0, POLICY)
    assert alert is not None and (alert.status, event) == (dw.OPEN, dw.OPENED)
    assert alert.opened_at == 130.0 and alert.devices == ("a", "b")

    f2 = [feature("x[3]", ("c",), 140.0), feature("output:y:class", ("c",), 140.0)]
    grown, event = dw.step_alert(alert, finding({"x[3]": ("c",)}), f2, 150.0, POLICY)
    assert grown is not None and event == dw.UPDATED
    assert grown.devices == ("a", "b", "c")
    assert {f.name: f.since for f in grown.features} == {"output:y:class": 140.0, "x[3]": 100.0}
    same, event = dw.step_alert(grown, finding({"x[3]": ("a",)}), f1, 160.0, POLICY)
    assert event is None and same is not None and same.status == dw.OPEN

    quiet, event = dw.step_alert(same, finding({}), [], 170.0, POLICY)
    assert quiet is not None and (quiet.status, event) == (dw.OPEN, None)
    done, event = dw.step_alert(quiet, finding({}), [], 180.0, POLICY)
    assert done is not None and (done.status, event, done.resolved_at) == (
        dw.RESOLVED,
        dw.CLOSED,
        180.0,
    )


def test_one_unconfirmed_finding_is_dismissed_silently() -> None:
    pending, _ = dw.step_alert(None, finding({"x[1]": ("a",)}), [feature("x[1]", ("a",), 1.0)],
                               2.0, POLICY)  # fmt: skip
    dismissed, event = dw.step_alert(pending, finding({}), [], 3.0, POLICY)
    assert dismissed is not None and dismissed.status == dw.DISMISSED and event is None
    assert dw.step_alert(None, finding({}), [], 4.0, POLICY) == (None, None)


def test_a_pending_alert_is_confirmed_only_by_new_evidence() -> None:
    found = [feature("x[3]", ("a",), 100.0)]
    pending, _ = dw.step_alert(None, finding({"x[3]": ("a",)}), found, 110.0, POLICY)
    assert pending is not None and pending.status == dw.PENDING
    # The overlapping window still drifts, but nothing new arrived to judge: wait.
    thin = finding({}, tested=0)
    same, event = dw.step_alert(pending, finding({"x[3]": ("a",)}), found, 120.0, POLICY, thin)
    assert same == pending and event is None
    # New data alone drifts too: confirmed.
    opened, event = dw.step_alert(
        pending, finding({"x[3]": ("a",)}), found, 130.0, POLICY, finding({"x[3]": ("a",)})
    )
    assert opened is not None and (opened.status, event) == (dw.OPEN, dw.OPENED)
    # New data is quiet: the window's drift was one stretch of bad luck. Dismissed.
    gone, event = dw.step_alert(pending, finding({"x[3]": ("a",)}), found, 130.0, POLICY,
                                finding({}))  # fmt: skip
    assert gone is not None and (gone.status, event) == (dw.DISMISSED, None)
