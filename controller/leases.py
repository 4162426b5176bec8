"""Named leases in the database: which replica runs a periodic job, and when it is due.

A lease is one row (``leases``): ``owner`` holds it until ``until`` (epoch seconds).
Taking it is one conditional ``UPDATE`` (only once ``until`` is reached), atomic on
SQLite and PostgreSQL alike, so with any number of replicas one runs the job at a time.
The runner holds it for a generous time while it works (a replica that dies mid-job
loses it when that expires), then sets ``until`` to when the job is next due: the same
row is the lock and the schedule.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from controller.db import insert_ignoring_duplicates
from controller.monitoring_models import Lease


def _update(
    session: Session, name: str, condition: sa.ColumnElement[bool], **values: object
) -> bool:
    result = session.execute(
        sa.update(Lease)
        .where(Lease.name == name, condition)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def take_lease(session: Session, name: str, owner: str, now: float, hold_s: float) -> bool:
    """Hold lease ``name`` until ``now + hold_s`` if it has expired (the job is due).

    The caller commits. Returns whether ``owner`` holds it now.
    """
    session.execute(
        insert_ignoring_duplicates(session, Lease), [{"name": name, "owner": "", "until": 0.0}]
    )
    return _update(session, name, Lease.until <= now, owner=owner, until=now + hold_s)


def extend_lease(session: Session, name: str, owner: str, until: float) -> bool:
    """Hold ``name`` until ``until`` if ``owner`` still has it (False: it was lost)."""
    return _update(session, name, Lease.owner == owner, until=until)


def lease_until(session: Session, name: str) -> float:
    """Until when lease ``name`` is held (0.0: never taken)."""
    return float(session.scalar(sa.select(Lease.until).where(Lease.name == name)) or 0.0)
