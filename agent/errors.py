"""Agent errors. ``UpdateError.code`` is the short reason reported to the controller."""

from __future__ import annotations

from firmware_bundles.blob_encoding import DecodeError
from firmware_bundles.errors import (
    BundleError,
    DigestMismatchError,
    EdgeFleetError,
    ExpiredBundleError,
    ManifestError,
    MissingFileError,
    RollbackError,
    SignatureError,
    SizeMismatchError,
)
from firmware_bundles.runtimes import RuntimeLoadError


class AgentError(EdgeFleetError):
    """Something the agent could not do."""


class UpdateError(AgentError):
    """An update failed; the device stays on (or returns to) its previous model."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class NoModelError(AgentError):
    """Inference was asked for before any model was active."""


class InvalidInputError(AgentError):
    """Inference inputs do not match the model's input spec."""


_CODES: tuple[tuple[type[Exception], str], ...] = (
    (SignatureError, "signature"),
    (DigestMismatchError, "digest_mismatch"),
    (DecodeError, "decode_failed"),
    (SizeMismatchError, "size_mismatch"),
    (ExpiredBundleError, "expired"),
    (RollbackError, "rollback_refused"),
    (MissingFileError, "missing_file"),
    (ManifestError, "manifest"),
    (RuntimeLoadError, "model_load"),
    (BundleError, "bundle"),
)


def error_code(exc: BaseException) -> str:
    """Short machine-readable reason for ``exc``."""
    if isinstance(exc, UpdateError):
        return exc.code
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return "internal"
