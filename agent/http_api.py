"""``POST /v1/infer`` and ``GET /v1/health`` on localhost, for local applications.

Standard library only (``ThreadingHTTPServer``): a device needs no web framework to
serve one JSON endpoint. Request bodies are capped; errors come back as JSON with a
4xx/5xx code and a message naming the problem.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agent.errors import InvalidInputError, NoModelError
from agent.inference import InferenceService

log = logging.getLogger(__name__)


class InferenceHTTPServer:
    def __init__(
        self, service: InferenceService, host: str, port: int, max_request_bytes: int
    ) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the inference endpoint listens on localhost only, not {host!r}")
        self._host = host
        handler = _make_handler(service, max_request_bytes)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._server.server_address[1]}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="agent-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _make_handler(service: InferenceService, max_bytes: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes; with Nagle on, keep-alive
        # clients wait for the delayed ACK (40 ms) on every request.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug("http: " + format, *args)

        def _reply(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path != "/v1/health":
                self._reply(404, {"detail": f"no such endpoint {self.path}"})
                return
            model = service.active
            self._reply(
                200,
                {
                    "status": "ok" if model else "no_model",
                    "bundle": None
                    if model is None
                    else {"name": model.ref.name, "version": model.ref.version},
                },
            )

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/v1/infer":
                self._reply(404, {"detail": f"no such endpoint {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._reply(411, {"detail": "Content-Length is required"})
                return
            if length > max_bytes:
                self._reply(
                    413, {"detail": f"request is {length} bytes, over the {max_bytes} limit"}
                )
                self.close_connection = True
                return
            try:
                body = json.loads(self.rfile.read(length))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                self._reply(400, {"detail": f"body is not JSON: {exc}"})
                return
            inputs = body.get("inputs") if isinstance(body, dict) else None
            if not isinstance(inputs, dict):
                self._reply(422, {"detail": 'body must be {"inputs": {name: array}}'})
                return
            try:
                outputs = service.infer(inputs)
            except InvalidInputError as exc:
                self._reply(422, {"detail": str(exc)})
                return
            except NoModelError as exc:
                self._reply(503, {"detail": str(exc)})
                return
            except Exception as exc:  # a model failure is the server's, not the caller's
                self._reply(500, {"detail": f"inference failed: {exc}"})
                return
            self._reply(200, {"outputs": {k: v.tolist() for k, v in outputs.items()}})

    return Handler
