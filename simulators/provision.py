"""Put a signed bundle straight into a device's data dir, as a factory image would.

For simulations and benchmarks that start from "the fleet already runs v1": the slot
is written with the same installer the agent uses, so the agent verifies it on start
exactly as it would after a download.
"""

from __future__ import annotations

from pathlib import Path

from agent.slots import SlotInfo, SlotStore
from firmware_bundles.builder import BuiltBundle


def provision(data_dir: Path, bundle: BuiltBundle, slot: str = "a") -> None:
    store = SlotStore(data_dir)
    blobs = {}
    for digest, data in bundle.blobs.items():
        path = store.downloads / digest
        path.write_bytes(data)
        blobs[digest] = path
    store.install(slot, bundle.envelope, blobs)
    m = bundle.manifest
    info = SlotInfo(bundle.manifest_sha256, m.name, m.version, m.release_counter)
    store.activate(store.load_state(), slot, info)
