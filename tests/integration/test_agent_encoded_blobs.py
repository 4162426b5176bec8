"""A real agent on the real broker fetching zstd-encoded blobs: verified as stored, decoded
with a bound, installed decoded; every attack refused with nothing left half-written."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import zstandard
from onnx import numpy_helper

from firmware_bundles.builder import BuiltBundle
from firmware_bundles.dsse import sign_envelope
from firmware_bundles.golden import generate_inputs
from firmware_bundles.keys import load_private_key
from firmware_bundles.manifest import PAYLOAD_TYPE, FileEntry
from firmware_bundles.verify import sha256_hex
from tests.agent_harness import deploy, make_bundle, wait_until
from tests.models import mlp

pytestmark = pytest.mark.broker


def pruned_bundle(tmp: Path, key: Path, version: str, *, counter: int) -> BuiltBundle:
    """An MLP (98 KB of weights) with 80% of its weights zeroed, as pruning leaves it."""
    path = mlp(tmp / f"pruned-{version}.onnx", seed=counter, hidden=2048)
    model = onnx.load(str(path))
    rng = np.random.default_rng(counter)
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init).copy()
        w[rng.random(w.shape) > 0.2] = 0.0
        init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(path))
    return make_bundle(tmp, key, version, seed=counter, counter=counter, model_path=path)


def resigned(bundle: BuiltBundle, key: Path, model_entry: FileEntry, stored: bytes) -> BuiltBundle:
    """``bundle`` with its model entry replaced and the manifest signed again (by the
    release key: what a compromised or buggy build server could publish)."""
    files = tuple(model_entry if f.role == "model" else f for f in bundle.manifest.files)
    manifest = dataclasses.replace(bundle.manifest, files=files)
    envelope = sign_envelope(PAYLOAD_TYPE, manifest.to_bytes(), load_private_key(key))
    blobs = {k: v for k, v in bundle.blobs.items() if k != bundle.manifest.file("model").sha256}
    blobs[model_entry.sha256] = stored
    return BuiltBundle(manifest, envelope, blobs)


def leftovers(downloads: Path) -> list[str]:
    return sorted(p.name for p in downloads.iterdir())


def serving(agent, version: str) -> bool:  # type: ignore[no-untyped-def]
    return agent.active_bundle is not None and agent.active_bundle.version == version


def test_an_encoded_model_downloads_small_and_installs_decoded(
    mqtt_broker, blobs, agent_factory, keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    v1 = pruned_bundle(tmp_path, keys[0], "1.0.0", counter=1)
    entry = v1.manifest.file("model")
    assert entry.encoded and entry.size < 0.5 * entry.content_size
    agent = agent_factory("enc-a")
    deploy(mqtt_broker, blobs, "enc-a", v1, 1)
    assert wait_until(lambda: serving(agent, "1.0.0"))

    # The wire carried the compressed bytes; the slot holds the decoded model.
    assert (entry.sha256, None) in blobs.requests
    slot = tmp_path / "enc-a" / "slots" / str(agent.state.active) / "blobs"
    installed = slot / entry.content_sha256
    assert installed.read_bytes() == (tmp_path / "pruned-1.0.0.onnx").read_bytes()
    assert not (slot / entry.sha256).exists()
    assert leftovers(tmp_path / "enc-a" / "downloads") == []
    x = generate_inputs(agent.inference.active.runner.inputs, seed=1)  # type: ignore[union-attr]
    assert agent.infer(x)["y"].shape == (1, 4)

    # A restart re-verifies the installed (decoded) files and serves without network.
    agent.stop()
    blobs.blobs.clear()
    again = agent_factory("enc-a")
    assert serving(again, "1.0.0")


def _refused(agent, code: str) -> bool:  # type: ignore[no-untyped-def]
    return agent.phase == "failed" and agent.error is not None and agent.error.code == code


def test_tampered_compressed_bytes_are_refused_before_decoding(
    mqtt_broker, blobs, agent_factory, keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    v1 = make_bundle(tmp_path, keys[0], "1.0.0", seed=1)
    agent = agent_factory("enc-b")
    deploy(mqtt_broker, blobs, "enc-b", v1, 1)
    assert wait_until(lambda: serving(agent, "1.0.0"))

    v2 = pruned_bundle(tmp_path, keys[0], "2.0.0", counter=2)
    sha = v2.manifest.file("model").sha256
    data = bytearray(v2.blobs[sha])
    data[len(data) // 2] ^= 0x40
    v2.blobs[sha] = bytes(data)
    deploy(mqtt_broker, blobs, "enc-b", v2, 2)
    assert wait_until(lambda: _refused(agent, "digest_mismatch"))
    assert serving(agent, "1.0.0")
    assert leftovers(tmp_path / "enc-b" / "downloads") == []


def test_a_zstd_bomb_is_refused_with_nothing_left_behind(
    mqtt_broker, blobs, agent_factory, keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    v1 = make_bundle(tmp_path, keys[0], "1.0.0", seed=1)
    agent = agent_factory("enc-c")
    deploy(mqtt_broker, blobs, "enc-c", v1, 1)
    assert wait_until(lambda: serving(agent, "1.0.0"))

    # 256 MiB of zeros in ~8 KB, signed as a 50 KB model.
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    stored = b"".join(compressor.compress(bytes(1 << 20)) for _ in range(256))
    stored += compressor.flush()
    entry = FileEntry(
        "model.onnx", "model", sha256_hex(stored), len(stored), "zstd", "0" * 64, 50_000
    )
    base = make_bundle(tmp_path, keys[0], "2.0.0", seed=2, counter=2)
    deploy(mqtt_broker, blobs, "enc-c", resigned(base, keys[0], entry, stored), 2)
    assert wait_until(lambda: _refused(agent, "size_mismatch"))
    assert "decodes to more than the 50000 bytes" in agent.error.message  # type: ignore[union-attr]
    assert serving(agent, "1.0.0")
    assert leftovers(tmp_path / "enc-c" / "downloads") == []
    slots = tmp_path / "enc-c" / "slots"
    assert all(f.stat().st_size < 1 << 20 for f in slots.rglob("*") if f.is_file())


def test_a_truncated_zstd_stream_is_refused(
    mqtt_broker, blobs, agent_factory, keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    good = pruned_bundle(tmp_path, keys[0], "1.0.0", counter=1)
    entry = good.manifest.file("model")
    cut = good.blobs[entry.sha256][: entry.size // 2]
    broken = dataclasses.replace(entry, sha256=sha256_hex(cut), size=len(cut))
    agent = agent_factory("enc-d")
    deploy(mqtt_broker, blobs, "enc-d", resigned(good, keys[0], broken, cut), 1)
    assert wait_until(lambda: _refused(agent, "decode_failed"))
    assert "truncated" in agent.error.message  # type: ignore[union-attr]
    assert agent.active_bundle is None
    assert leftovers(tmp_path / "enc-d" / "downloads") == []


def test_an_interrupted_compressed_download_resumes_and_still_verifies(
    mqtt_broker, blobs, agent_factory, keys, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    v1 = pruned_bundle(tmp_path, keys[0], "1.0.0", counter=1)
    entry = v1.manifest.file("model")
    blobs.cut_after[entry.sha256] = entry.size // 3
    agent = agent_factory("enc-e")
    deploy(mqtt_broker, blobs, "enc-e", v1, 1)
    assert wait_until(lambda: _refused(agent, "download"))
    part = tmp_path / "enc-e" / "downloads" / f"{entry.sha256}.part"
    assert part.stat().st_size == entry.size // 3
    deploy(mqtt_broker, blobs, "enc-e", v1, 2)
    assert wait_until(lambda: serving(agent, "1.0.0"))
    assert (entry.sha256, f"bytes={entry.size // 3}-") in blobs.requests
    slot = tmp_path / "enc-e" / "slots" / str(agent.state.active) / "blobs"
    assert sha256_hex((slot / entry.content_sha256).read_bytes()) == entry.content_sha256


def test_a_device_provisioned_with_an_encoded_bundle_boots_on_it(keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from agent.slots import SlotStore
    from agent.updater import Updater
    from firmware_bundles.keys import load_trusted_keys
    from simulators.provision import provision

    bundle = pruned_bundle(tmp_path, keys[0], "1.0.0", counter=1)
    assert bundle.manifest.file("model").encoded
    provision(tmp_path / "dev", bundle)
    store = SlotStore(tmp_path / "dev")
    state = store.load_state()
    updater = Updater(store, load_trusted_keys([keys[1]]), hardware_class="generic")
    prepared = updater.load_slot(state, state.active)  # verifies the slot as at boot
    feeds = generate_inputs(prepared.model.runner.inputs, batch=2)
    assert prepared.model.runner.run(feeds)["y"].shape == (2, 4)
