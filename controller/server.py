"""Run a controller under real uvicorn in a background thread (tests, the demo).

::

    with ControllerServer(Settings.from_env(env)) as server:
        httpx.get(f"{server.url}/api/v1/health")

The server listens on 127.0.0.1 and a free port (the socket is bound before uvicorn
starts, so there is no race for the port); unless ``EDGEFLEET_PUBLIC_URL`` is set, the
blob URL devices are told is this server's own address.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from controller.api.deps import Runtime
from controller.app import API_PREFIX, create_app
from controller.settings import Settings
from firmware_bundles.errors import EdgeFleetError


class ControllerServer:
    """A controller app served by uvicorn on a thread of this process."""

    def __init__(
        self,
        settings: Settings,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        start_bridge: bool = True,
        log_level: str = "warning",
    ) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host = host
        self.port = int(self._socket.getsockname()[1])
        if settings.public_url is None:
            settings = replace(settings, public_url=self.url)
        self.settings = settings
        try:
            self.app: FastAPI = create_app(settings, start_bridge=start_bridge)
        except BaseException:
            self._socket.close()
            raise
        self._server = uvicorn.Server(
            uvicorn.Config(self.app, log_level=log_level, lifespan="on", access_log=False)
        )
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}{API_PREFIX}"

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime

    @property
    def release_public_key_path(self) -> Path:
        """PEM file of the release public key: give it to devices as their trust."""
        return self.runtime.keys.public_path

    def start(self, timeout: float = 30.0) -> ControllerServer:
        """Start serving; return once ``/api/v1/health`` answers."""
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name=f"edgefleet-controller-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._thread.is_alive():
                raise EdgeFleetError(f"the controller on port {self.port} exited during startup")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2.0).status_code in (200, 503):
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise EdgeFleetError(f"the controller did not answer on {self.url} within {timeout}s")

    def wait_broker_connected(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.runtime.broker_connected():
                return True
            time.sleep(0.05)
        return False

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.api_url}/health", timeout=5.0).json()
        return body

    def stop(self, timeout: float = 15.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._socket.close()

    def __enter__(self) -> ControllerServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
