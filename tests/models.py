"""Models for tests: generated, never committed (see :mod:`simulators.models`)."""

from simulators.models import mlp

__all__ = ["mlp"]
