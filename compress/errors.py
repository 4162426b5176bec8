"""Errors raised by the compression package.

::

    EdgeFleetError                      (firmware_bundles.errors)
     +-- CompressError                  anything the compression package refuses
          +-- ModelLoadError            a model file that is missing or is not ONNX
          +-- UnsupportedModelError     a model a pass cannot handle (op, dtype, opset)
          +-- InputsError               evaluation/calibration inputs that do not fit the model
          +-- UnknownMethodError        a method or recipe name that does not exist
          +-- ConstraintsNotMetError    no candidate recipe met every constraint

Every message names what was wrong and with what value, so the CLI can print it as is.
"""

from __future__ import annotations

from firmware_bundles.errors import EdgeFleetError


class CompressError(EdgeFleetError):
    """Root of every error the compression package raises on purpose."""


class ModelLoadError(CompressError):
    """The model file is missing, unreadable, or not a valid ONNX model."""


class UnsupportedModelError(CompressError):
    """The model uses something a pass cannot handle (an op, a dtype, an opset)."""


class InputsError(CompressError):
    """Evaluation or calibration inputs are missing, malformed, or do not fit the model."""


class UnknownMethodError(CompressError):
    """A compression method or recipe name that does not exist."""


class ConstraintsNotMetError(CompressError):
    """No candidate recipe met every constraint given to ``auto``.

    Attributes:
        failed: For each constraint, how many candidates it rejected; the constraint that
            rejected the most is named in the message.
        table: The full candidate table (JSON-serialisable dicts) that was measured.
        table_text: The same table as aligned text, for a terminal.
    """

    def __init__(
        self,
        message: str,
        *,
        failed: dict[str, int] | None = None,
        table: list[dict[str, object]] | None = None,
        table_text: str = "",
    ) -> None:
        super().__init__(message)
        self.failed = dict(failed or {})
        self.table = list(table or [])
        self.table_text = table_text
