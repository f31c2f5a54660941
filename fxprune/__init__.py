"""fxprune: cost-constrained channel pruning as a torch.fx pass.

    pm = fxprune.prepare(model, (x,))      # trace, find channel groups, insert soft masks
    fxprune.channel_groups(pm)             # the groups and their live masks
    small = fxprune.finalize(pm)           # remove masked channels; output unchanged
"""
from __future__ import annotations

from .api import copy_masks, finalize, layer_specs, prepare, tracer_kwargs
from .cost import CostModel, FlopsCost, LayerSpec, ParamsCost
from .errors import (ExampleInputsError, FxPruneError, NotPreparedError, SurgeryError,
                     TargetNotReachedError, TraceError)
from .groups import ChannelGroup, channel_groups
from .summary import summary

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


def __getattr__(name):  # heavy or optional parts load on first use
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    import importlib.util
    if not name.startswith("_") and "." not in name and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        # a subpackage or module (fxprune.methods.method_names(), as the README writes it,
        # failed until something had imported it: break159 F7)
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'fxprune' has no attribute {name!r}")


__all__ = ["prepare", "finalize", "copy_masks", "tracer_kwargs", "channel_groups", "summary", "layer_specs", "ChannelGroup",
           "CostModel", "FlopsCost", "ParamsCost", "LayerSpec", "FxPruneError", "TraceError",
           "ExampleInputsError", "SurgeryError", "NotPreparedError", "TargetNotReachedError", *_LAZY]
