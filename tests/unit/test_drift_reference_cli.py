"""The bundle author chooses the drift features: ``bundle build --reference`` options."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from edgefleet.cli import main
from firmware_bundles.bundle_dir import verify_bundle_dir
from firmware_bundles.drift_reference import decode_reference
from firmware_bundles.golden import encode_arrays
from firmware_bundles.keys import init_keys, load_trusted_keys
from tests.models import mlp


def test_bins_and_summaries_follow_the_authors_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, pub = init_keys(tmp_path / "keys")
    model = mlp(tmp_path / "clf.onnx", seed=3)
    ref = tmp_path / "ref.npz"  # float64, as numpy makes it: cast for the float32 model
    ref.write_bytes(encode_arrays({"x": np.random.default_rng(0).standard_normal((600, 8))}))
    build = ["bundle", "build", str(model), "--name", "clf", "--version", "1.0.0",
             "--key", str(key), "--reference", str(ref)]  # fmt: skip

    assert main([*build, "-o", str(tmp_path / "a"), "--drift-bins", "4"]) == 0
    assert main([*build, "-o", str(tmp_path / "b"), "--drift-max-columns", "4"]) == 0
    now = datetime.now(timezone.utc)
    per_column, wide = (
        decode_reference(
            verify_bundle_dir(tmp_path / d, load_trusted_keys([pub]), now)
            .blob_paths["drift_reference.json"].read_bytes()
        )[0]
        for d in ("a", "b")
    )  # fmt: skip
    assert per_column["x[0]"].buckets == 4 and "x[7]" in per_column
    assert {"x:mean", "x:std"} <= set(wide) and "x[0]" not in wide  # 8 columns > 4: summary
    assert wide["x:mean"].buckets == 10

    capsys.readouterr()
    assert main([*build, "-o", str(tmp_path / "c"), "--drift-bins", "1"]) == 2
    assert "drift bins must be 2..100, got 1" in capsys.readouterr().err
