"""fxprune: cost-constrained channel pruning as a torch.fx pass.

    pm = fxprune.prepare(model, (x,))      # trace, find channel groups, insert soft masks
    fxprune.channel_groups(pm)             # the groups and their live masks
    small = fxprune.finalize(pm)           # remove masked channels; output unchanged
"""
from __future__ import annotations

from .api import copy_masks, finalize, layer_specs, prepare, tracer_kwargs
from .cost import CostModel, FlopsCost, LayerSpec, ParamsCost
from .errors import (ExampleInputsError, FxPruneError, NotPreparedError, SurgeryError,
                     TargetNotReachedError, TraceError, UnsupportedModelError)
from .groups import ChannelGroup, channel_groups
from .summary import summary
from ._lazy import lazy_getattr as _lazy_getattr

__version__ = "0.1.0"

_LAZY = {
    "LatencyTable": ("fxprune.deploy.latency_table", "LatencyTable"),
    "solve_mckp": ("fxprune.knapsack", "solve_mckp"),
    "InfeasibleBudget": ("fxprune.allocation", "InfeasibleBudget"),
    "SMCP": ("fxprune.methods.smcp", "SMCP"),
    "CCP": ("fxprune.methods.ccp", "CCP"),
    "CUCB": ("fxprune.methods.cucb", "CUCB"),
    "get_method": ("fxprune.methods.base", "get_method"),
    "register_method": ("fxprune.methods.base", "register_method"),
    "PruningSchedule": ("fxprune.schedule", "PruningSchedule"),
}


__getattr__ = _lazy_getattr(__name__, _LAZY)  # heavy or optional parts load on first use


__all__ = ["prepare", "finalize", "copy_masks", "tracer_kwargs", "channel_groups", "summary", "layer_specs", "ChannelGroup",
           "CostModel", "FlopsCost", "ParamsCost", "LayerSpec", "FxPruneError", "TraceError",
           "ExampleInputsError", "SurgeryError", "NotPreparedError", "TargetNotReachedError",
           "UnsupportedModelError", *_LAZY]
