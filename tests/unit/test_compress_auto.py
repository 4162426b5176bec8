"""``auto``: candidates are measured, gated on the constraints, and the best one chosen."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

import compress.cli
from compress import (
    Constraints,
    ConstraintsNotMetError,
    Recipe,
    Step,
    auto_compress,
    compress_model,
    default_candidates,
    generate_inputs,
    input_specs,
    load_model,
    resolve_keep_float,
)
from tests.unit.conftest_compress import conv_net, gemm_mlp, matmul_mlp, run_model

FP16 = Recipe("fp16", (Step("fp16"),))
INT8_ALL = Recipe("int8-dyn-all", (Step("int8-dynamic"),))
HARSH_PRUNE = Recipe("prune-structured-75", (Step("prune-structured", {"sparsity": 0.75}),))


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="edgefleet")
    subparsers = parser.add_subparsers(dest="command", required=True)
    compress.cli.register(subparsers)
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_gate_refuses_a_smaller_recipe_that_breaks_agreement(tmp_path: Path) -> None:
    source = gemm_mlp(tmp_path / "m.onnx")
    result = auto_compress(
        source,
        tmp_path / "out.onnx",
        recipes=[HARSH_PRUNE, FP16],
        search_pruning=False,
        constraints=Constraints(max_latency_ratio=None, min_agreement=0.99),
        runs=0,
    )
    harsh, fp16 = result.candidates
    assert harsh.evaluation is not None
    assert harsh.evaluation.sizes.ratio < fp16.evaluation.sizes.ratio  # type: ignore[union-attr]
    assert [v.constraint for v in harsh.violations] == ["min_agreement"]
    assert result.chosen is fp16
    assert (tmp_path / "out.onnx").stat().st_size == fp16.evaluation.sizes.candidate_bytes  # type: ignore[union-attr]


def test_auto_refuses_when_nothing_meets_the_constraints(tmp_path: Path) -> None:
    source = gemm_mlp(tmp_path / "m.onnx")
    with pytest.raises(ConstraintsNotMetError) as raised:
        auto_compress(
            source,
            tmp_path / "out.onnx",
            recipes=[FP16],
            search_pruning=False,
            constraints=Constraints(max_size_ratio=0.1, max_latency_ratio=None),
            runs=0,
        )
    error = raised.value
    assert "no candidate met max_size_ratio = 0.1" in str(error)
    assert "closest: size_ratio 0.5" in str(error) and "by fp16" in str(error)
    assert error.failed == {"max_size_ratio": 1}
    assert error.table[0]["name"] == "fp16" and "fp16" in error.table_text
    assert not (tmp_path / "out.onnx").exists()


def test_auto_never_picks_a_slower_model_unless_allowed(tmp_path: Path) -> None:
    # Dynamic int8 on Conv is the only recipe small enough, and it is several times slower.
    source = conv_net(tmp_path / "c.onnx", size=32)
    limits = {"max_size_ratio": 0.45}
    with pytest.raises(ConstraintsNotMetError) as refused:
        auto_compress(
            source,
            recipes=[FP16, INT8_ALL],
            search_pruning=False,
            constraints=Constraints(**limits),  # default: not slower than the original
            runs=20,
        )
    rows = {row["name"]: row for row in refused.value.table}
    assert [v["constraint"] for v in rows["int8-dyn-all"]["violations"]] == ["max_latency_ratio"]
    assert rows["int8-dyn-all"]["latency_ratio"] > 1.5
    allowed = auto_compress(
        source,
        recipes=[FP16, INT8_ALL],
        search_pruning=False,
        constraints=Constraints(**limits, max_latency_ratio=None),
        runs=20,
    )
    assert allowed.chosen.recipe.name == "int8-dyn-all"
    assert allowed.chosen.evaluation.latency_ratio > 1.5  # type: ignore[union-attr, operator]


def test_pruning_search_finds_the_highest_passing_sparsity(tmp_path: Path) -> None:
    source = conv_net(tmp_path / "c.onnx")
    result = auto_compress(
        source,
        recipes=[FP16],
        constraints=Constraints(max_latency_ratio=None, min_agreement=0.9),
        runs=0,
    )
    magnitude = next(c for c in result.candidates if c.recipe.name.startswith("prune-magnitude"))
    trail = magnitude.search
    passed = [step["sparsity"] for step in trail if step["passed"]]
    failed = [step["sparsity"] for step in trail if not step["passed"]]
    assert passed and failed, trail
    chosen_sparsity = magnitude.recipe.steps[0].options["sparsity"]
    assert chosen_sparsity == max(passed) < min(failed)
    assert not magnitude.violations
    names = [c.recipe.name for c in result.candidates]
    assert f"prune-magnitude-{round(chosen_sparsity * 100)}+fp16" in names
    json.dumps(result.to_dict(), allow_nan=False)


def test_auto_result_carries_recipe_and_table_as_json(tmp_path: Path) -> None:
    source = matmul_mlp(tmp_path / "m.onnx")
    result = auto_compress(
        source,
        tmp_path / "o.onnx",
        recipes=[FP16, Recipe("int8-dyn", (Step("int8-dynamic"),))],
        search_pruning=False,
        constraints=Constraints(max_latency_ratio=None),
        runs=3,
        profile="download",
    )
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["chosen"] == result.chosen.recipe.to_dict()
    assert {row["name"] for row in data["table"]} == {"fp16", "int8-dyn"}
    assert data["profile"]["objective"] == "download"
    assert data["report"]["recipe"] == data["chosen"]
    # The download objective prefers the smaller zstd size.
    rows = {row["name"]: row for row in data["table"] if row["meets_constraints"]}
    assert data["chosen"]["name"] == min(rows, key=lambda n: rows[n]["zstd_ratio"])
    assert Recipe.from_dict(data["chosen"]) == result.chosen.recipe


def test_default_candidates_fit_the_model(tmp_path: Path) -> None:
    mlp = load_model(gemm_mlp(tmp_path / "m.onnx"))
    conv = load_model(conv_net(tmp_path / "c.onnx"))
    mlp_names = [r.name for r in default_candidates(mlp, has_calibration=False)]
    conv_names = [r.name for r in default_candidates(conv, has_calibration=True)]
    assert "fp16" in mlp_names and "int8-dyn" in mlp_names
    assert "int8-dyn-all" not in mlp_names and "int8-qdq-pc-minmax" not in mlp_names
    assert {"int8-dyn-all", "int8-qdq-pc-entropy", "int8-qdq-pc-percentile"} <= set(conv_names)


def test_cli_auto_picks_and_writes_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = gemm_mlp(tmp_path / "m.onnx")
    rng = np.random.default_rng(2)
    calib = rng.standard_normal((32, 32)).astype(np.float32)
    evals = rng.standard_normal((64, 32)).astype(np.float32)
    (logits,) = run_model(source, {"x": evals})
    np.savez(tmp_path / "c.npz", x=calib)
    np.savez(tmp_path / "e.npz", x=evals, labels=logits.argmax(axis=1))
    code = run_cli(
        [
            "compress", "auto", str(source), "--calib", str(tmp_path / "c.npz"),
            "--eval", str(tmp_path / "e.npz"), "--max-size-ratio", "0.6",
            "--max-latency-ratio", "inf", "--max-accuracy-drop", "0.05", "--runs", "3",
            "--no-prune-search",
        ]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "recipe" in out and "chosen:" in out
    report = json.loads((tmp_path / "m.auto.onnx.report.json").read_text())
    assert report["chosen"]["name"] in {row["name"] for row in report["table"]}
    assert report["constraints"]["max_latency_ratio"] is None
    assert report["report"]["size_ratio"] <= 0.6
    assert report["report"]["accuracy_drop"] <= 0.05
    assert (tmp_path / "m.auto.onnx").exists()


def test_cli_auto_exit_code_3_names_the_constraint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = gemm_mlp(tmp_path / "m.onnx")
    code = run_cli(
        [
            "compress", "auto", str(source), "--max-size-ratio", "0.05",
            "--runs", "0", "--no-prune-search", "--report", str(tmp_path / "r.json"),
        ]
    )  # fmt: skip
    assert code == 3
    err = capsys.readouterr().err
    assert "max_size_ratio = 0.05" in err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["chosen"] is None and report["table"]


def test_cli_rejects_mixed_modes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = str(gemm_mlp(tmp_path / "m.onnx"))
    assert run_cli(["compress", "auto", source, "--method", "fp16"]) == 2
    assert "--method cannot be used with 'auto'" in capsys.readouterr().err
    assert (
        run_cli(["compress", source, "-o", "x.onnx", "--method", "fp16", "--max-size-ratio", "0.5"])
        == 2
    )
    assert "--max-size-ratio only apply to 'compress auto MODEL'" in capsys.readouterr().err
    assert run_cli(["compress", "auto"]) == 2
    assert "needs a MODEL" in capsys.readouterr().err


def test_keep_float_output_head(tmp_path: Path) -> None:
    source = conv_net(tmp_path / "c.onnx")
    assert resolve_keep_float(load_model(source), ["logits"]) == ["fc"]
    report = compress_model(
        source, tmp_path / "q.onnx", "int8-dynamic", keep_float=["logits"], runs=0
    )
    quantized = load_model(tmp_path / "q.onnx")
    ops = {n.name: n.op_type for n in quantized.graph.node}
    assert ops["fc"] == "MatMul"  # the head stays a float MatMul
    assert "ConvInteger" in ops.values()
    assert report.evaluation.agreement.cosine_similarity > 0.99


def test_static_int8_upgrades_old_opset_and_uses_calibration(tmp_path: Path) -> None:
    source = matmul_mlp(tmp_path / "old.onnx", opset=11)
    calib = generate_inputs(input_specs(load_model(source)), samples=16, seed=9)
    report = compress_model(
        source, tmp_path / "q.onnx", "int8-static", calibration_inputs=calib, runs=0
    )
    assert any("opset 11 -> 13" in note for note in report.notes)
    assert report.size_ratio < 0.5
    assert report.evaluation.agreement.cosine_similarity > 0.98


def test_profile_objective_decides_between_small_and_fast(tmp_path: Path) -> None:
    source = conv_net(tmp_path / "c.onnx", size=32)
    loose = Constraints(max_latency_ratio=None)
    picks = {
        profile: auto_compress(
            source,
            recipes=[FP16, INT8_ALL],
            search_pruning=False,
            constraints=loose,
            runs=20,
            profile=profile,
        ).chosen.recipe.name
        for profile in ("cpu", "smallest")
    }
    # int8 on Conv is smaller but several times slower: the default (size x latency)
    # profile takes fp16; the "smallest" profile takes the int8 model.
    assert picks == {"cpu": "fp16", "smallest": "int8-dyn-all"}
