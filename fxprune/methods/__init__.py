"""Pruning methods that run on the prepared graph's masks."""
from .smcp import SMCP

__all__ = ["SMCP"]
