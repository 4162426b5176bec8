"""What was measured about a candidate: sizes, latency, agreement, as plain data.

Pure dataclasses, free of onnxruntime, so the decision code (constraints, selection) can
be used and tested without a runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compress.agreement import Agreement
from firmware_bundles.blob_encoding import ZSTD_LEVEL as BUNDLE_ZSTD_LEVEL

# Bundle blobs are zstd-compressed for download (firmware_bundles.blob_encoding). On float
# weights the level hardly matters (*measured*, 6.8 MB CNN: levels 3/10/19 gave
# 6,282,350/6,279,284/6,280,995 bytes, level 19 taking 1.4 s against 0.03 s); zeros from
# pruning are what compress. Sizes are reported at the level bundles use.
ZSTD_LEVEL = BUNDLE_ZSTD_LEVEL


@dataclass(frozen=True)
class LatencyResult:
    """Median latency of the original and the candidate, timed in turns in one run.

    Attributes:
        threads: intra-op thread count of both sessions.
        runs: Timed runs per model (after warm-up).
        original_ms: Median latency of the original model, in milliseconds.
        candidate_ms: Median latency of the candidate model, in milliseconds.
        ratio: ``candidate_ms / original_ms`` (below 1 means faster).
    """

    threads: int
    runs: int
    original_ms: float
    candidate_ms: float
    ratio: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "threads": self.threads,
            "runs": self.runs,
            "original_ms": self.original_ms,
            "candidate_ms": self.candidate_ms,
            "ratio": self.ratio,
        }


@dataclass(frozen=True)
class SizeMetrics:
    """Sizes of the original and the candidate, raw and zstd-compressed, in bytes."""

    original_bytes: int
    candidate_bytes: int
    original_zstd_bytes: int
    candidate_zstd_bytes: int
    zstd_level: int = ZSTD_LEVEL

    @property
    def ratio(self) -> float:
        """Raw size ratio, candidate / original (below 1 is smaller)."""
        return self.candidate_bytes / self.original_bytes

    @property
    def zstd_ratio(self) -> float:
        """zstd-compressed size ratio, candidate / original (what a download costs)."""
        return self.candidate_zstd_bytes / self.original_zstd_bytes

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "original_bytes": self.original_bytes,
            "candidate_bytes": self.candidate_bytes,
            "ratio": self.ratio,
            "original_zstd_bytes": self.original_zstd_bytes,
            "candidate_zstd_bytes": self.candidate_zstd_bytes,
            "zstd_ratio": self.zstd_ratio,
            "zstd_level": self.zstd_level,
        }


@dataclass(frozen=True)
class Evaluation:
    """Everything measured about one candidate.

    Attributes:
        sizes: Raw and zstd sizes.
        agreement: Output agreement (and accuracy with labels).
        latency: One result per thread count measured.
        samples: Number of evaluation samples.
        inputs_source: Where the evaluation inputs came from.
    """

    sizes: SizeMetrics
    agreement: Agreement
    latency: tuple[LatencyResult, ...]
    samples: int
    inputs_source: str

    @property
    def latency_ratio(self) -> float | None:
        """The worst (highest) latency ratio over thread counts, or None if not timed."""
        return max((r.ratio for r in self.latency), default=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "sizes": self.sizes.to_dict(),
            "agreement": self.agreement.to_dict(),
            "latency": [r.to_dict() for r in self.latency],
            "latency_ratio": self.latency_ratio,
            "samples": self.samples,
            "inputs_source": self.inputs_source,
        }
