"""Delivering alert events to webhooks: at least once, retried with back-off, signed.

Deliveries are rows (``webhook_deliveries``) written in the same transaction as the
alert change they tell of, so none is lost with a replica. :func:`deliver_due` claims
due rows with a short lease (two replicas never post the same row at once), POSTs the
JSON payload, and records the outcome: a 2xx is delivered; anything else (an error
status, a refused connection, a time-out) is retried after a doubling back-off, until
``webhook_max_attempts``. A receiver may still see an event twice (a replica dying
between the POST and its commit), so every request names its delivery in
``X-EdgeFleet-Delivery`` for the receiver to drop repeats.

With ``EDGEFLEET_ALERT_WEBHOOK_SECRET`` set, ``X-EdgeFleet-Signature`` carries
``sha256=<hex HMAC-SHA256 of the body>`` (the scheme GitHub webhooks use).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable

import httpx
import sqlalchemy as sa
from sqlalchemy.orm import Session

from controller.monitoring_models import WebhookDelivery
from controller.monitoring_settings import MonitoringSettings

log = logging.getLogger(__name__)
EVENT_HEADER = "X-EdgeFleet-Event"
DELIVERY_HEADER = "X-EdgeFleet-Delivery"
SIGNATURE_HEADER = "X-EdgeFleet-Signature"
CLAIM_BATCH = 1  # claimed one at a time: a lease covers one POST, however slow


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def backoff_s(attempts: int, settings: MonitoringSettings) -> float:
    """Wait after the ``attempts``-th failed attempt: base, 2x base, 4x base ... capped."""
    return float(
        min(settings.webhook_backoff_s * 2 ** max(0, attempts - 1), settings.webhook_backoff_max_s)
    )


def _claim(session: Session, owner: str, now: float, hold_s: float) -> list[WebhookDelivery]:
    due = (
        sa.select(WebhookDelivery.id)
        .where(WebhookDelivery.delivered_at.is_(None), WebhookDelivery.gave_up_at.is_(None))
        .where(WebhookDelivery.next_attempt_at <= now)
        .where(sa.or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now))
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(CLAIM_BATCH)
    )
    ids = list(session.scalars(due))
    if not ids:
        return []
    session.execute(
        sa.update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(ids))
        .where(sa.or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now))
        .values(lease_owner=owner, lease_until=now + hold_s)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    mine = sa.select(WebhookDelivery).where(
        WebhookDelivery.id.in_(ids), WebhookDelivery.lease_owner == owner
    )
    return list(session.scalars(mine.order_by(WebhookDelivery.id)))


def _post(client: httpx.Client, row: WebhookDelivery, settings: MonitoringSettings) -> str | None:
    """POST one delivery; None on success, else what went wrong."""
    body = json.dumps(row.payload, separators=(",", ":"), sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        EVENT_HEADER: row.event,
        DELIVERY_HEADER: str(row.id),
        "User-Agent": "EdgeFleet-Webhook/1",
    }
    if settings.alert_webhook_secret:
        headers[SIGNATURE_HEADER] = signature(settings.alert_webhook_secret, body)
    try:
        response = client.post(row.url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}: {response.text[:200]}"


def deliver_due(
    session: Session,
    client: httpx.Client,
    settings: MonitoringSettings,
    *,
    owner: str,
    clock: Callable[[], float],
) -> int:
    """Attempt every due delivery once; returns how many were attempted."""
    # httpx's timeout bounds each phase (connect, write, read): hold for all of them.
    rows = _claim(session, owner, clock(), settings.webhook_timeout_s * 4 + 5)
    for row in rows:
        problem = _post(client, row, settings)
        now = clock()
        row.attempts += 1
        row.lease_owner, row.lease_until = None, None
        if problem is None:
            row.delivered_at, row.last_error = now, ""
            log.info("webhook %s delivered %s (attempt %d)", row.url, row.event, row.attempts)
        else:
            row.last_error = problem
            if row.attempts >= settings.webhook_max_attempts:
                row.gave_up_at = now
                log.error("webhook %s: gave up on %s after %d attempts: %s",
                          row.url, row.event, row.attempts, problem)  # fmt: skip
            else:
                row.next_attempt_at = now + backoff_s(row.attempts, settings)
                log.warning("webhook %s: %s failed (attempt %d, next in %.0fs): %s",
                            row.url, row.event, row.attempts,
                            row.next_attempt_at - now, problem)  # fmt: skip
        session.commit()
    return len(rows)
