"""Reading and writing ONNX model files, with every failure mapped to a CompressError.

This is the one place that turns a path into an ``onnx.ModelProto`` and back, so the rest
of the package works on in-memory models and never has to think about protobuf errors,
missing files or half-written outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from compress.errors import ModelLoadError
from firmware_bundles.bundle_dir import atomic_write

# Protobuf refuses to serialise a single message past 2 GiB; such models need external data.
_PROTOBUF_LIMIT = 2**31 - 1


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX model from ``path``.

    Args:
        path: Path of an ``.onnx`` file.

    Returns:
        The parsed model, with any external data loaded.

    Raises:
        ModelLoadError: The file is missing, unreadable, or does not hold an ONNX model.
    """
    model_path = Path(path)
    if not model_path.is_file():
        raise ModelLoadError(f"model file not found: {str(model_path)!r}")
    try:
        model = onnx.load(str(model_path))
    except Exception as exc:  # protobuf DecodeError, OSError, external-data errors
        raise ModelLoadError(
            f"{str(model_path)!r} is not a readable ONNX model: {type(exc).__name__}: {exc}"
        ) from exc
    return check_model_shape(model, str(model_path))


def model_from_bytes(data: bytes, what: str = "model bytes") -> onnx.ModelProto:
    """Parse a serialised ONNX model.

    Args:
        data: The serialised ``ModelProto``.
        what: How to name the source in error messages.

    Returns:
        The parsed model.

    Raises:
        ModelLoadError: The bytes are not an ONNX model.
    """
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:
        raise ModelLoadError(f"{what} is not an ONNX model: {type(exc).__name__}: {exc}") from exc
    return check_model_shape(model, what)


def check_model_shape(model: onnx.ModelProto, what: str) -> onnx.ModelProto:
    """Refuse a parsed protobuf that is not plausibly an ONNX model.

    Protobuf parses many arbitrary byte strings without error (a text file can decode as
    an empty message), so a successful parse alone proves nothing.
    """
    if not model.graph.output or not model.opset_import:
        raise ModelLoadError(
            f"{what} is not an ONNX model: it has {len(model.graph.output)} graph outputs and "
            f"{len(model.opset_import)} opset imports (both must be at least 1)"
        )
    return model


def model_to_bytes(model: onnx.ModelProto) -> bytes:
    """Serialise a model, refusing one too large for a single protobuf message."""
    size = model.ByteSize()
    if size > _PROTOBUF_LIMIT:
        raise ModelLoadError(
            f"model is {size} bytes, over protobuf's {_PROTOBUF_LIMIT}-byte limit; "
            "models that need external data are not supported"
        )
    return bytes(model.SerializeToString())


def write_bytes_atomic(data: bytes, path: str | os.PathLike[str]) -> Path:
    """Write ``data`` to ``path`` through a temp file and ``os.replace``.

    A crash mid-write leaves either the old file or the new one, never a torn model that a
    later step (signing a bundle) would pick up.
    """
    target = Path(path)
    atomic_write(target, data)
    return target


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Serialise ``model`` and write it atomically to ``path``.

    Returns:
        The path written.
    """
    return write_bytes_atomic(model_to_bytes(model), path)
