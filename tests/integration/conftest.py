"""Fixtures for integration tests: keys, a blob server, agents on the real broker, controllers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.config import AgentConfig
from agent.daemon import Agent
from controller.server import ControllerServer
from controller.settings import Settings
from firmware_bundles.keys import init_keys
from simulators.mosquitto import MosquittoBroker
from tests.blob_server import BlobServer

AgentFactory = Callable[..., Agent]
Start = Callable[..., httpx.Client]


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """(release.key, release.pub) of a fresh release key."""
    return init_keys(tmp_path / "keys")


@pytest.fixture()
def blobs() -> Iterator[BlobServer]:
    with BlobServer() as server:
        yield server


@pytest.fixture()
def agent_factory(
    mqtt_broker: MosquittoBroker, keys: tuple[Path, Path], tmp_path: Path
) -> Iterator[AgentFactory]:
    """Start agents (connected to the broker); all are stopped at the end of the test."""
    started: list[Agent] = []

    def make(device_id: str = "dev-1", data_dir: Path | None = None, **settings: Any) -> Agent:
        config = AgentConfig(
            device_id=device_id,
            broker_url=mqtt_broker.url,
            controller_url="http://127.0.0.1:9",
            data_dir=data_dir or tmp_path / device_id,
            trust=(keys[1],),
            **{"telemetry_interval_s": 0.5, "drift_interval_s": 0.5, **settings},
        )
        agent = Agent(config)
        agent.start()
        assert agent.link.connected.wait(10)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.stop()


@pytest.fixture()
def controller(database_url: str, tmp_path: Path) -> Iterator[Start]:
    """Start controllers without a broker, on the test's database; stop them after."""
    started: list[tuple[ControllerServer, httpx.Client]] = []

    def start(**env: str) -> httpx.Client:
        settings = Settings.from_env(
            {
                "EDGEFLEET_DATA_DIR": str(tmp_path / f"controller-{len(started)}"),
                "EDGEFLEET_DATABASE_URL": database_url,
                "EDGEFLEET_COMPRESSION_POLL_S": "0.1",
                **env,
            }
        )
        server = ControllerServer(settings, start_bridge=False).start()
        api = httpx.Client(base_url=server.api_url, timeout=60)
        started.append((server, api))
        return api

    yield start
    for server, api in started:
        api.close()
        server.stop()
