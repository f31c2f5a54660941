"""Errors fxprune raises. Each names the problem and the way out."""
from __future__ import annotations


class FxPruneError(Exception):
    """Base class of every error fxprune raises on purpose."""


class TraceError(FxPruneError):
    """torch.fx could not trace the model (usually data-dependent Python control flow)."""


class ExampleInputsError(FxPruneError, ValueError):
    """``example_inputs`` do not fit the model."""


class SurgeryError(FxPruneError):
    """``finalize`` could not remove channels exactly (it never returns a model that differs)."""


class NotPreparedError(FxPruneError, TypeError):
    """A function that needs ``fxprune.prepare``'s output was given something else."""


class TargetNotReachedError(FxPruneError):
    """A training run (``fxprune train``, the Lightning callback) ended with the pruner's cost
    above its target: the schedule did not finish within the run."""
