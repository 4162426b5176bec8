"""Agreement metrics, latency and sizes measure what they claim to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compress import (
    InputsError,
    Reference,
    compare_outputs,
    evaluate_candidate,
    generate_inputs,
    input_specs,
    load_model,
    measure_latency,
)
from tests.unit.conftest_compress import gemm_mlp


def test_identical_outputs_agree_perfectly() -> None:
    logits = np.random.default_rng(0).standard_normal((50, 10))
    agreement = compare_outputs({"y": logits}, {"y": logits.copy()})
    assert agreement.cosine_similarity == pytest.approx(1.0)
    assert agreement.max_abs_diff == 0.0
    assert agreement.top1_agreement == 1.0


def test_top1_agreement_counts_changed_predictions() -> None:
    logits = np.eye(10)[np.arange(20) % 10] * 5.0  # sample i predicts class i % 10
    changed = logits.copy()
    changed[:5] = np.roll(changed[:5], 1, axis=1)  # 5 of 20 predictions move
    agreement = compare_outputs({"y": logits}, {"y": changed})
    assert agreement.top1_agreement == pytest.approx(0.75)
    assert agreement.max_abs_diff == pytest.approx(5.0)
    assert agreement.outputs[0].min_cosine_similarity == pytest.approx(0.0)


def test_accuracy_with_labels() -> None:
    labels = np.arange(20) % 10
    logits = np.eye(10)[labels]
    worse = logits.copy()
    worse[:4] = np.roll(worse[:4], 1, axis=1)
    agreement = compare_outputs({"y": logits}, {"y": worse}, labels)
    assert agreement.accuracy_original == 1.0
    assert agreement.accuracy_candidate == pytest.approx(0.8)
    assert agreement.accuracy_drop == pytest.approx(0.2)


def test_labels_without_a_class_axis_are_refused() -> None:
    feature_map = np.zeros((4, 3, 5, 5))
    with pytest.raises(InputsError, match="no output has a class axis"):
        compare_outputs({"f": feature_map}, {"f": feature_map}, np.zeros(4, np.int64))


def test_nan_in_candidate_is_infinitely_far() -> None:
    a = np.ones((3, 4))
    b = a.copy()
    b[1, 2] = np.nan
    agreement = compare_outputs({"y": a}, {"y": b})
    assert agreement.max_abs_diff == float("inf")
    assert agreement.to_dict()["max_abs_diff"] is None  # JSON has no inf


def test_evaluate_candidate_against_itself(tmp_path: Path) -> None:
    path = gemm_mlp(tmp_path / "m.onnx")
    data = path.read_bytes()
    eval_set = generate_inputs(input_specs(load_model(path)), samples=8)
    evaluation = evaluate_candidate(Reference.build(data, eval_set), data, runs=5, threads=(1, 2))
    assert evaluation.sizes.ratio == 1.0 and evaluation.sizes.zstd_ratio == 1.0
    assert evaluation.sizes.candidate_zstd_bytes < evaluation.sizes.candidate_bytes
    assert evaluation.agreement.cosine_similarity == pytest.approx(1.0)
    assert [r.threads for r in evaluation.latency] == [1, 2]
    assert all(r.original_ms > 0 and r.candidate_ms > 0 for r in evaluation.latency)


def test_latency_sees_a_slower_model(tmp_path: Path) -> None:
    small = gemm_mlp(tmp_path / "small.onnx", inputs=256, hidden=16).read_bytes()
    big = gemm_mlp(tmp_path / "big.onnx", inputs=256, hidden=4096).read_bytes()
    feed = {"x": np.ones((1, 256), np.float32)}
    result = measure_latency(small, big, feed, runs=30)
    assert result.ratio > 2.0, result
