"""Compression job requests are checked when submitted, by the compress library itself."""

from __future__ import annotations

import pytest

from compress.constraints import DEFAULT_MIN_AGREEMENT
from controller.compression_request import JobRequestError, JobSpec, parse_job_request


def test_a_method_request_keeps_its_options_and_names_its_target() -> None:
    spec = parse_job_request(
        "prune-magnitude", {"sparsity": 0.3, "runs": 5, "keep_float": ["head"]},
        source_version="1.0.0",
    )  # fmt: skip
    assert spec.target_version == "1.0.0-prune-magnitude"
    assert spec.method_options == {"sparsity": 0.3}
    assert (spec.runs, spec.keep_float) == (5, ("head",))
    assert JobSpec.from_dict(spec.to_dict()) == spec  # stored as JSON, read back the same


def test_auto_constraints_keep_defaults_unless_set_or_lifted() -> None:
    spec = parse_job_request(
        "auto", {"max_size_ratio": 0.5, "max_latency_ratio": None}, source_version="2",
        target_version="2-small",
    )  # fmt: skip
    constraints = spec.constraints_object()
    assert constraints.max_size_ratio == 0.5
    assert constraints.max_latency_ratio is None  # lifted: any latency
    assert constraints.min_agreement == DEFAULT_MIN_AGREEMENT  # the library's default
    assert spec.target_version == "2-small" and spec.search_pruning


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("int3", {}, "unknown method 'int3'"),
        ("fp16", {"sparsity": 0.2}, "has no option(s) ['sparsity']"),
        ("prune-structured", {"sparsity": -0.1}, "must be in [0, 1)"),
        ("auto", {"weight_type": "u8"}, "do not apply to 'auto'"),
        ("auto", {"max_size_ratio": 1.5}, "must be in [0, 1]"),
        ("auto", {"max_latency_ratio": "fast"}, "must be a number"),
        ("auto", {"search_pruning": "yes"}, "true or false"),
        ("auto", {"profile": "tpu"}, "unknown profile 'tpu'"),
        ("fp16", {"runs": True}, "'runs' must be a number"),
        ("fp16", {"runs": 2.5}, "whole number"),
        ("fp16", {"samples": 0}, "'samples' must be in [1, 10000]"),
        ("fp16", {"keep_float": "head"}, "list of names"),
    ],
)
def test_bad_requests_name_the_field_and_value(
    method: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(JobRequestError) as info:
        parse_job_request(method, options, source_version="1")
    assert message in str(info.value)
