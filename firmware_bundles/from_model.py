"""Make a bundle straight from a model file: read its I/O spec, compute golden outputs.

This is the IO edge the CLI and the controller share: it loads the model in its runtime
once to learn the tensor specs and to produce the golden outputs for the health check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_bundles.builder import BuiltBundle, build_bundle
from firmware_bundles.drift_reference import (
    ExtractorConfig,
    FeatureExtractor,
    FeatureRef,
    build_reference,
    encode_reference,
)
from firmware_bundles.errors import ManifestError
from firmware_bundles.golden import Arrays, encode_arrays, generate_inputs
from firmware_bundles.manifest import ZSTD, HealthCheck, TensorSpec
from firmware_bundles.runtimes import ModelRunner, load_runner

# Reference quantile bins (10 by default) need enough rows to mean anything.
MIN_REFERENCE_ROWS = 100
REFERENCE_BATCH = 1024


def reference_for(
    runner: ModelRunner, data: Arrays, config: ExtractorConfig | None = None
) -> tuple[dict[str, FeatureRef], ExtractorConfig]:
    """Drift reference bins of ``data`` (model inputs) and of the model's outputs on it.

    Raises:
        ManifestError: ``data`` lacks an input of the model, or has too few rows.
    """
    missing = [spec.name for spec in runner.inputs if spec.name not in data]
    if missing:
        raise ManifestError(
            f"drift reference data lacks model input(s) {missing} (it has {sorted(data)})"
        )
    rows = {len(data[spec.name]) if np.ndim(data[spec.name]) else 1 for spec in runner.inputs}
    if len(rows) != 1 or min(rows) < MIN_REFERENCE_ROWS:
        raise ManifestError(
            f"drift reference data needs one row count of at least {MIN_REFERENCE_ROWS} "
            f"across inputs, got {sorted(rows)}"
        )
    config = config or ExtractorConfig()
    feeds = {spec.name: _as_input(data[spec.name], spec) for spec in runner.inputs}
    extractor = FeatureExtractor(runner.inputs, runner.outputs, config)
    # In batches: the model's activations for a large reference set need not fit at once.
    total = rows.pop()
    parts = [
        runner.run({k: v[start : start + REFERENCE_BATCH] for k, v in feeds.items()})
        for start in range(0, total, REFERENCE_BATCH)
    ]
    outputs = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    return build_reference(extractor, feeds, outputs), config


def _as_input(array: Any, spec: TensorSpec) -> Any:
    """``array`` in the input's dtype when that loses no meaning (float64 reference data
    for a float32 model, numpy's default); anything else is an error naming both."""
    array = np.asarray(array)
    want = np.dtype(spec.dtype)
    if array.dtype == want:
        return array
    if array.dtype.kind == want.kind or (array.dtype.kind in "iu" and want.kind in "iuf"):
        return array.astype(want)
    raise ManifestError(
        f"drift reference input {spec.name!r} is {array.dtype}, the model takes {want}"
    )


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
        refs, config = reference_for(runner, drift_reference, drift_config)
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
