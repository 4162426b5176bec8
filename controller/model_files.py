"""Is an uploaded file really the model its name claims? ONNX or TFLite, checked by content.

A ``.onnx`` file must parse as an ONNX ``ModelProto`` with a graph; a ``.tflite`` file
must carry the ``TFL3`` FlatBuffer file identifier at bytes 4..8. A wrong guess here
would only surface on every device at health-check time.
"""

from __future__ import annotations

from pathlib import Path, PurePath

from controller.blobstore import BlobStore
from controller.errors import InvalidRequestError
from controller.models import ModelVersion
from firmware_bundles.builder import MODEL_FILE_NAMES

RUNTIME_BY_SUFFIX = {".onnx": "onnxruntime", ".tflite": "tflite"}
TFLITE_IDENTIFIER = b"TFL3"


def runtime_for_filename(filename: str) -> str:
    """``model.onnx`` -> ``onnxruntime``; ``model.tflite`` -> ``tflite``."""
    suffix = PurePath(filename).suffix.lower()
    runtime = RUNTIME_BY_SUFFIX.get(suffix)
    if runtime is None:
        raise InvalidRequestError(
            f"file {filename!r} is neither .onnx nor .tflite: cannot tell its runtime"
        )
    return runtime


def check_model_file(path: Path, runtime: str, filename: str) -> None:
    """Raise :class:`InvalidRequestError` unless ``path`` holds a ``runtime`` model."""
    if runtime == "tflite":
        with path.open("rb") as handle:
            head = handle.read(8)
        if len(head) < 8 or head[4:8] != TFLITE_IDENTIFIER:
            raise InvalidRequestError(
                f"file {filename!r} is not a TFLite model (no 'TFL3' identifier at bytes 4..8)"
            )
        return
    if runtime == "onnxruntime":
        _check_onnx(path, filename)
        return
    raise InvalidRequestError(f"unknown runtime {runtime!r}")


def _check_onnx(path: Path, filename: str) -> None:
    import onnx  # heavy: imported only when a model is uploaded

    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends, untyped
        raise InvalidRequestError(f"file {filename!r} is not an ONNX model: {exc}") from exc
    # Protobuf accepts many byte strings (even an empty one) as an empty message.
    if model.ir_version <= 0 or not model.graph.output:
        raise InvalidRequestError(
            f"file {filename!r} is not an ONNX model: no IR version or no graph outputs"
        )


def link_model_file(store: BlobStore, version: ModelVersion, work: Path) -> Path:
    """A path under ``work`` for ``version``'s model file, named so that its runtime can
    be told from its suffix (the blob store keeps bare digests)."""
    path = work / MODEL_FILE_NAMES[version.runtime]
    path.symlink_to(store.existing_path(version.sha256).resolve())
    return path
