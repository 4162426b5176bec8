"""Make a bundle straight from a model file: read its I/O spec, compute golden outputs.

This is the IO edge the CLI and the controller share: it loads the model in its runtime
once to learn the tensor specs and to produce the golden outputs for the health check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_bundles.builder import BuiltBundle, build_bundle
from firmware_bundles.drift_reference import (
    ExtractorConfig,
    FeatureExtractor,
    build_reference,
    encode_reference,
)
from firmware_bundles.errors import ManifestError
from firmware_bundles.golden import Arrays, encode_arrays, generate_inputs
from firmware_bundles.manifest import ZSTD, HealthCheck
from firmware_bundles.runtimes import load_runner


def runtime_for(model_path: Path) -> str:
    suffix = model_path.suffix.lower()
    if suffix == ".onnx":
        return "onnxruntime"
    if suffix == ".tflite":
        return "tflite"
    raise ManifestError(f"cannot tell the runtime of {model_path.name}: use .onnx or .tflite")


def bundle_from_model_file(
    model_path: Path,
    *,
    name: str,
    version: str,
    release_counter: int,
    key: Ed25519PrivateKey,
    now: datetime,
    hardware_classes: Sequence[str] = ("generic",),
    health_check: HealthCheck | None = None,
    golden_batch: int = 4,
    golden_inputs: Arrays | None = None,
    golden_outputs: Arrays | None = None,
    compression: Mapping[str, Any] | None = None,
    valid_for: timedelta = timedelta(days=365),
    drift_reference: Arrays | None = None,
    drift_config: ExtractorConfig | None = None,
    trial: Mapping[str, Any] | None = None,
    blob_encoding: str | None = ZSTD,
) -> BuiltBundle:
    """Build a signed bundle for ``model_path``.

    Golden inputs default to seeded random tensors fitting the model's inputs; golden
    outputs default to what the model itself produces on them (pass ``golden_outputs``
    to pin outputs computed elsewhere, for example by the uncompressed model).
    Files are stored zstd-compressed where that shrinks the download (``blob_encoding``).
    """
    runtime = runtime_for(model_path)
    runner = load_runner(runtime, model_path)
    feeds = golden_inputs or generate_inputs(runner.inputs, batch=golden_batch)
    outputs = golden_outputs if golden_outputs is not None else runner.run(feeds)
    extra: dict[str, tuple[str, bytes]] = {}
    if drift_reference is not None:
        # Reference = the model's inputs *and* its outputs on them (prediction drift).
        config = drift_config or ExtractorConfig()
        extractor = FeatureExtractor(runner.inputs, runner.outputs, config)
        refs = build_reference(extractor, drift_reference, runner.run(drift_reference))
        extra["drift_reference.json"] = ("drift_reference", encode_reference(refs, config))
    return build_bundle(
        name=name,
        version=version,
        release_counter=release_counter,
        runtime=runtime,
        model=model_path.read_bytes(),
        inputs=runner.inputs,
        outputs=runner.outputs,
        golden_inputs=encode_arrays(feeds),
        golden_outputs=encode_arrays(outputs),
        hardware_classes=hardware_classes,
        key=key,
        now=now,
        health_check=health_check,
        compression=compression,
        valid_for=valid_for,
        extra_files=extra,
        trial=trial,
        blob_encoding=blob_encoding,
    )
