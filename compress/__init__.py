"""Model compression for EdgeFleet: model in, smaller model and a report out.

Pure library plus the ``edgefleet compress`` CLI (``compress.cli``); no network.

Typical use::

    from compress import compress_model

    report = compress_model("model.onnx", "model.fp16.onnx", "fp16", eval_inputs="eval.npz")
    print(report.size_ratio, report.to_dict()["cosine_similarity"])

    # or measure candidate recipes and pick the best that meets every constraint
    result = auto_compress("model.onnx", "model.auto.onnx", eval_inputs="eval.npz",
                           constraints=Constraints(max_size_ratio=0.3, min_agreement=0.99))
    print(result.table())
"""

from __future__ import annotations

from compress.agreement import Agreement, OutputAgreement, compare_outputs
from compress.auto import AutoResult, auto_compress, default_candidates
from compress.compression import compress_model, load_eval_set
from compress.constraints import PROFILES, Constraints, TargetProfile, Violation
from compress.errors import (
    CompressError,
    ConstraintsNotMetError,
    InputsError,
    ModelLoadError,
    UnknownMethodError,
    UnsupportedModelError,
)
from compress.evaluate import Reference, evaluate_candidate
from compress.float16 import convert_to_fp16
from compress.graph_edits import gemm_to_matmul
from compress.heads import resolve_keep_float
from compress.inputs import EvalSet, InputSpec, generate_inputs, input_specs, load_npz
from compress.measurements import Evaluation, LatencyResult, SizeMetrics
from compress.model_file import load_model, save_model
from compress.prepare import (
    PreparedModel,
    constants_to_initializers,
    infer_shapes,
    prepare_model,
    upgrade_opset,
)
from compress.pruning import PruneResult, magnitude_prune
from compress.quantize import quantize_dynamic_int8, quantize_static_qdq
from compress.recipes import METHODS, Recipe, Step, apply_recipe, recipe_for_method
from compress.report import CompressionReport
from compress.selection import Candidate
from compress.sessions import measure_latency
from compress.structured_pruning import StructuredPruneResult, find_chains, structured_prune

__all__ = [
    "METHODS",
    "PROFILES",
    "Agreement",
    "AutoResult",
    "Candidate",
    "CompressError",
    "CompressionReport",
    "Constraints",
    "ConstraintsNotMetError",
    "EvalSet",
    "Evaluation",
    "InputSpec",
    "InputsError",
    "LatencyResult",
    "ModelLoadError",
    "OutputAgreement",
    "PreparedModel",
    "PruneResult",
    "Recipe",
    "Reference",
    "SizeMetrics",
    "Step",
    "StructuredPruneResult",
    "TargetProfile",
    "UnknownMethodError",
    "UnsupportedModelError",
    "Violation",
    "apply_recipe",
    "auto_compress",
    "compare_outputs",
    "compress_model",
    "constants_to_initializers",
    "convert_to_fp16",
    "default_candidates",
    "evaluate_candidate",
    "find_chains",
    "gemm_to_matmul",
    "generate_inputs",
    "infer_shapes",
    "input_specs",
    "load_eval_set",
    "load_model",
    "load_npz",
    "magnitude_prune",
    "measure_latency",
    "prepare_model",
    "quantize_dynamic_int8",
    "quantize_static_qdq",
    "recipe_for_method",
    "resolve_keep_float",
    "save_model",
    "structured_prune",
    "upgrade_opset",
]
