"""Shared fixtures: a real Mosquitto broker and real databases (SQLite, PostgreSQL).

When ``CI=true`` a missing broker or PostgreSQL fails the test loudly; elsewhere the test
is skipped with the reason, so a laptop without them can still run the unit tests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.mosquitto import MosquittoBroker, find_mosquitto
from tests.pg_server import PostgresServer, find_pg_bin

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(what: str) -> None:
    message = f"{what} is not available; `make test` installs it"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: refusing to skip)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def mqtt_broker() -> Iterator[MosquittoBroker]:
    """One private Mosquitto for the session, on a free loopback port."""
    if find_mosquitto() is None:
        _missing("mosquitto")
    with MosquittoBroker() as broker:
        yield broker


@pytest.fixture()
def fresh_broker() -> Iterator[MosquittoBroker]:
    """A broker of the test's own, for tests that stop or restart it."""
    if find_mosquitto() is None:
        _missing("mosquitto")
    with MosquittoBroker() as broker:
        yield broker


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """Base URL of a PostgreSQL server: our own cluster, or EDGEFLEET_TEST_POSTGRES_URL."""
    external = os.environ.get("EDGEFLEET_TEST_POSTGRES_URL")
    if external:
        yield external
        return
    if find_pg_bin() is None:
        _missing("PostgreSQL")
    server = PostgresServer().start()
    try:
        yield server.url
    finally:
        server.stop()


def _fresh_postgres_db(base_url: str) -> str:
    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return base_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh empty database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'edgefleet.db'}"
    base = request.getfixturevalue("postgres_server")
    return _fresh_postgres_db(base)


@pytest.fixture()
def postgres_url(postgres_server: str) -> str:
    """A fresh empty PostgreSQL database."""
    return _fresh_postgres_db(postgres_server)
