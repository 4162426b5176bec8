"""A Range-capable HTTP blob server for agent tests, with fault injection.

Serves ``GET /blobs/<sha256>`` from a dict. ``cut_after[sha] = n`` makes the next
response for that blob stop after ``n`` bytes (a dropped connection), once.
"""

from __future__ import annotations

import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_RANGE = re.compile(r"^bytes=(\d+)-$")


class BlobServer:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.cut_after: dict[str, int] = {}
        self.bytes_per_second: float | None = None  # throttle: a slow link
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def handle(self) -> None:
                try:
                    super().handle()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away mid-transfer (killed, timed out)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802
                sha = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                server.requests.append((sha, rng))
                data = server.blobs.get(sha)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and (m := _RANGE.match(rng)):
                    start = int(m.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.cut_after.pop(sha, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if server.bytes_per_second is None:
                    self.wfile.write(body)
                    return
                chunk = 16 * 1024
                for start in range(0, len(body), chunk):
                    self.wfile.write(body[start : start + chunk])
                    time.sleep(chunk / server.bytes_per_second)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/blobs"

    def add(self, blobs: dict[str, bytes]) -> None:
        self.blobs.update(blobs)

    def __enter__(self) -> BlobServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
