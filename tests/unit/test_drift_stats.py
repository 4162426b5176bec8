"""Drift statistics: exact merging, agreement with direct computation, and error rates."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from controller.drift_stats import (
    FeatureBins,
    benjamini_hochberg,
    detect_drift,
    evidently_shares,
    hellinger,
    jensen_shannon,
    ks_binned,
    psi,
)
from firmware_bundles.drift_reference import (
    ExtractorConfig,
    FeatureExtractor,
    bucket_counts,
    build_reference,
)
from firmware_bundles.manifest import TensorSpec

SPEC = (TensorSpec("x", "float32", (None, 10)),)
OUT = (TensorSpec("y", "float32", (None, 3)),)


def refs_for(sample: np.ndarray):  # type: ignore[no-untyped-def]
    extractor = FeatureExtractor(SPEC, OUT, ExtractorConfig(bins=10))
    y = sample[:, :3]
    return build_reference(extractor, {"x": sample}, {"y": y})


def numpy_psi(ref_raw: np.ndarray, cur_raw: np.ndarray, edges: np.ndarray) -> float:
    """PSI straight from raw samples, as Evidently computes it."""
    bins = np.concatenate([[-np.inf], edges, [np.inf]])
    ref = np.histogram(ref_raw, bins)[0] / len(ref_raw)
    cur = np.histogram(cur_raw, bins)[0] / len(cur_raw)
    for shares in (ref, cur):
        nonzero = shares[shares != 0]
        fill = nonzero.min() / 10**6 if nonzero.min() <= 0.0001 else 0.0001
        np.place(shares, shares == 0, fill)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.5, 2.0])
@pytest.mark.parametrize("window", [50, 500, 5000])
def test_psi_on_merged_device_windows_equals_numpy_on_raw_samples(
    shift: float, window: int
) -> None:
    rng = np.random.default_rng(int(shift * 10) + window)
    reference = rng.standard_normal((4000, 10))
    ref = refs_for(reference)["x[2]"]
    current = rng.standard_normal(window * 4) + shift
    # Four devices, uneven windows each: merged counts are the plain sum.
    merged = np.zeros(ref.buckets, dtype=np.int64)
    for part in np.array_split(current, [window // 3, window, 2 * window + 7]):
        merged += bucket_counts(ref, part)[0]
    assert merged.sum() == current.size
    assert merged.tolist() == bucket_counts(ref, current)[0].tolist()
    want = numpy_psi(reference[:, 2], current, np.asarray(ref.edges))
    assert psi(ref.counts, merged) == pytest.approx(want, abs=1e-9)


def test_other_distances_match_their_definitions() -> None:
    p, q = np.array([10, 0, 30, 60]), np.array([25, 25, 25, 25])
    assert jensen_shannon(p, q) == pytest.approx(jensenshannon(p / p.sum(), q / q.sum(), base=2))
    pn, qn = p / p.sum(), q / q.sum()
    assert hellinger(p, q) == pytest.approx(np.sqrt(0.5 * np.sum((np.sqrt(pn) - np.sqrt(qn)) ** 2)))
    assert ks_binned(p, q) == pytest.approx(np.max(np.abs(np.cumsum(pn) - np.cumsum(qn))))
    assert evidently_shares([0, 5, 5]).tolist() == [0.0001, 0.5, 0.5]
    assert psi([1, 1], [1, 1]) == 0.0


def test_benjamini_hochberg() -> None:
    assert benjamini_hochberg([0.01, 0.02, 0.03, 0.5], 0.05) == [True, True, True, False]
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.5], 0.05) == [True, False, False, False]
    assert benjamini_hochberg([0.02, 0.5], 0.05) == [True, False]
    assert benjamini_hochberg([0.03, 0.5], 0.05) == [False, False]


def test_no_verdict_below_the_minimum_sample_count() -> None:
    rng = np.random.default_rng(1)
    refs = refs_for(rng.standard_normal((4000, 10)))
    bins = {
        n: FeatureBins(r.counts, r.edges, r.lo, r.hi) for n, r in refs.items() if n.startswith("x")
    }
    shifted = {n: bucket_counts(refs[n], rng.standard_normal(50) + 3)[0] for n in bins}
    result = detect_drift(bins, shifted, min_samples=100)
    assert all(not f.drifted for f in result) and all(f.psi > 1 for f in result)


def alarm_rates(
    shift: float, sizes: tuple[int, ...], windows: int, seed: int
) -> dict[int, tuple[float, float]]:
    """(chi-square+BH alarm rate, fixed PSI>0.1 rule alarm rate) per window size."""
    rng = np.random.default_rng(seed)
    refs = refs_for(rng.standard_normal((5000, 10)))
    bins = {
        n: FeatureBins(r.counts, r.edges, r.lo, r.hi) for n, r in refs.items() if n.startswith("x[")
    }
    rates = {}
    for size in sizes:
        ours = fixed = 0
        for _ in range(windows):
            sample = rng.standard_normal((size, 10))
            sample[:, 3] += shift
            counts = {f"x[{j}]": bucket_counts(refs[f"x[{j}]"], sample[:, j])[0] for j in range(10)}
            result = detect_drift(bins, counts, min_samples=100)  # default alpha 0.01
            ours += any(f.drifted for f in result)
            fixed += any(f.psi > 0.1 for f in result)
        rates[size] = (ours / windows, fixed / windows)
    return rates


def test_false_alarms_below_five_percent_and_detection_above_ninety() -> None:
    quiet = alarm_rates(0.0, (100, 500, 2000), windows=400, seed=11)
    shifted = alarm_rates(0.3, (100, 500, 2000), windows=200, seed=12)
    print("\nwindow  false alarms (chi2+BH)  (PSI>0.1)   detection 0.3 sigma (chi2+BH)  (PSI>0.1)")
    for size in (100, 500, 2000):
        print(f"{size:6d}  {quiet[size][0]:22.3f}  {quiet[size][1]:9.3f}   "
              f"{shifted[size][0]:29.3f}  {shifted[size][1]:9.3f}")  # fmt: skip
    for size in (100, 500, 2000):
        assert quiet[size][0] < 0.05, (size, quiet[size])
    assert shifted[2000][0] >= 0.90
