"""Fixtures for agent integration tests: keys, a blob server, agents on the real broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.daemon import Agent
from firmware_bundles.keys import init_keys
from simulators.mosquitto import MosquittoBroker
from tests.blob_server import BlobServer

AgentFactory = Callable[..., Agent]


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
            **{"telemetry_interval_s": 0.5, **settings},
        )
        agent = Agent(config)
        agent.start()
        assert agent.link.connected.wait(10)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.stop()
