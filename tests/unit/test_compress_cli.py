"""``compress_model`` and ``edgefleet compress``: what a user runs and what they get back."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

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


# ---------------------------------------------------------------- every method, from the CLI


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_cli_int8_static_uses_the_calibration_set_and_writes_qdq(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = gemm_mlp(tmp_path / "m.onnx")
    rng = np.random.default_rng(6)
    np.savez(tmp_path / "eval.npz", x=rng.standard_normal((64, 32)).astype(np.float32))
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((32, 32)).astype(np.float32))
    # Calibrated on inputs a hundred times smaller than real ones: the ranges clip.
    np.savez(tmp_path / "tiny.npz", x=rng.standard_normal((32, 32)).astype(np.float32) / 100)

    def static(calib: str) -> dict[str, object]:
        out = tmp_path / f"q-{calib}.onnx"
        code = run_cli(
            ["compress", str(source), "-o", str(out), "--method", "int8-static",
             "--calib", str(tmp_path / f"{calib}.npz"), "--eval", str(tmp_path / "eval.npz"),
             "--calibration-method", "minmax", "--runs", "0"]
        )  # fmt: skip
        assert code == 0, capsys.readouterr().err
        ops = Counter(n.op_type for n in onnx.load(str(out)).graph.node)
        assert ops["QuantizeLinear"] >= 2 and ops["DequantizeLinear"] >= 4, ops
        report: dict[str, object] = json.loads(Path(f"{out}.report.json").read_text())
        return report

    report = static("calib")
    assert report["recipe"] == {
        "name": "int8-static",
        "steps": [{"kind": "int8-static", "options": {"calibration": "minmax"}}],
    }
    assert report["size_ratio"] < 0.5 and report["cosine_similarity"] > 0.99  # type: ignore[operator]
    clipped = static("tiny")
    assert clipped["cosine_similarity"] < 0.9  # type: ignore[operator]


def test_cli_magnitude_pruning_zeroes_the_share_asked_for(tmp_path: Path) -> None:
    source = gemm_mlp(tmp_path / "m.onnx")
    out = tmp_path / "p.onnx"
    code = run_cli(
        ["compress", str(source), "-o", str(out), "--method", "prune-magnitude",
         "--sparsity", "0.4", "--prune-scope", "layer", "--runs", "0"]
    )  # fmt: skip
    assert code == 0
    before, after = _initializers(source), _initializers(out)
    for name in ("W1", "W2"):  # per layer: each weight matrix loses 40%
        assert after[name].shape == before[name].shape
        assert abs(float(np.mean(after[name] == 0)) - 0.4) < 0.01, name
    assert np.array_equal(after["b1"], before["b1"])  # biases stay
    report = json.loads((tmp_path / "p.onnx.report.json").read_text())
    assert report["zstd_ratio"] < 0.9  # zeros compress: a smaller download


def test_cli_structured_pruning_shrinks_the_tensors(tmp_path: Path) -> None:
    source = gemm_mlp(tmp_path / "m.onnx", hidden=128)
    out = tmp_path / "s.onnx"
    code = run_cli(
        ["compress", str(source), "-o", str(out), "--method", "prune-structured",
         "--sparsity", "0.5", "--runs", "0"]
    )  # fmt: skip
    assert code == 0
    onnx.checker.check_model(str(out), full_check=True)
    weights = _initializers(out)
    # Half the hidden units are gone, and the next layer's inputs with them.
    assert weights["W1"].shape == (64, 32) and weights["b1"].shape == (64,)
    assert weights["W2"].shape == (10, 64)
    assert out.stat().st_size < 0.6 * source.stat().st_size
    x = np.random.default_rng(7).standard_normal((5, 32)).astype(np.float32)
    (got,) = run_model(out, {"x": x})
    assert got.shape == (5, 10)


def test_cli_auto_min_agreement_refuses_recipes_that_break_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 50 classes on generated inputs: dynamic int8 flips the top-1 class of 1-2 of 128
    # samples (agreement 0.984-0.992); fp16 keeps them all but is too large here.
    source = gemm_mlp(tmp_path / "m.onnx", classes=50)
    common = ["compress", "auto", str(source), "--samples", "128", "--max-size-ratio", "0.45",
              "--max-latency-ratio", "inf", "--runs", "0", "--no-prune-search"]  # fmt: skip
    code = run_cli([*common, "--min-agreement", "0.999", "--report", str(tmp_path / "r.json")])
    assert code == 3
    err = capsys.readouterr().err
    assert "constraints not met" in err and "top1_agreement" in err and "< 0.999" in err, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["chosen"] is None and report["constraints"]["min_agreement"] == 0.999
    int8 = [row for row in report["table"] if row["name"].startswith("int8")]
    assert len(int8) == report["failed"]["min_agreement"] == 3
    assert all([v["constraint"] for v in row["violations"]] == ["min_agreement"] for row in int8)
    assert not (tmp_path / "m.auto.onnx").exists()

    # A looser floor lets the same measurements through: one int8 recipe is chosen.
    assert run_cli([*common, "--min-agreement", "0.98"]) == 0
    chosen = json.loads((tmp_path / "m.auto.onnx.report.json").read_text())["chosen"]
    assert chosen["name"].startswith("int8")


def test_cli_auto_target_profile_changes_the_pick(tmp_path: Path) -> None:
    # Dynamic int8 on Conv is the smallest model and several times slower: the default
    # profile (size x latency) takes fp16, the "smallest" profile the int8 model.
    source = conv_net(tmp_path / "c.onnx", size=32)
    picks = {}
    for profile in ("cpu", "smallest"):
        out = tmp_path / f"{profile}.onnx"
        code = run_cli(
            ["compress", "auto", str(source), "-o", str(out), "--target-profile", profile,
             "--max-latency-ratio", "inf", "--runs", "20", "--no-prune-search"]
        )  # fmt: skip
        assert code == 0
        report = json.loads((tmp_path / f"{profile}.onnx.report.json").read_text())
        assert report["profile"]["name"] == profile and report["profile"]["threads"] == [1, 2]
        picks[profile] = report["chosen"]["name"]
    assert picks == {"cpu": "fp16", "smallest": "int8-dyn-all"}
