"""Pruning methods on the prepared graph's masks, found through one registry.

``prune.method`` in a recipe, ``fxprune train`` and ``benchmarks/bench_methods.py`` all read
:data:`registry` (see :mod:`fxprune.methods.base` for the protocol every method follows).
"""
from .base import PruningMethod
from .registration import MethodEntry, get_method, method_names, register_method, registry
from .smcp import SMCP

register_method("smcp", "fxprune:SMCP", summary="SMCP: soft masks, Taylor importance, global knapsack")
register_method("hard", "fxprune:SMCP", defaults={"masks": "hard"},
                summary="SMCP's engine with hard masks (pruned channels never return, as HALP)")
register_method("uniform", "fxprune:SMCP", defaults={"allocation": "uniform"},
                summary="SMCP's engine, every group keeps the same fraction (no knapsack)")
register_method("oneshot", "fxprune.methods.smcp:one_shot",
                summary="one-shot pruning at one step by an importance, then fine-tuning")
register_method("magnitude", "fxprune.methods.smcp:one_shot", defaults={"importance": "magnitude"},
                summary="one-shot pruning by the L2 norm of readers' input columns, then fine-tuning")
register_method("taylor", "fxprune.methods.smcp:one_shot", defaults={"importance": "taylor"},
                summary="one-shot Taylor pruning under the budget, then fine-tuning")
register_method("ccp", "fxprune.methods.ccp:CCP",
                summary="CCP: pairwise second-order Taylor, 0-1 quadratic selection per group")
register_method("cucb", "fxprune.methods.cucb:CUCB",
                summary="CUCB: combinatorial bandit over channels while training from scratch")
register_method("cucb_random", "fxprune.methods.cucb:CUCB", defaults={"selection": "random"},
                summary="CUCB's control: random active sets, same budget and final rule")

__all__ = ["SMCP", "PruningMethod", "MethodEntry", "registry", "register_method", "get_method",
           "method_names"]
