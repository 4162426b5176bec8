"""Engine and session factory: SQLite (WAL, foreign keys) by default, PostgreSQL in production.

Nothing here runs at import time; :func:`connect` is called by the app factory. The
schema is created with ``create_all`` at startup until migrations arrive.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

# Tables kept in their own modules register with Base on import.
from controller import capture_models as _capture_models  # noqa: F401
from controller import compression_job_model as _compression_job_model  # noqa: F401
from controller import monitoring_models as _monitoring_models  # noqa: F401
from controller.models import Base

SQLITE_BUSY_TIMEOUT_MS = 10_000
IN_CHUNK = 1000  # ids per IN (...) list: well under SQLite's bound-parameter limit

T = TypeVar("T")


def chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets API readers run while the ingest thread writes a batch.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def make_engine(url: str) -> Engine:
    """Create the engine for ``url`` with the per-dialect settings the controller needs."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
        database = parsed.database
        if not database or database == ":memory:":
            kwargs["poolclass"] = StaticPool  # one shared in-memory database
        else:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


SCHEMA_LOCK_KEY = 0x0EDF1EE7  # PostgreSQL advisory lock: one replica creates the schema


def advisory_xact_lock(conn: sa.Connection | Session, key: int, *, shared: bool = False) -> None:
    """Hold PostgreSQL advisory lock ``key`` until the transaction ends (exclusive, or
    shared with other shared holders); nothing on SQLite, whose writers take turns."""
    bind = conn.get_bind() if isinstance(conn, Session) else conn
    if bind.dialect.name != "postgresql":
        return
    take = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    conn.execute(sa.text(f"SELECT {take}(:key)"), {"key": key})


def create_schema(engine: Engine) -> None:
    """Create missing tables; replicas starting together take turns on PostgreSQL."""
    with engine.begin() as conn:
        advisory_xact_lock(conn, SCHEMA_LOCK_KEY)
        Base.metadata.create_all(conn)


def check_database(engine: Engine) -> str:
    """``"ok"`` or the error text: what the health endpoint reports."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        return f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return "ok"


def insert_ignoring_duplicates(session: Session, table: type[Base]) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` for the session's dialect.

    Replayed MQTT messages (QoS 1 redelivery, retained replays, two replicas) must not
    be stored twice; the table's unique constraint decides what a duplicate is.
    """
    name = session.get_bind().dialect.name
    core_table = cast(sa.Table, table.__table__)  # Core path: no ORM bulk bookkeeping
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(core_table).on_conflict_do_nothing()
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(core_table).on_conflict_do_nothing()
    raise NotImplementedError(f"database dialect {name!r} is not supported")
