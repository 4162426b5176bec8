"""``compress_model`` and ``edgefleet compress``: what a user runs and what they get back."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import compress.cli
from compress import (
    CompressError,
    ModelLoadError,
    UnknownMethodError,
    compress_model,
)
from tests.unit.conftest_compress import (
    cast_mlp,
    constant_weights_mlp,
    conv_net,
    gemm_mlp,
    run_model,
)

REPORT_KEYS = {
    "method",
    "recipe",
    "original_bytes",
    "compressed_bytes",
    "size_ratio",
    "zstd_ratio",
    "latency_ratio",
    "latency",
    "cosine_similarity",
    "max_abs_diff",
    "top1_agreement",
    "versions",
    "sizes",
    "agreement",
}


def run_cli(argv: list[str]) -> int:
    """A stand-in for the top-level dispatcher: register, parse, call ``args.func``."""
    parser = argparse.ArgumentParser(prog="edgefleet")
    subparsers = parser.add_subparsers(dest="command", required=True)
    compress.cli.register(subparsers)
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_fp16_report_and_model(tmp_path: Path) -> None:
    source = cast_mlp(tmp_path / "cast.onnx")
    report = compress_model(source, tmp_path / "out.onnx", "fp16", runs=5)
    data = report.to_dict()
    json.dumps(data, allow_nan=False)  # strict JSON, ready for a manifest
    assert REPORT_KEYS <= set(data)
    assert data["method"] == "fp16"
    assert 0.45 < data["size_ratio"] < 0.6
    assert data["cosine_similarity"] > 0.999
    assert data["versions"]["onnxruntime"]
    x = np.random.default_rng(0).standard_normal((3, 32)).astype(np.float32)
    (got,) = run_model(tmp_path / "out.onnx", {"x": x})
    assert got.shape == (3, 10) and got.dtype == np.float32


@pytest.mark.parametrize("builder", [gemm_mlp, conv_net, constant_weights_mlp])
def test_int8_dynamic_is_smaller_and_agrees(tmp_path: Path, builder: object) -> None:
    source = builder(tmp_path / "m.onnx")  # type: ignore[operator]
    report = compress_model(source, tmp_path / "q.onnx", "int8-dynamic", runs=3)
    assert report.size_ratio < 0.5, report.summary()
    assert report.evaluation.agreement.cosine_similarity > 0.98, report.summary()
    onnx.checker.check_model(str(tmp_path / "q.onnx"))


def test_constant_weights_are_quantized_not_skipped(tmp_path: Path) -> None:
    source = constant_weights_mlp(tmp_path / "c.onnx")
    report = compress_model(source, tmp_path / "q.onnx", "int8-dynamic", runs=0)
    assert any("Constant" in note for note in report.notes)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert "MatMul" not in ops and ops & {"MatMulInteger", "DynamicQuantizeMatMul"}


def test_eval_npz_with_labels_gives_accuracy(tmp_path: Path) -> None:
    source = gemm_mlp(tmp_path / "m.onnx")
    x = np.random.default_rng(1).standard_normal((40, 32)).astype(np.float32)
    (logits,) = run_model(source, {"x": x})
    np.savez(tmp_path / "e.npz", x=x, labels=logits.argmax(axis=1))
    report = compress_model(source, tmp_path / "o.onnx", "fp16", eval_inputs=tmp_path / "e.npz")
    data = report.to_dict()
    assert data["accuracy_original"] == 1.0
    assert data["accuracy_compressed"] >= 0.95
    assert data["samples"] == 40


def test_cli_writes_output_and_default_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = gemm_mlp(tmp_path / "m.onnx")
    out = tmp_path / "m.int8.onnx"
    code = run_cli(
        ["compress", str(source), "-o", str(out), "--method", "int8-dynamic", "--runs", "3"]
    )
    assert code == 0
    report = json.loads((tmp_path / "m.int8.onnx.report.json").read_text())
    assert REPORT_KEYS <= set(report)
    assert report["method"] == "int8-dynamic"
    assert report["compressed_bytes"] == out.stat().st_size
    printed = capsys.readouterr().out
    assert "int8-dynamic" in printed and "size" in printed and "latency" in printed


def test_cli_report_path_and_options(tmp_path: Path) -> None:
    source = gemm_mlp(tmp_path / "m.onnx")
    code = run_cli(
        [
            "compress", str(source), "-o", str(tmp_path / "o.onnx"), "--method", "int8-dynamic",
            "--per-channel", "--weight-type", "u8", "--report", str(tmp_path / "r.json"),
            "--runs", "0",
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["recipe"]["steps"][0]["options"] == {"per_channel": True, "weight_type": "u8"}
    assert report["latency"] == [] and report["latency_ratio"] is None


def test_missing_model_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ModelLoadError, match="model file not found: .*nope.onnx"):
        compress_model(missing, tmp_path / "o.onnx", "fp16")
    assert (
        run_cli(["compress", str(missing), "-o", str(tmp_path / "o.onnx"), "--method", "fp16"]) == 2
    )
    assert "nope.onnx" in capsys.readouterr().err
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize(
    "content", [b"hello, I am not a model\n", b"\x00\x01\x02garbage" * 10, b""]
)
def test_not_an_onnx_file(tmp_path: Path, content: bytes) -> None:
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(content)
    with pytest.raises(ModelLoadError, match="fake.onnx.*not .*ONNX model"):
        compress_model(fake, tmp_path / "o.onnx", "fp16")


def test_unknown_method_and_option(tmp_path: Path) -> None:
    source = gemm_mlp(tmp_path / "m.onnx")
    with pytest.raises(UnknownMethodError, match="unknown method 'int4'.*fp16"):
        compress_model(source, tmp_path / "o.onnx", "int4")
    with pytest.raises(UnknownMethodError, match=r"no option\(s\) \['sparsity'\]"):
        compress_model(source, tmp_path / "o.onnx", "fp16", sparsity=0.5)
    with pytest.raises(SystemExit) as exited:
        run_cli(["compress", str(source), "-o", str(tmp_path / "o.onnx"), "--method", "int4"])
    assert exited.value.code == 2
    assert issubclass(UnknownMethodError, CompressError)


def test_cli_requires_method_and_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = gemm_mlp(tmp_path / "m.onnx")
    assert run_cli(["compress", str(source), "-o", str(tmp_path / "o.onnx")]) == 2
    assert "--method is required" in capsys.readouterr().err
    assert run_cli(["compress", str(source), "--method", "fp16"]) == 2
    assert "--output is required" in capsys.readouterr().err
