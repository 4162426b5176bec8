"""onnxruntime sessions: creating them from model bytes, running inputs, timing runs.

The only module besides the quantizers that talks to onnxruntime, so load failures are
mapped to :class:`CompressError` in one place.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import onnxruntime as ort

from compress.errors import CompressError, InputsError
from compress.inputs import Array, EvalSet, Feed
from compress.measurements import LatencyResult

# Idle intra-op threads spin-wait for work by default. With two sessions timed in turns on
# two cores, the idle session's spinning threads would compete for the cores the running
# one needs, so timing sessions do not spin.
_NO_SPIN = ("session.intra_op.allow_spinning", "0")


def create_session(model: bytes, *, threads: int = 1, what: str = "model") -> Any:
    """An onnxruntime CPU session for ``model``.

    Args:
        model: Serialised ONNX model.
        threads: intra-op thread count.
        what: How to name the model in error messages.

    Returns:
        An ``onnxruntime.InferenceSession``.

    Raises:
        CompressError: onnxruntime refuses the model.
    """
    if threads < 1:
        raise CompressError(f"threads must be at least 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.add_session_config_entry(*_NO_SPIN)
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CompressError(
            f"{what} does not load in onnxruntime {ort.__version__}: {type(exc).__name__}: {exc}"
        ) from exc


def output_names(session: Any) -> list[str]:
    """Names of a session's outputs, in graph order."""
    return [str(o.name) for o in session.get_outputs()]


def run_feed(session: Any, feed: Feed, *, what: str = "model") -> list[Array]:
    """Run one feed; map onnxruntime failures to :class:`InputsError`."""
    try:
        return [np.asarray(o) for o in session.run(None, feed)]
    except Exception as exc:
        shapes = {name: (str(arr.dtype), arr.shape) for name, arr in feed.items()}
        raise InputsError(f"{what} failed on inputs {shapes}: {type(exc).__name__}: {exc}") from exc


def run_eval_set(session: Any, eval_set: EvalSet, *, what: str = "model") -> dict[str, Array]:
    """Run every feed and gather each output with samples along axis 0.

    Returns:
        ``{output name: array}``, each of shape ``[samples, ...]``.
    """
    names = output_names(session)
    parts: dict[str, list[Array]] = {name: [] for name in names}
    for feed in eval_set.feeds:
        for name, value in zip(names, run_feed(session, feed, what=what), strict=True):
            parts[name].append(value)
    gathered: dict[str, Array] = {}
    for name, values in parts.items():
        if eval_set.stacked or any(v.ndim == 0 for v in values):
            arr = np.stack(values)
            # A per-sample feed with a batch axis of 1 gives [samples, 1, ...]: drop the 1.
            if arr.ndim >= 2 and arr.shape[1] == 1:
                arr = arr.reshape(arr.shape[:1] + arr.shape[2:])
        else:
            arr = np.concatenate(values, axis=0)
        gathered[name] = arr
    return gathered


def measure_latency(
    original: bytes,
    candidate: bytes,
    feed: Feed,
    *,
    runs: int = 50,
    threads: int = 1,
    warmup: int = 3,
) -> LatencyResult:
    """Time both models on ``feed``, alternating which goes first, and take medians.

    Interleaving in one run means a noisy neighbour or a CPU frequency change hits both
    models alike, so the ratio stays honest even when absolute times drift.

    Args:
        original: Serialised original model.
        candidate: Serialised candidate model.
        feed: One feed (see :meth:`EvalSet.latency_feed`).
        runs: Timed runs per model.
        threads: intra-op thread count of both sessions.
        warmup: Untimed runs per model before timing.

    Returns:
        Medians and their ratio.

    Raises:
        CompressError: ``runs`` below 1 or a model does not load.
    """
    if runs < 1:
        raise CompressError(f"runs must be at least 1, got {runs}")
    sessions = (
        create_session(original, threads=threads, what="original model"),
        create_session(candidate, threads=threads, what="candidate model"),
    )
    for session in sessions:
        for _ in range(max(warmup, 0)):
            run_feed(session, feed)
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(runs):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for which in order:
            start = time.perf_counter()
            sessions[which].run(None, feed)
            times[which].append((time.perf_counter() - start) * 1000.0)
    original_ms = statistics.median(times[0])
    candidate_ms = statistics.median(times[1])
    ratio = candidate_ms / original_ms if original_ms > 0 else float("inf")
    return LatencyResult(threads, runs, original_ms, candidate_ms, ratio)
