"""Model runtimes behind one small interface.

The bundle's ``runtime`` field picks the backend: ``onnxruntime`` or ``tflite``
(:mod:`firmware_bundles.tflite_runner`: ai-edge-litert, else tflite-runtime). Heavy
imports happen inside :func:`load_runner`, so importing this module costs nothing on a
device that never loads that backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy.typing as npt

from firmware_bundles.errors import BundleError
from firmware_bundles.manifest import TensorSpec

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


class RuntimeLoadError(BundleError):
    """The runtime could not load the model file."""


class ModelRunner(Protocol):
    """A loaded model. ``run`` must be safe to call from several threads."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(self, feeds: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]: ...


def _spec(node: Any) -> TensorSpec:
    dtype = _ORT_TYPES.get(node.type)
    if dtype is None:
        raise RuntimeLoadError(f"tensor {node.name!r} has unsupported type {node.type}")
    shape = tuple(d if isinstance(d, int) else None for d in node.shape)
    return TensorSpec(name=node.name, dtype=dtype, shape=shape)


class OnnxRunner:
    """onnxruntime ``InferenceSession`` on the CPU provider."""

    def __init__(self, model_path: Path, *, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise RuntimeLoadError(f"onnxruntime cannot load {model_path.name}: {exc}") from exc
        self.inputs = tuple(_spec(n) for n in self._session.get_inputs())
        self.outputs = tuple(_spec(n) for n in self._session.get_outputs())
        self._output_names = [o.name for o in self.outputs]

    def run(self, feeds: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        results = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, results, strict=True))


def load_runner(runtime: str, model_path: Path, *, threads: int = 1) -> ModelRunner:
    """Load ``model_path`` with the backend the bundle names."""
    if runtime == "onnxruntime":
        return OnnxRunner(model_path, threads=threads)
    if runtime == "tflite":
        from firmware_bundles.tflite_runner import TfliteRunner

        return TfliteRunner(model_path, threads=threads)
    raise RuntimeLoadError(f"runtime {runtime!r} is not available in this build")
