"""The app factory: ``create_app(settings)`` builds one controller; nothing exists before.

The lifespan creates the schema, starts the ingest worker, the MQTT bridge, the
rollout worker and the monitoring jobs, and stops them on shutdown (monitoring and
rollouts first, then the bridge, then ingest drains its queue).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from controller.api.body_limit import BodyLimitMiddleware
from controller.api.deps import Runtime
from controller.api.errors import install_error_handlers
from controller.api.routes import api_router
from controller.blobstore import BlobStore
from controller.capture_worker import CaptureWorker
from controller.compression_worker import CompressionWorker, WorkerLimits
from controller.db import create_schema, make_engine, make_sessionmaker
from controller.drift_references import DriftReferences
from controller.ingest import IngestWorker
from controller.monitoring_worker import MonitoringWorker
from controller.release_keys import load_release_keys
from controller.rollout_worker import RolloutWorker, WorkerSettings
from controller.services.device_reports import RawRetention
from controller.services.rollout_gates import GateSettings
from controller.settings import MiB, Settings
from firmware_bundles.wire import Desired

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
# Room for multipart boundaries and form fields around a file at the upload limit.
MULTIPART_OVERHEAD = 1 * MiB


class _NoBroker:
    """The publisher when the app runs without a bridge (``start_bridge=False``)."""

    def publish_desired(
        self, device_id: str, desired: Desired, on_ack: Callable[[], None] | None = None
    ) -> None:
        log.warning("no MQTT bridge: desired state for %s was not published", device_id)

    def publish_command(
        self, device_id: str, payload: bytes, on_ack: Callable[[], None] | None = None
    ) -> None:
        log.warning("no MQTT bridge: capture set for %s was not published", device_id)


def create_app(settings: Settings, *, start_bridge: bool = True) -> FastAPI:
    """Build a controller app for ``settings``.

    Raises:
        SettingsError: the release key or a trusted key is unusable (startup error).
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    keys = load_release_keys(settings)
    store = BlobStore(settings.blob_dir)
    engine = make_engine(settings.resolved_database_url)
    sessions = make_sessionmaker(engine)
    ingest = IngestWorker(
        sessions,
        batch_size=settings.ingest_batch_size,
        batch_wait_s=settings.ingest_batch_wait_s,
        queue_max=settings.ingest_queue_max,
        retention=RawRetention(
            settings.monitoring.telemetry_raw_retention_s, settings.monitoring.telemetry_bucket_s
        ),
    )
    client_id = settings.client_id()
    bridge = None
    if start_bridge:
        from controller.mqtt_bridge import MqttBridge  # paho only when we talk to a broker

        host, port = settings.broker_address
        bridge = MqttBridge(
            host,
            port,
            client_id=client_id,
            deliver=ingest.submit,
            keepalive_s=settings.mqtt_keepalive_s,
            session_expiry_s=settings.mqtt_session_expiry_s,
            resume=settings.stable_client_id,
        )
    compression = CompressionWorker(
        sessions,
        store,
        settings.data_dir / "compression-work",
        WorkerLimits(
            workers=settings.compression_workers,
            lease_s=settings.compression_lease_s,
            poll_s=settings.compression_poll_s,
            max_attempts=settings.compression_max_attempts,
            timeout_s=settings.compression_timeout_s,
            max_output_bytes=settings.max_upload_bytes,
        ),
    )
    references = DriftReferences(store)
    rollouts = RolloutWorker(
        sessions,
        bridge if bridge is not None else _NoBroker(),
        WorkerSettings(
            replica_id=settings.replica_name(client_id),
            blob_base_url=settings.blob_base_url,
            tick_s=settings.rollout_tick_s,
            lease_s=settings.rollout_lease_s,
            gate_interval_s=settings.rollout_gate_interval_s,
            republish_after_s=settings.rollout_republish_after_s,
            gates=GateSettings(
                latency_lookback_s=settings.rollout_latency_lookback_s,
                drift_alpha=settings.monitoring.drift_alpha,
                drift_min_samples=settings.monitoring.drift_min_samples,
                drift_min_psi=settings.monitoring.drift_min_psi,
            ),
        ),
        references=references,
    )
    monitoring = MonitoringWorker(
        sessions, references, settings.monitoring, replica_id=settings.replica_name(client_id)
    )
    captures = CaptureWorker(
        sessions,
        bridge if bridge is not None else _NoBroker(),
        api_url=settings.api_url,
        tick_s=settings.capture_tick_s,
        republish_after_s=settings.capture_republish_after_s,
    )
    runtime = Runtime(
        settings=settings,
        engine=engine,
        sessions=sessions,
        store=store,
        keys=keys,
        ingest=ingest,
        rollouts=rollouts,
        references=references,
        monitoring=monitoring,
        broker_connected=(lambda: bridge.connected) if bridge is not None else (lambda: False),
        captures=captures,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        create_schema(engine)
        ingest.start()
        compression.start()
        if bridge is not None:
            bridge.start()
        rollouts.start()
        monitoring.start()
        captures.start()
        log.info(
            "controller up: database %s, broker %s, blobs served at %s",
            engine.url.render_as_string(hide_password=True),
            settings.broker_url if bridge is not None else "(none)",
            settings.blob_base_url,
        )
        try:
            yield
        finally:
            monitoring.stop()
            captures.stop()
            rollouts.stop()
            if bridge is not None:
                bridge.stop()
            compression.stop()
            ingest.stop()
            engine.dispose()

    app = FastAPI(
        title="EdgeFleet controller",
        summary="Sign ML model bundles, deploy them to device fleets, follow every device.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD,
        reported_limit=settings.max_upload_bytes,
    )
    app.state.runtime = runtime
    app.state.compression_worker = compression
    install_error_handlers(app, max_body_bytes=settings.max_upload_bytes)
    app.include_router(api_router, prefix=API_PREFIX)
    return app
