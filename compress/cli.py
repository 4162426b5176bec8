"""``edgefleet compress``: compress one model with a method, or let ``auto`` choose.

::

    edgefleet compress MODEL.onnx -o OUT.onnx --method fp16 [--report R.json] [--inputs X.npz]
    edgefleet compress auto MODEL.onnx --calib C.npz --eval E.npz [constraints...]

Both forms share one subparser: its first positional is either the model, or the word
``auto`` followed by the model (a model file literally named ``auto`` can be given as
``./auto``). Exit codes: 0 done, 2 bad input or a pass failed, 3 no recipe met the
constraints.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from compress.constraints import (
    DEFAULT_MAX_LATENCY_RATIO,
    DEFAULT_MIN_AGREEMENT,
    DEFAULT_PROFILE,
    PROFILES,
    Constraints,
)
from compress.errors import CompressError, ConstraintsNotMetError
from compress.evaluate import DEFAULT_RUNS
from compress.inputs import DEFAULT_GENERATED_SAMPLES
from compress.model_file import write_bytes_atomic
from compress.recipes import METHODS

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_CONSTRAINTS = 3
AUTO = "auto"
REPORT_SUFFIX = ".report.json"


_DESCRIPTION = """\
compress one model with a method:
  edgefleet compress MODEL.onnx -o OUT.onnx --method fp16 [--report R.json] [--inputs X.npz]
or try candidate recipes and pick the best one that meets every constraint:
  edgefleet compress auto MODEL.onnx --calib C.npz --eval E.npz [constraints...]

exit codes: 0 done, 2 bad input or a pass failed, 3 no recipe met the constraints
"""


def _thread_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected thread counts like 1,2; got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {text!r}")
    return counts


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add the ``compress`` subcommand to the top-level ``edgefleet`` parser."""
    parser = subparsers.add_parser(
        "compress",
        help="compress an ONNX model (int8, fp16, pruning) and report what it cost",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", metavar="auto|MODEL", help="the .onnx model, or 'auto'")
    parser.add_argument("model", nargs="?", metavar="MODEL", help="the .onnx model after 'auto'")
    parser.add_argument("-o", "--output", type=Path, help="where to write the compressed model")
    parser.add_argument("--method", choices=sorted(METHODS), help="compression method")
    parser.add_argument("--report", type=Path, help="JSON report path (default OUT.report.json)")
    parser.add_argument(
        "--inputs", "--eval", dest="inputs", type=Path, help="evaluation inputs (.npz)"
    )
    parser.add_argument("--calib", type=Path, help="calibration inputs (.npz) for static int8")
    parser.add_argument(
        "--runs", type=int, default=DEFAULT_RUNS, help="timed runs per model (0: skip timing)"
    )
    parser.add_argument(
        "--threads",
        type=_thread_counts,
        default=None,
        metavar="N[,N...]",
        help="intra-op thread counts to time at, e.g. 1,2 (default 1)",
    )
    parser.add_argument(
        "--keep-float",
        action="append",
        default=[],
        metavar="NAME",
        help="node or graph output to keep in float (repeatable)",
    )
    parser.add_argument(
        "--samples", type=int, default=None, help="how many inputs to generate without --inputs"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for generated inputs")
    method = parser.add_argument_group("method options")
    method.add_argument("--per-channel", action="store_true", default=None)
    method.add_argument("--weight-type", choices=["s8", "u8"])
    method.add_argument("--calibration-method", choices=["minmax", "entropy", "percentile"])
    method.add_argument("--sparsity", type=float, help="pruning sparsity in [0, 1)")
    method.add_argument("--prune-scope", choices=["global", "layer"])
    auto = parser.add_argument_group("auto: constraints and choice (only with 'auto')")
    auto.add_argument("--max-size-ratio", type=float, help="largest size vs the original")
    auto.add_argument("--max-zstd-ratio", type=float, help="largest zstd (download) size ratio")
    auto.add_argument(
        "--max-latency-ratio",
        type=float,
        help=f"largest latency ratio (default {DEFAULT_MAX_LATENCY_RATIO}: not slower; "
        "'inf' allows any)",
    )
    auto.add_argument(
        "--min-agreement",
        type=float,
        help=f"lowest top-1 agreement, or cosine without a class axis "
        f"(default {DEFAULT_MIN_AGREEMENT})",
    )
    auto.add_argument("--min-cosine", type=float, help="lowest output cosine similarity")
    auto.add_argument(
        "--max-accuracy-drop", type=float, help="largest accuracy drop (needs labels in --eval)"
    )
    auto.add_argument(
        "--target-profile",
        choices=sorted(PROFILES),
        default=None,
        help="device profile: thread counts and objective (default "
        f"{DEFAULT_PROFILE}: " + PROFILES[DEFAULT_PROFILE].description + ")",
    )
    auto.add_argument(
        "--no-prune-search", action="store_true", help="skip the pruning sparsity search"
    )
    parser.set_defaults(func=_run)


def _usage_error(message: str) -> int:
    print(f"edgefleet compress: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def _run(args: argparse.Namespace) -> int:
    """Entry point of ``edgefleet compress``; returns the exit code."""
    try:
        if args.target == AUTO:
            if args.model is None:
                return _usage_error("'compress auto' needs a MODEL")
            return _run_auto(args, Path(args.model))
        if args.model is not None:
            return _usage_error(
                f"expected one MODEL, got {args.target!r} and {args.model!r} "
                "(did you mean 'compress auto MODEL'?)"
            )
        return _run_single(args, Path(args.target))
    except ConstraintsNotMetError as exc:
        if exc.table_text:
            print(exc.table_text)
        print(f"edgefleet compress: constraints not met: {exc}", file=sys.stderr)
        return EXIT_CONSTRAINTS
    except CompressError as exc:
        print(f"edgefleet compress: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _method_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {
        "per_channel": args.per_channel,
        "weight_type": args.weight_type,
        "calibration": args.calibration_method,
        "sparsity": args.sparsity,
        "scope": args.prune_scope,
    }
    return {key: value for key, value in options.items() if value is not None}


def _write_report(report: dict[str, Any], path: Path) -> None:
    write_bytes_atomic((json.dumps(report, indent=2, sort_keys=True) + "\n").encode(), path)


def _run_single(args: argparse.Namespace, model: Path) -> int:
    from compress.compression import compress_model

    misplaced = [name for name in _AUTO_ONLY if getattr(args, name) is not None]
    if misplaced or args.no_prune_search:
        flags = [f"--{n.replace('_', '-')}" for n in misplaced] or ["--no-prune-search"]
        return _usage_error(f"{', '.join(flags)} only apply to 'compress auto MODEL'")
    if args.method is None:
        return _usage_error("--method is required (or use 'compress auto MODEL')")
    if args.output is None:
        return _usage_error("-o/--output is required")
    threads = args.threads or (1,)
    report = compress_model(
        model,
        args.output,
        args.method,
        eval_inputs=args.inputs,
        calibration_inputs=args.calib,
        runs=args.runs,
        threads=threads,
        keep_float=args.keep_float,
        seed=args.seed,
        samples=args.samples or DEFAULT_GENERATED_SAMPLES,
        **_method_options(args),
    )
    report_path = args.report or Path(str(args.output) + REPORT_SUFFIX)
    _write_report(report.to_dict(), report_path)
    print(report.summary())
    print(f"  report   {report_path}")
    return EXIT_OK


_AUTO_ONLY = (
    "max_size_ratio",
    "max_zstd_ratio",
    "max_latency_ratio",
    "min_agreement",
    "min_cosine",
    "max_accuracy_drop",
    "target_profile",
)


def _constraints(args: argparse.Namespace) -> Constraints:
    def limit(value: float | None, default: float | None) -> float | None:
        if value is None:
            return default
        return None if math.isinf(value) else value

    for name in ("max_size_ratio", "max_zstd_ratio", "min_agreement", "min_cosine"):
        value = getattr(args, name)
        if value is not None and not 0.0 <= value <= 1.0 and not math.isinf(value):
            raise CompressError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
    return Constraints(
        max_size_ratio=limit(args.max_size_ratio, None),
        max_zstd_ratio=limit(args.max_zstd_ratio, None),
        max_latency_ratio=limit(args.max_latency_ratio, DEFAULT_MAX_LATENCY_RATIO),
        min_agreement=limit(args.min_agreement, DEFAULT_MIN_AGREEMENT),
        min_cosine=limit(args.min_cosine, None),
        max_accuracy_drop=limit(args.max_accuracy_drop, None),
    )


def _run_auto(args: argparse.Namespace, model: Path) -> int:
    from compress.auto import DEFAULT_AUTO_SAMPLES, auto_compress

    if args.method is not None:
        return _usage_error("--method cannot be used with 'auto' (auto chooses the method)")
    output = args.output or model.with_suffix(".auto.onnx")
    report_path = args.report or Path(str(output) + REPORT_SUFFIX)
    profile = PROFILES[args.target_profile or DEFAULT_PROFILE]
    if args.threads:
        profile = replace(profile, threads=args.threads)
    constraints = _constraints(args)
    try:
        result = auto_compress(
            model,
            output,
            eval_inputs=args.inputs,
            calibration_inputs=args.calib,
            constraints=constraints,
            profile=profile,
            search_pruning=not args.no_prune_search,
            runs=args.runs,
            keep_float=args.keep_float,
            seed=args.seed,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
            samples=args.samples or DEFAULT_AUTO_SAMPLES,
        )
    except ConstraintsNotMetError as exc:
        _write_report(
            {
                "schema": "edgefleet.compression-auto.v1",
                "chosen": None,
                "error": str(exc),
                "failed": exc.failed,
                "constraints": constraints.to_dict(),
                "profile": profile.to_dict(),
                "table": exc.table,
            },
            report_path,
        )
        raise
    _write_report(result.to_dict(), report_path)
    print(result.table())
    print(f"chosen: {result.chosen.recipe.name} (objective: {profile.objective})")
    print(result.report.summary())
    print(f"  report   {report_path}")
    return EXIT_OK
