"""Refuse request bodies over EDGEFLEET_MAX_UPLOAD_BYTES before they are spooled to disk.

A declared ``Content-Length`` over the limit is answered 413 at once, without reading
the body; a chunked body is counted as it streams and cut off when it passes the limit.
(Starlette's own limiter answers in plain text; the API answers JSON everywhere.)
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a streamed body passes the limit."""


def too_large_message(limit: int) -> str:
    return f"request body is over the EDGEFLEET_MAX_UPLOAD_BYTES limit ({limit} bytes)"


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int, reported_limit: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.reported_limit = reported_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse(
                {"detail": too_large_message(self.reported_limit)}, status_code=413
            )
            await response(scope, receive, send)
            return
        total = 0

        async def limited_receive() -> Message:
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.max_bytes:
                    raise BodyTooLarge(too_large_message(self.reported_limit))
            return message

        await self.app(scope, limited_receive, send)
