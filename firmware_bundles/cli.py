"""``edgefleet keys ...`` and ``edgefleet bundle ...``."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from firmware_bundles.drift_reference import ExtractorConfig


def register(subparsers: Any) -> None:
    keys = subparsers.add_parser("keys", help="manage signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    keys_sub.required = True
    init = keys_sub.add_parser("init", help="create release.key (0600) and release.pub in DIR")
    init.add_argument("directory", type=Path)
    init.add_argument("--force", action="store_true", help="overwrite an existing key")
    init.set_defaults(func=_keys_init)

    bundle = subparsers.add_parser("bundle", help="build and verify signed bundles")
    bundle_sub = bundle.add_subparsers(dest="bundle_command", metavar="ACTION")
    bundle_sub.required = True
    build = bundle_sub.add_parser("build", help="sign a model into a bundle directory")
    build.add_argument("model", type=Path, help=".onnx or .tflite file")
    build.add_argument("--name", required=True)
    build.add_argument("--version", required=True)
    build.add_argument("--release-counter", type=int, default=1)
    build.add_argument("--hardware-class", action="append", dest="hardware_classes")
    build.add_argument("--key", type=Path, required=True, help="release private key")
    build.add_argument("-o", "--output", type=Path, required=True, help="bundle directory")
    build.add_argument("--valid-days", type=float, default=365.0)
    build.add_argument("--atol", type=float, default=1e-3)
    build.add_argument("--rtol", type=float, default=1e-3)
    build.add_argument("--latency-budget-ms", type=float, default=1000.0)
    build.add_argument("--golden-inputs", type=Path, help=".npz of inputs for the health check")
    build.add_argument("--golden-outputs", type=Path, help=".npz of expected outputs")
    build.add_argument(
        "--compression-report",
        type=Path,
        help="JSON report to embed (default: MODEL.report.json, as edgefleet compress writes it)",
    )
    build.add_argument(
        "--no-compression-report", action="store_true", help="embed no compression report"
    )
    build.add_argument(
        "--reference", type=Path, help=".npz of reference inputs: ships drift bins with the bundle"
    )
    build.add_argument(
        "--drift-bins", type=int, default=10, help="quantile bins per numeric feature (10)"
    )
    build.add_argument(
        "--drift-max-columns",
        type=int,
        default=64,
        help="a [N, F] input with more columns is summarized (mean, std) instead (64)",
    )
    build.add_argument(
        "--drift-max-categories",
        type=int,
        default=20,
        help="an integer feature with at most this many values gets a vocabulary (20)",
    )
    build.add_argument(
        "--blob-encoding",
        choices=["zstd", "none"],
        default="zstd",
        help="store files zstd-compressed where it shrinks the download (default zstd)",
    )
    build.set_defaults(func=_bundle_build)

    verify = bundle_sub.add_parser("verify", help="verify a bundle directory")
    verify.add_argument("directory", type=Path)
    verify.add_argument("--trust", type=Path, action="append", required=True, help="public key")
    verify.set_defaults(func=_bundle_verify)


def _keys_init(args: argparse.Namespace) -> int:
    from firmware_bundles.keys import init_keys, key_id, load_public_key

    private, public = init_keys(args.directory, overwrite=args.force)
    print(f"private key: {private} (keep it offline)\npublic key:  {public}")
    print(f"key id:      {key_id(load_public_key(public))}")
    return 0


def _bundle_build(args: argparse.Namespace) -> int:
    from firmware_bundles.bundle_dir import write_bundle_dir
    from firmware_bundles.errors import ManifestError
    from firmware_bundles.from_model import bundle_from_model_file
    from firmware_bundles.golden import decode_arrays
    from firmware_bundles.keys import load_private_key
    from firmware_bundles.manifest import HealthCheck

    def arrays(path: Path | None) -> Any:
        return None if path is None else decode_arrays(path.read_bytes(), str(path))

    if not args.model.is_file():
        raise ManifestError(f"model file {args.model} does not exist")
    report = None if args.no_compression_report else _compression_report(args)
    built = bundle_from_model_file(
        args.model,
        name=args.name,
        version=args.version,
        release_counter=args.release_counter,
        key=load_private_key(args.key),
        now=datetime.now(timezone.utc),
        hardware_classes=args.hardware_classes or ["generic"],
        health_check=HealthCheck(args.atol, args.rtol, args.latency_budget_ms),
        golden_inputs=arrays(args.golden_inputs),
        golden_outputs=arrays(args.golden_outputs),
        compression=report,
        valid_for=timedelta(days=args.valid_days),
        drift_reference=arrays(args.reference),
        drift_config=drift_config(
            args.drift_bins, args.drift_max_columns, args.drift_max_categories
        ),
        blob_encoding=None if args.blob_encoding == "none" else args.blob_encoding,
    )
    write_bundle_dir(built, args.output)
    print(f"bundle {built.manifest.name}@{built.manifest.version} -> {args.output}")
    print(f"manifest sha256 {built.manifest_sha256}")
    return 0


def drift_config(bins: int, max_columns: int, max_categories: int) -> ExtractorConfig:
    """The bundle author's choice of drift features, checked."""
    from firmware_bundles.drift_reference import ExtractorConfig
    from firmware_bundles.errors import ManifestError

    if not 2 <= bins <= 100:
        raise ManifestError(f"drift bins must be 2..100, got {bins}")
    if not 1 <= max_columns <= 4096 or not 0 <= max_categories <= 1000:
        raise ManifestError(
            f"drift max columns must be 1..4096 and max categories 0..1000, got "
            f"{max_columns} and {max_categories}"
        )
    return ExtractorConfig(max_columns=max_columns, max_categories=max_categories, bins=bins)


# What ``edgefleet compress`` names the report it writes beside a model (compress.cli).
REPORT_SUFFIX = ".report.json"


def _compression_report(args: argparse.Namespace) -> dict[str, Any] | None:
    """The report to embed: the one given, or the one compress wrote beside the model.

    A report describes one model file; one whose compressed size differs from the
    model's is stale (the model was rebuilt since) and is refused rather than shipped.
    """
    from firmware_bundles.errors import ManifestError

    path = args.compression_report
    if path is None:
        beside = args.model.with_name(args.model.name + REPORT_SUFFIX)
        if not beside.is_file():
            return None
        path = beside
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read compression report {path}: {exc}") from exc
    if not isinstance(report, dict):
        raise ManifestError(f"compression report {path} is not a JSON object")
    # auto reports nest the chosen model's report; single-method reports are flat.
    nested = report.get("report")
    inner: dict[str, Any] = nested if isinstance(nested, dict) else report
    size = inner.get("compressed_bytes")
    actual = args.model.stat().st_size
    if isinstance(size, int) and size != actual:
        raise ManifestError(
            f"compression report {path} describes a {size}-byte model but {args.model} has "
            f"{actual} bytes: a stale report? (--no-compression-report to build without it)"
        )
    print(f"embedding compression report {path}")
    return report


def _bundle_verify(args: argparse.Namespace) -> int:
    from firmware_bundles.bundle_dir import verify_bundle_dir
    from firmware_bundles.keys import load_trusted_keys

    bundle = verify_bundle_dir(
        args.directory, load_trusted_keys(args.trust), datetime.now(timezone.utc)
    )
    m = bundle.manifest
    print(f"OK {m.name}@{m.version} release_counter={m.release_counter} runtime={m.runtime}")
    print(f"   expires {m.expires.isoformat()} hardware {','.join(m.hardware_classes)}")
    for entry in m.files:
        stored = f" (zstd {entry.size:d} B stored)" if entry.encoded else ""
        print(
            f"   {entry.role:15s} {entry.name:22s} {entry.content_size:>10d}  "
            f"{entry.content_sha256[:16]}{stored}"
        )
    return 0
