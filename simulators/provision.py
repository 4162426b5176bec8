"""Put a signed bundle straight into a device's data dir, as a factory image would.

For simulations and benchmarks that start from "the fleet already runs v1": the slot
is written with the same installer the agent uses, so the agent verifies it on start
exactly as it would after a download.
"""

from __future__ import annotations

from pathlib import Path

from agent.slots import SlotInfo, SlotStore
from firmware_bundles.blob_encoding import decode_file
from firmware_bundles.builder import BuiltBundle


def provision(data_dir: Path, bundle: BuiltBundle, slot: str = "a") -> None:
    store = SlotStore(data_dir)
    blobs = {}  # installed (decoded) sha256 -> file, as the agent's updater hands over
    for entry in bundle.manifest.files:
        stored = store.downloads / entry.sha256
        stored.write_bytes(bundle.blobs[entry.sha256])
        if entry.encoded:  # a zstd-encoded blob is installed decoded, as after a download
            installed = decode_file(stored, entry, store.downloads / entry.content_sha256)
            stored.unlink()
            stored = installed
        blobs[entry.content_sha256] = stored
    store.install(slot, bundle.envelope, blobs)
    m = bundle.manifest
    info = SlotInfo(bundle.manifest_sha256, m.name, m.version, m.release_counter)
    store.activate(store.load_state(), slot, info)
