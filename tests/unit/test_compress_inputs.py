"""Evaluation inputs: generated from the spec, or loaded from .npz with clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compress import InputsError, generate_inputs, input_specs, load_model, load_npz
from compress.inputs import InputSpec
from tests.unit.conftest_compress import conv_net, gemm_mlp


def test_generated_inputs_fill_symbolic_dims_with_one_and_are_seeded() -> None:
    specs = [
        InputSpec("x", np.dtype(np.float32), ("batch", 3, None)),
        InputSpec("ids", np.dtype(np.int64), ("batch", 5)),
        InputSpec("mask", np.dtype(np.bool_), (2,)),
    ]
    first = generate_inputs(specs, samples=3, seed=7)
    again = generate_inputs(specs, samples=3, seed=7)
    other = generate_inputs(specs, samples=3, seed=8)
    assert len(first.feeds) == 3 and first.samples == 3
    feed = first.feeds[0]
    assert feed["x"].shape == (1, 3, 1) and feed["x"].dtype == np.float32
    assert feed["ids"].shape == (1, 5) and feed["ids"].dtype == np.int64
    assert set(np.unique(feed["ids"])) <= {0, 1}
    assert feed["mask"].dtype == np.bool_
    np.testing.assert_array_equal(first.feeds[2]["x"], again.feeds[2]["x"])
    assert not np.array_equal(first.feeds[0]["x"], other.feeds[0]["x"])


def test_generated_inputs_refuse_unsupported_dtype() -> None:
    with pytest.raises(InputsError, match="'s'.*dtype <U3"):
        generate_inputs([InputSpec("s", np.dtype("<U3"), (1,))])


def test_npz_batch_is_chunked_and_labels_kept(tmp_path: Path) -> None:
    specs = input_specs(load_model(gemm_mlp(tmp_path / "m.onnx")))
    x = np.random.default_rng(0).standard_normal((70, 32))  # float64: cast to float32
    np.savez(tmp_path / "e.npz", x=x, labels=np.arange(70) % 10)
    eval_set = load_npz(tmp_path / "e.npz", specs, batch_size=32)
    assert [f["x"].shape[0] for f in eval_set.feeds] == [32, 32, 6]
    assert eval_set.feeds[0]["x"].dtype == np.float32
    assert eval_set.samples == 70 and eval_set.labels is not None
    assert eval_set.latency_feed()["x"].shape == (1, 32)


def test_npz_stack_of_samples_for_fixed_shape_model(tmp_path: Path) -> None:
    specs = [InputSpec("img", np.dtype(np.float32), (1, 3, 8, 8))]
    np.savez(tmp_path / "s.npz", img=np.zeros((5, 1, 3, 8, 8), np.float32))
    eval_set = load_npz(tmp_path / "s.npz", specs)
    assert eval_set.stacked and len(eval_set.feeds) == 5
    assert eval_set.feeds[0]["img"].shape == (1, 3, 8, 8)


def test_npz_single_input_under_another_name(tmp_path: Path) -> None:
    specs = input_specs(load_model(conv_net(tmp_path / "c.onnx")))
    np.savez(tmp_path / "e.npz", images=np.zeros((2, 3, 16, 16), np.float32))
    assert load_npz(tmp_path / "e.npz", specs).feeds[0]["x"].shape == (2, 3, 16, 16)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 3, 16, 15), np.float32)}, r"axis 3: 15 != 16"),
        ({"x": np.zeros((3, 16, 16), np.float32)}, r"must have rank 4 or 5"),
        ({"x": np.zeros((4, 3, 16, 16), np.int32)}, r"dtype int32, the model wants float32"),
        (
            {"x": np.zeros((4, 3, 16, 16), np.float32), "labels": np.zeros(3, np.int64)},
            r"3 labels for 4 samples",
        ),
        (
            {"x": np.zeros((4, 3, 16, 16), np.float32), "labels": np.zeros(4, np.float32)},
            r"'labels' must be a 1-D integer array",
        ),
    ],
)
def test_npz_that_does_not_fit_is_refused_with_the_reason(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    specs = input_specs(load_model(conv_net(tmp_path / "c.onnx")))
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputsError, match=message):
        load_npz(tmp_path / "bad.npz", specs)


def test_npz_missing_input_names_what_is_there(tmp_path: Path) -> None:
    specs = [
        InputSpec("a", np.dtype(np.float32), ("N", 2)),
        InputSpec("b", np.dtype(np.float32), ("N", 2)),
    ]
    np.savez(tmp_path / "e.npz", a=np.zeros((1, 2), np.float32), c=np.zeros((1, 2)))
    with pytest.raises(InputsError, match=r"missing input\(s\) \['b'\].*\['a', 'c'\]"):
        load_npz(tmp_path / "e.npz", specs)


def test_npz_missing_or_garbage_file(tmp_path: Path) -> None:
    specs = [InputSpec("a", np.dtype(np.float32), ("N", 2))]
    with pytest.raises(InputsError, match="not found"):
        load_npz(tmp_path / "nope.npz", specs)
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(InputsError, match="not a readable .npz"):
        load_npz(tmp_path / "junk.npz", specs)
