"""From the CLI: ``compress auto`` -> ``bundle build`` ships the chosen recipe and the full
candidate table in the manifest's ``compression`` field, and the model stored zstd-encoded."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from edgefleet.cli import main as edgefleet
from firmware_bundles.bundle_dir import verify_bundle_dir
from firmware_bundles.keys import init_keys, load_trusted_keys
from tests.models import mlp


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return init_keys(tmp_path / "keys")


def build(model: Path, key: Path, out: Path, *extra: str) -> int:
    return edgefleet(
        ["bundle", "build", str(model), "--name", "clf", "--version", "1.0.0",
         "--key", str(key), "-o", str(out), *extra]
    )  # fmt: skip


def test_an_auto_compressed_model_carries_its_choice_and_table_into_the_bundle(
    tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model = mlp(tmp_path / "m.onnx", hidden=256)
    small = tmp_path / "small.onnx"
    code = edgefleet(
        ["compress", "auto", str(model), "-o", str(small), "--no-prune-search",
         "--max-latency-ratio", "inf", "--max-size-ratio", "0.6", "--runs", "2"]
    )  # fmt: skip
    assert code == 0
    written = json.loads((tmp_path / "small.onnx.report.json").read_text())

    assert build(small, keys[0], tmp_path / "bundle") == 0
    assert "embedding compression report" in capsys.readouterr().out
    bundle = verify_bundle_dir(
        tmp_path / "bundle", load_trusted_keys([keys[1]]), datetime.now(timezone.utc)
    )
    compression = bundle.manifest.compression
    assert compression is not None
    assert compression["chosen"] == written["chosen"]
    names = [row["recipe"]["name"] for row in compression["table"]]
    assert len(names) >= 2 and compression["chosen"]["name"] in names
    assert compression["report"]["size_ratio"] <= 0.6
    assert bundle.manifest.file("model").content_size == small.stat().st_size

    # --no-compression-report leaves it out.
    assert build(small, keys[0], tmp_path / "plain", "--no-compression-report") == 0
    plain = verify_bundle_dir(
        tmp_path / "plain", load_trusted_keys([keys[1]]), datetime.now(timezone.utc)
    )
    assert plain.manifest.compression is None


def test_a_stale_report_beside_the_model_is_refused(
    tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model = mlp(tmp_path / "m.onnx", hidden=64)
    small = tmp_path / "small.onnx"
    assert edgefleet(["compress", str(model), "-o", str(small), "--method", "fp16"]) == 0
    mlp(small, hidden=32)  # the model was rebuilt; its report was not
    assert build(small, keys[0], tmp_path / "bundle") == 2
    assert "stale report" in capsys.readouterr().err
    assert not (tmp_path / "bundle").exists()
