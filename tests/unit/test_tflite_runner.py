"""The TFLite backend on real interpreters, checked against numpy.

The fixtures are written with the ``tflite`` package's FlatBuffers builders (no
TensorFlow). ai-edge-litert is a dev dependency, so CI always runs it; tflite-runtime is
tested where it is installed and can construct an interpreter (numpy < 2).
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path

import numpy as np
import pytest

from firmware_bundles.runtimes import RuntimeLoadError, load_runner
from firmware_bundles.tflite_runner import TfliteLoadError, TfliteRunError, TfliteRunner
from tests.conftest import IN_CI
from tests.tflite_models import mlp_reference, mlp_tflite, mlp_weights

LITERT = "ai_edge_litert.interpreter"
TFLITE_RUNTIME = "tflite_runtime.interpreter"


def _usable(module_name: str, model: Path) -> str | None:
    """None if ``module_name`` can run ``model`` here, else why not."""
    try:
        TfliteRunner(model, backends=(module_name,))
    except TfliteLoadError as exc:
        return str(exc)
    return None


@pytest.fixture(params=[LITERT, TFLITE_RUNTIME])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    name: str = request.param
    why = _usable(name, mlp_tflite(tmp_path / "probe.tflite"))
    if why is not None:
        if name == LITERT and IN_CI:
            pytest.fail(f"ai-edge-litert is a dev dependency and must work in CI: {why}")
        pytest.skip(why)
    return name


@pytest.mark.parametrize("softmax", [False, True])
def test_outputs_match_numpy_at_any_batch_size(backend: str, tmp_path: Path, softmax: bool) -> None:
    weights = mlp_weights(seed=4, softmax=softmax)
    runner = TfliteRunner(mlp_tflite(tmp_path / "m.tflite", weights), backends=(backend,))
    out_name = "probs" if softmax else "logits"
    assert [(s.name, s.dtype, s.shape) for s in runner.inputs] == [("x", "float32", (None, 8))]
    assert [(s.name, s.shape) for s in runner.outputs] == [(out_name, (None, 4))]
    rng = np.random.default_rng(0)
    for batch in (1, 5, 2, 1):  # growing and shrinking: resize_tensor_input each time
        x = rng.standard_normal((batch, 8)).astype(np.float32)
        got = runner.run({"x": x})[out_name]
        assert got.shape == (batch, 4)
        np.testing.assert_allclose(got, mlp_reference(weights, x), rtol=1e-5, atol=1e-5)


def test_a_fixed_batch_model_refuses_another_batch(backend: str, tmp_path: Path) -> None:
    path = mlp_tflite(tmp_path / "fixed.tflite", dynamic_batch=False)
    runner = TfliteRunner(path, backends=(backend,))
    assert runner.inputs[0].shape == (1, 8)
    with pytest.raises(
        TfliteRunError, match=r"input 'x' has shape \[2, 8\], model expects \[1, 8\]"
    ):
        runner.run({"x": np.zeros((2, 8), np.float32)})
    # The refused call left the runner usable.
    assert runner.run({"x": np.ones((1, 8), np.float32)})["logits"].shape == (1, 4)


def test_run_is_safe_from_many_threads(tmp_path: Path) -> None:
    """Eight threads, different batch sizes, one runner: every answer is its own."""
    weights = mlp_weights(seed=9, hidden=64)
    runner = TfliteRunner(mlp_tflite(tmp_path / "m.tflite", weights), pool_size=3)
    wrong: list[str] = []

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for i in range(60):
            x = rng.standard_normal((1 + (seed + i) % 6, 8)).astype(np.float32)
            got = runner.run({"x": x})["logits"]
            if got.shape != (len(x), 4) or not np.allclose(
                got, mlp_reference(weights, x), rtol=1e-4, atol=1e-4
            ):
                wrong.append(f"thread {seed} call {i}: batch {len(x)} got shape {got.shape}")

    threads = [threading.Thread(target=client, args=(s,)) for s in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not wrong, wrong[:3]
    assert 1 <= runner._created <= 3  # the pool bound holds


def test_backends_are_tried_in_order_and_every_failure_is_named(tmp_path: Path) -> None:
    model = mlp_tflite(tmp_path / "m.tflite")
    usable = [name for name in (LITERT, TFLITE_RUNTIME) if _usable(name, model) is None]
    if not usable:
        pytest.fail("no TFLite backend works here") if IN_CI else pytest.skip("no TFLite")
    runner = TfliteRunner(model, backends=("no_such_tflite_module", usable[0]))
    assert runner.backend == usable[0]
    with pytest.raises(TfliteLoadError) as info:
        TfliteRunner(model, backends=("no_such_tflite_module", "another_missing_one"))
    assert "no_such_tflite_module: not installed" in str(info.value)
    assert "another_missing_one: not installed" in str(info.value)
    assert "ai-edge-litert" in str(info.value)  # says what to install


def test_a_file_that_is_not_tflite_is_a_load_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 40)  # right identifier, no model
    with pytest.raises(RuntimeLoadError, match="bad.tflite"):
        load_runner("tflite", bad)


def test_load_runner_picks_tflite_for_the_tflite_runtime(tmp_path: Path) -> None:
    runner = load_runner("tflite", mlp_tflite(tmp_path / "m.tflite"), threads=2)
    assert isinstance(runner, TfliteRunner)
    assert runner.backend in (LITERT, TFLITE_RUNTIME)
    # the preferred backend wins whenever it is importable
    if importlib.util.find_spec("ai_edge_litert") is not None:
        assert runner.backend == LITERT


def test_an_interpreter_that_failed_mid_call_is_replaced(tmp_path: Path) -> None:
    weights = mlp_weights(seed=5)
    runner = TfliteRunner(mlp_tflite(tmp_path / "m.tflite", weights), pool_size=1)
    with pytest.raises(TfliteRunError, match="TFLite inference failed"):
        runner.run({"x": np.array([["not a number"] * 8])})
    assert runner._created == 0  # the failed one left the pool
    x = np.ones((2, 8), np.float32)
    np.testing.assert_allclose(
        runner.run({"x": x})["logits"], mlp_reference(weights, x), rtol=1e-5, atol=1e-5
    )
    assert runner._created == 1
