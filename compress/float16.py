"""fp16 conversion: half the weight bytes, float precision everywhere that matters.

onnxruntime's own converter (``onnxruntime.transformers.float16``) is preferred because it
rewrites ``Cast`` nodes consistently; onnxconverter-common's converter leaves graphs with
Cast nodes type-inconsistent (*measured*), and is only the fallback when the former is
missing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import onnx

from compress.errors import CompressError, UnsupportedModelError
from compress.graph_edits import sort_topologically

log = logging.getLogger(__name__)


def _converter() -> tuple[Any, list[str], str]:
    """The converter function, its default op block list, and its name."""
    try:
        from onnxruntime.transformers import float16 as ort_float16

        return (
            ort_float16.convert_float_to_float16,
            list(ort_float16.DEFAULT_OP_BLOCK_LIST),
            "onnxruntime.transformers.float16",
        )
    except ImportError:  # pragma: no cover - depends on the onnxruntime build
        from onnxconverter_common import float16 as occ_float16

        return (
            occ_float16.convert_float_to_float16,
            list(occ_float16.DEFAULT_OP_BLOCK_LIST),
            "onnxconverter_common.float16",
        )


def fp16_converter_name() -> str:
    """Which converter :func:`convert_to_fp16` uses in this environment."""
    return _converter()[2]


def convert_to_fp16(
    model: onnx.ModelProto,
    *,
    keep_io_types: bool = True,
    op_block_list: Sequence[str] = (),
    node_block_list: Sequence[str] = (),
) -> onnx.ModelProto:
    """Convert float32 weights and compute to float16.

    Args:
        model: The model; not modified.
        keep_io_types: Keep graph inputs and outputs float32 (Casts are inserted), so
            callers and golden files need no change.
        op_block_list: Op types to keep in float32, on top of the converter's default list
            (ops with no fp16 kernel, such as TopK and NonMaxSuppression).
        node_block_list: Node names to keep in float32.

    Returns:
        The converted model.

    Raises:
        UnsupportedModelError: The converter fails on the model.
    """
    convert, default_block, name = _converter()
    source = onnx.ModelProto()
    source.CopyFrom(model)
    try:
        converted = convert(
            source,
            keep_io_types=keep_io_types,
            op_block_list=default_block + [op for op in op_block_list if op not in default_block],
            node_block_list=list(node_block_list) or None,
        )
    except CompressError:
        raise
    except Exception as exc:
        raise UnsupportedModelError(
            f"fp16 conversion with {name} failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(converted, onnx.ModelProto):
        raise UnsupportedModelError(f"fp16 conversion with {name} returned {type(converted)}")
    # The converter appends the input Casts after the nodes that read them.
    sort_topologically(converted.graph)
    return converted
