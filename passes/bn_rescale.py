"""SMCP's batch-norm rescaling.

A batch norm that directly follows a layer whose input channels are masked gets that layer's
mask as an extra argument and scales its gamma by the kept fraction ``sum(m) / C_in``
(:class:`fxprune.masks.RescaledBatchNorm2d`). ``finalize`` folds the factor into gamma.
"""
from __future__ import annotations

import warnings

from torch import fx, nn

from fxprune.errors import warn
from fxprune.masks import RESCALED_CLASS, MaskBank, _InputMasked, _RescaledBatchNorm, wrap

from .insert_masks import MASK_OWNER


def insert_bn_rescale(gm: fx.GraphModule, mode: str = "kept_fraction") -> list[str]:
    """Wrap every BN fed only by a masked layer; returns the BN module names. Idempotent: a BN
    already wrapped just gets ``mode`` updated; with ``mode="off"`` an unwrapped BN stays a
    plain one. A norm of another class (``nn.SyncBatchNorm``) is warned of, not rescaled. The
    mask bank records the BNs rescaled by the kept fraction (its state_dict carries them)."""
    if mode not in ("kept_fraction", "off"):
        raise ValueError(f"bn_rescale must be 'kept_fraction' or 'off', got {mode!r}")
    modules = dict(gm.named_modules())
    wrapped, unknown = [], []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _InputMasked):
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module":
            continue
        bn_node = users[0]
        bn = modules[bn_node.target]
        if type(bn) in RESCALED_CLASS and mode == "off":
            continue  # nothing to scale: the norm stays a plain one (nn.SyncBatchNorm can swap it)
        if type(bn) in RESCALED_CLASS:
            if sum(1 for n in gm.graph.nodes if n.op == "call_module" and n.target == bn_node.target) > 1:
                continue  # a BN shared by several layers has no single kept fraction
            wrap(bn, RESCALED_CLASS)
            bn.fxprune_source = node.target
            bn_node.args = (bn_node.args[0], node.args[1])
        elif not hasattr(bn, "fxprune_rescale"):
            if mode != "off" and isinstance(bn, nn.modules.batchnorm._BatchNorm):
                unknown.append(f"{bn_node.target} ({type(bn).__name__})")
            continue
        bn.fxprune_rescale = mode
        wrapped.append(bn_node.target)
    gm.recompile()
    bank = getattr(gm, MASK_OWNER, None)
    if isinstance(bank, MaskBank):  # recorded in the state_dict (a load without it raises)
        bank.fxprune_rescaled = sorted(name for name, m in gm.named_modules() if isinstance(
            m, _RescaledBatchNorm) and m.fxprune_rescale == "kept_fraction")
    if unknown:  # e.g. an nn.SyncBatchNorm: said, not silently left out (break31 #4)
        warnings.warn(f"bn_rescale={mode!r} has no rescaled form of {', '.join(unknown[:4])}"
                      f"{', ...' if len(unknown) > 4 else ''}: they normalise without it; "
                      "rescaling covers nn.BatchNorm1d/2d/3d", RuntimeWarning, stacklevel=3)
    return wrapped


def sync_loaded_rescale(module, incompatible_keys) -> None:
    """A prepared model's ``load_state_dict`` post-hook (registered by ``fxprune.prepare``):
    a state saved from a model whose BatchNorms were rescaled by the kept fraction rescales
    this model's too, as the model it came from computed (break159 F1: the README's
    weights-only route, prepare then load then finalize, gave a model off by 7.5 on outputs of
    0.8, finalize's check passing). A pruner built afterwards sets its own ``bn_rescale``, as
    it always has. A state saved without the rescale into a model with it is said: the
    pruner's choice stands, and finalize folds the factor the saved model did not have."""
    bank = getattr(module, MASK_OWNER, None)
    if not isinstance(bank, MaskBank):
        return
    saved = bank.__dict__.pop("_loaded_rescale", None)
    if saved is None or bank.fxprune_rescaled is None or set(saved) == set(bank.fxprune_rescaled):
        return
    if set(saved) - set(bank.fxprune_rescaled):
        insert_bn_rescale(module, "kept_fraction")
    extra = sorted(set(bank.fxprune_rescaled) - set(saved))
    if extra or set(saved) - set(bank.fxprune_rescaled):
        warn(f"load_state_dict: the state was saved from a model that rescaled other BatchNorms by "
             f"the kept fraction than this one does ({', '.join(extra[:3]) or 'none here'}"
             f"{', ...' if len(extra) > 3 else ''}: SMCP's bn_rescale), so finalize folds a gamma "
             "factor the saved model did not have; call insert_bn_rescale(model, 'off') (SMCP's "
             "default) before finalize to compute as the saved model did", RuntimeWarning)
