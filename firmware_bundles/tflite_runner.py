"""The TFLite backend: ``ai_edge_litert``'s ``Interpreter``, else ``tflite_runtime``'s.

Both packages expose the same ``Interpreter`` API. ai-edge-litert is the maintained
successor and works with numpy 2; tflite-runtime 2.14 (the last release, no wheel past
Python 3.11) needs numpy < 2: with numpy 2 it imports but ``Interpreter()`` fails at
construction. So a backend counts as available only once it has *constructed* an
interpreter for the model; one that fails is skipped and its error kept for the message.

Threads: a TFLite ``Interpreter`` is not safe to use from two threads at once (its
input and output tensors are shared state). The runner keeps a small pool of
interpreters, each used by one thread at a time: calls run in parallel up to the pool
size (``invoke`` releases the GIL) and wait beyond it, so memory stays bounded however
many HTTP threads the agent runs. A lock around one interpreter would serialise every
call; an interpreter per thread would grow with the server's connection threads.
"""

from __future__ import annotations

import importlib
import queue
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from firmware_bundles.errors import BundleError
from firmware_bundles.manifest import TensorSpec
from firmware_bundles.runtimes import RuntimeLoadError

# Module holding ``Interpreter``, in order of preference.
BACKENDS = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")
DEFAULT_POOL_SIZE = 2
# A caller waiting for a free interpreter re-checks the pool this often.
_WAIT_S = 0.1

_DTYPES = {
    np.dtype(name): name
    for name in ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64")
}
_DTYPES[np.dtype(bool)] = "bool"


class TfliteLoadError(RuntimeLoadError):
    """No TFLite backend could load the model (the message says why for each)."""


class TfliteRunError(BundleError):
    """An input does not fit the model, or the interpreter failed while running."""


def _spec(detail: Mapping[str, Any]) -> TensorSpec:
    dtype = _DTYPES.get(np.dtype(detail["dtype"]))
    if dtype is None:
        raise TfliteLoadError(f"tensor {detail['name']!r} has unsupported type {detail['dtype']}")
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    return TensorSpec(
        name=str(detail["name"]),
        dtype=dtype,
        shape=tuple(None if int(d) < 0 else int(d) for d in dims),
    )


class _Slot:
    """One interpreter and the input shapes its tensors are allocated for."""

    def __init__(self, interpreter: Any) -> None:
        self.interpreter = interpreter
        interpreter.allocate_tensors()
        self.inputs = {d["name"]: d["index"] for d in interpreter.get_input_details()}
        self.outputs = [(d["name"], d["index"]) for d in interpreter.get_output_details()]
        self.shapes = {d["index"]: tuple(d["shape"]) for d in interpreter.get_input_details()}


class TfliteRunner:
    """A ``.tflite`` model behind the :class:`~firmware_bundles.runtimes.ModelRunner` API.

    Args:
        model_path: The ``.tflite`` file (memory-mapped by the interpreter).
        threads: Threads each interpreter may use for one inference.
        pool_size: Most interpreters kept, i.e. most inferences running at once.
        backends: Modules to try for ``Interpreter``, in order (tests pin one).
    """

    def __init__(
        self,
        model_path: Path,
        *,
        threads: int = 1,
        pool_size: int = DEFAULT_POOL_SIZE,
        backends: Sequence[str] = BACKENDS,
    ) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        self._path = model_path
        self._threads = threads
        self._pool_size = pool_size
        self.backend, first = self._first_interpreter(model_path, backends)
        details = first.interpreter
        self.inputs = tuple(_spec(d) for d in details.get_input_details())
        self.outputs = tuple(_spec(d) for d in details.get_output_details())
        names = [s.name for s in self.inputs] + [s.name for s in self.outputs]
        if len(set(names)) != len(names):
            raise TfliteLoadError(f"{model_path.name}: tensor names repeat: {names}")
        self._free: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        self._free.put(first)
        self._created = 1
        self._grow_lock = threading.Lock()

    def _first_interpreter(self, path: Path, backends: Sequence[str]) -> tuple[str, _Slot]:
        problems = []
        for module_name in backends:
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                problems.append(f"{module_name}: not installed ({exc})")
                continue
            try:
                return module_name, _Slot(self._construct(module, path))
            except Exception as exc:  # the wrappers raise ValueError, RuntimeError, ...
                problems.append(f"{module_name}: {type(exc).__name__}: {exc}")
        raise TfliteLoadError(
            f"no TFLite runtime could load {path.name}: " + "; ".join(problems) + " "
            "(install ai-edge-litert: pip install 'edgefleet[tflite]'; tflite-runtime "
            "2.14 works only with numpy < 2)"
        )

    def _construct(self, module: Any, path: Path) -> Any:
        return module.Interpreter(model_path=str(path), num_threads=self._threads)

    def _take(self) -> _Slot:
        while True:
            try:
                return self._free.get_nowait()
            except queue.Empty:
                pass
            with self._grow_lock:
                grow = self._created < self._pool_size
                if grow:
                    self._created += 1
            if grow:
                try:
                    module = importlib.import_module(self.backend)
                    return _Slot(self._construct(module, self._path))
                except Exception:
                    with self._grow_lock:
                        self._created -= 1
                    raise
            try:  # wait for a busy interpreter to come back ...
                return self._free.get(timeout=_WAIT_S)
            except queue.Empty:
                continue  # ... or for a failed one to free its place in the pool

    def run(self, feeds: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        """Run one inference; safe from several threads (see the module docstring).

        A batch size other than the one the interpreter is allocated for resizes its
        input (``resize_tensor_input``), which the model allows where its signature
        says -1; a fixed dimension that differs is refused with the tensor named.
        """
        for spec in self.inputs:
            value = feeds.get(spec.name)
            if value is None:
                raise TfliteRunError(f"missing input {spec.name!r}")
            self._check_shape(spec, value.shape)
        slot = self._take()
        healthy = False
        try:
            result = self._run_on(slot, feeds)
            healthy = True
            return result
        finally:
            if healthy:
                self._free.put(slot)
            else:  # an interpreter that failed mid-call is not trusted again
                with self._grow_lock:
                    self._created -= 1

    def _run_on(
        self, slot: _Slot, feeds: Mapping[str, npt.NDArray[Any]]
    ) -> dict[str, npt.NDArray[Any]]:
        interpreter = slot.interpreter
        resized = False
        try:
            for spec in self.inputs:
                value = feeds[spec.name]
                index = slot.inputs[spec.name]
                if value.shape != slot.shapes[index]:
                    interpreter.resize_tensor_input(index, list(value.shape), strict=True)
                    slot.shapes[index] = value.shape
                    resized = True
            if resized:
                interpreter.allocate_tensors()
            for spec in self.inputs:
                array = np.ascontiguousarray(feeds[spec.name], dtype=spec.dtype)
                interpreter.set_tensor(slot.inputs[spec.name], array)
            interpreter.invoke()
            # get_tensor copies: the result outlives the interpreter's next call.
            return {name: interpreter.get_tensor(index) for name, index in slot.outputs}
        except (ValueError, RuntimeError) as exc:
            raise TfliteRunError(f"TFLite inference failed: {exc}") from exc

    @staticmethod
    def _check_shape(spec: TensorSpec, shape: tuple[int, ...]) -> None:
        fits = len(shape) == len(spec.shape) and all(
            want is None or got == want for got, want in zip(shape, spec.shape, strict=True)
        )
        if not fits:
            raise TfliteRunError(
                f"input {spec.name!r} has shape {list(shape)}, model expects "
                f"{[d if d is not None else 'N' for d in spec.shape]}"
            )
