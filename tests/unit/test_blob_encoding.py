"""zstd-encoded bundle blobs: the builder's choice, the manifest entry, bounded decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_bundles.blob_encoding import (
    CHUNK,
    DecodeError,
    decode_file,
    decode_stream,
    encode_entry,
)
from firmware_bundles.builder import BuiltBundle
from firmware_bundles.bundle_dir import BLOBS_DIR, verify_bundle_dir, write_bundle_dir
from firmware_bundles.errors import (
    DigestMismatchError,
    ManifestError,
    MissingFileError,
    SizeMismatchError,
)
from firmware_bundles.manifest import FileEntry, manifest_from_dict
from firmware_bundles.verify import BlobVerifier, sha256_hex
from tests.unit.test_bundles import NOW, make, trust


def sparse_weights(n: int = 100_000, keep: float = 0.2, seed: int = 0) -> bytes:
    """float32 weights with most entries zero, as magnitude pruning leaves them."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n).astype(np.float32)
    w[rng.random(n) > keep] = 0.0
    return w.tobytes()


def bomb(declared: int, actual: int = 64 << 20) -> tuple[bytes, FileEntry]:
    """A zstd stream of ``actual`` zero bytes whose entry declares ``declared``."""
    cctx = zstandard.ZstdCompressor(level=1)
    chunks = cctx.compressobj()
    zeros = bytes(1 << 20)
    stored = b"".join(chunks.compress(zeros) for _ in range(actual >> 20)) + chunks.flush()
    entry = FileEntry(
        "model.onnx", "model", sha256_hex(stored), len(stored), "zstd", "0" * 64, declared
    )
    return stored, entry


def bundle(key: Ed25519PrivateKey, model: bytes, **kw: object) -> BuiltBundle:
    return make(key, model=model, **kw)


@pytest.fixture()
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_a_sparse_model_is_stored_compressed_and_decodes_to_itself(
    key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    model = sparse_weights()
    built = bundle(key, model)
    entry = built.manifest.file("model")
    assert entry.encoding == "zstd"
    assert entry.decoded_sha256 == sha256_hex(model) and entry.decoded_size == len(model)
    assert entry.size < 0.5 * len(model)  # 80% zeros: the download shrinks
    stored = built.blobs[entry.sha256]
    assert sha256_hex(stored) == entry.sha256 and len(stored) == entry.size
    (tmp_path / "stored").write_bytes(stored)
    assert decode_file(tmp_path / "stored", entry, tmp_path / "out").read_bytes() == model
    # Small files stay plain, with exactly the four fields older agents know.
    plain = built.manifest.file("golden_inputs").to_dict()
    assert sorted(plain) == ["name", "role", "sha256", "size"]


def test_what_zstd_cannot_shrink_and_what_is_asked_plain_stays_plain(
    key: Ed25519PrivateKey,
) -> None:
    noise = np.random.default_rng(1).bytes(200_000)
    assert not bundle(key, noise).manifest.file("model").encoded  # saves < 2%
    assert not bundle(key, sparse_weights(), blob_encoding=None).manifest.file("model").encoded
    small = sparse_weights(n=1000)
    assert not bundle(key, small).manifest.file("model").encoded  # under 64 KiB
    assert bundle(key, small, encode_min_bytes=0).manifest.file("model").encoded


def test_a_zstd_bomb_is_stopped_at_the_declared_size(tmp_path: Path) -> None:
    stored, entry = bomb(declared=10_000)
    source = tmp_path / "bomb"
    source.write_bytes(stored)
    sink = BlobVerifier(entry.decoded_entry())
    with pytest.raises(SizeMismatchError, match="decodes to more than the 10000 bytes"):
        decode_stream(source, entry, sink)
    assert sink.received <= 10_000 + CHUNK  # it stopped, it did not expand 64 MiB
    target = tmp_path / "out" / "model"
    target.parent.mkdir()
    with pytest.raises(SizeMismatchError):
        decode_file(source, entry, target)
    assert list(target.parent.iterdir()) == []  # nothing half-written, no temp file


def test_truncated_garbage_and_wrong_digest_streams_are_refused(tmp_path: Path) -> None:
    model = sparse_weights()
    entry, stored = encode_entry("model.onnx", "model", model, encoding="zstd")
    cut = tmp_path / "cut"
    cut.write_bytes(stored[: len(stored) // 2])
    with pytest.raises(DecodeError, match="ended after .* of the 400000 decoded bytes"):
        decode_file(cut, entry, tmp_path / "a")
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not zstd at all" * 100)
    with pytest.raises(DecodeError, match="not a valid zstd stream"):
        decode_file(garbage, entry, tmp_path / "b")
    other = FileEntry(
        entry.name, entry.role, entry.sha256, entry.size, "zstd", "1" * 64, entry.decoded_size
    )
    good = tmp_path / "good"
    good.write_bytes(stored)
    with pytest.raises(DigestMismatchError, match="sha256"):
        decode_file(good, other, tmp_path / "c")
    assert not any((tmp_path / n).exists() for n in "abc")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"encoding": "gzip"}, "unknown encoding 'gzip'"),
        ({"encoding": "zstd", "decoded_sha256": None}, "decoded_sha256"),
        ({"encoding": "zstd", "decoded_sha256": "xyz", "decoded_size": 1}, "invalid decoded"),
        ({"encoding": "zstd", "decoded_sha256": "a" * 64, "decoded_size": -1}, "negative"),
        ({"decoded_size": 5}, "but no encoding"),
    ],
)
def test_bad_encoding_fields_are_named(
    key: Ed25519PrivateKey, change: dict[str, object], message: str
) -> None:
    data = bundle(key, b"m" * 100).manifest.to_dict()
    entry = data["files"][0]
    entry.update({k: v for k, v in change.items() if v is not None})
    for k, v in change.items():
        if v is None:
            entry.pop(k, None)
    with pytest.raises(ManifestError, match=message):
        manifest_from_dict(data)


def test_bundle_dirs_verify_in_stored_and_installed_form(
    key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    model = sparse_weights()
    built = bundle(key, model)
    entry = built.manifest.file("model")
    write_bundle_dir(built, tmp_path / "dist")
    dist = verify_bundle_dir(tmp_path / "dist", trust(key), NOW)  # type: ignore[arg-type]
    with pytest.raises(MissingFileError, match="zstd-encoded, not installed"):
        dist.path_of("model")

    # Installed form (an agent's slot): the decoded file under its own digest.
    blobs = tmp_path / "dist" / BLOBS_DIR
    decode_file(blobs / entry.sha256, entry, blobs / entry.content_sha256)
    (blobs / entry.sha256).unlink()
    slot = verify_bundle_dir(tmp_path / "dist", trust(key), NOW)  # type: ignore[arg-type]
    assert slot.path_of("model").read_bytes() == model

    torn = blobs / entry.content_sha256
    torn.write_bytes(model[:1000])
    with pytest.raises(SizeMismatchError):
        verify_bundle_dir(tmp_path / "dist", trust(key), NOW)  # type: ignore[arg-type]
