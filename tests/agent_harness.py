"""Helpers for agent tests: signed bundles of generated models, desired states, waiting."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from firmware_bundles.builder import BuiltBundle
from firmware_bundles.from_model import bundle_from_model_file
from firmware_bundles.keys import load_private_key
from firmware_bundles.wire import BundleRef, Desired, State, parse_state, topic
from simulators.mosquitto import MosquittoBroker
from tests.blob_server import BlobServer
from tests.models import mlp
from tests.mqtt_tools import Watcher, publish


def make_bundle(
    tmp: Path,
    key: Path,
    version: str,
    *,
    seed: int,
    counter: int = 1,
    hidden: int = 16,
    model_path: Path | None = None,
    **kw: Any,
) -> BuiltBundle:
    """A signed bundle of a generated MLP (or of ``model_path``, when given)."""
    model = model_path or mlp(tmp / f"model-{version}.onnx", seed=seed, hidden=hidden)
    return bundle_from_model_file(
        model,
        name="mlp",
        version=version,
        release_counter=counter,
        key=load_private_key(key),
        now=datetime.now(timezone.utc),
        **kw,
    )


def ref(bundle: BuiltBundle) -> BundleRef:
    return BundleRef(bundle.manifest_sha256, bundle.manifest.name, bundle.manifest.version)


def deploy(
    broker: MosquittoBroker,
    blobs: BlobServer,
    device: str,
    bundle: BuiltBundle,
    generation: int,
    trial: dict[str, Any] | None = None,
) -> None:
    """Serve ``bundle``'s blobs and publish the device's desired state, as the controller does."""
    blobs.add(bundle.blobs)
    blobs.add({bundle.manifest_sha256: bundle.envelope})
    desired = Desired(generation, ref(bundle), "dep-1", blobs.base_url, trial=trial)
    publish(broker, topic(device, "down", "desired"), desired.to_bytes(), retain=True)


def wait_until(predicate: Callable[[], object], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def last_state(watcher: Watcher, device: str) -> State | None:
    states = [parse_state(p) for t, p in watcher.messages if t == topic(device, "up", "state")]
    return states[-1] if states else None
