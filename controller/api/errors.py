"""The one place where errors become HTTP answers: ``{"detail": "<what was wrong>"}``.

Services raise :class:`~controller.errors.ServiceError` (each subclass carries its
status code); bundle verification raises :class:`~firmware_bundles.errors.BundleError`
(422). Request validation errors are flattened into one readable sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller.api.body_limit import BodyTooLarge, too_large_message
from controller.errors import ServiceError
from firmware_bundles.errors import BundleError, EdgeFleetError


def _answer(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail}, headers=headers)


def _where(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie", "form"):
        place, rest = parts[0], parts[1:]
        return f"'{'.'.join(rest)}' ({place})" if rest else place
    return f"'{'.'.join(parts)}'"


def describe_validation_errors(errors: Sequence[Any]) -> str:
    """``[{loc, msg, ...}]`` -> ``"field 'version' (body): Field required; ..."``."""
    sentences = []
    for error in errors[:10]:
        loc = error.get("loc", ())
        kind = error.get("type", "")
        msg = error.get("msg", "invalid")
        if kind == "missing":
            sentences.append(f"missing field {_where(loc)}")
        elif kind == "extra_forbidden":
            sentences.append(f"unknown field {_where(loc)}")
        else:
            sentences.append(f"field {_where(loc)}: {msg}")
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return "; ".join(sentences) + more


def install_error_handlers(app: FastAPI, *, max_body_bytes: int) -> None:
    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return _answer(exc.status_code, str(exc))

    async def bundle_error(request: Request, exc: Exception) -> JSONResponse:
        return _answer(422, str(exc))

    async def other_error(request: Request, exc: Exception) -> JSONResponse:
        return _answer(400, str(exc))

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _answer(422, describe_validation_errors(exc.errors()))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = str(exc.detail)
        if exc.status_code == 413 or isinstance(exc.__cause__, BodyTooLarge):
            # FastAPI reports any failure while reading the body as a 400; the cause says why.
            return _answer(413, too_large_message(max_body_bytes))
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            detail = f"method {request.method} is not allowed on {request.url.path}"
        return _answer(exc.status_code, detail, getattr(exc, "headers", None))

    async def body_too_large(request: Request, exc: Exception) -> JSONResponse:
        return _answer(413, too_large_message(max_body_bytes))

    app.add_exception_handler(BodyTooLarge, body_too_large)
    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(BundleError, bundle_error)
    app.add_exception_handler(EdgeFleetError, other_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
