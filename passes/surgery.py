"""Remove masked channels for real.

On a copy of the prepared model: fold each mask (and SMCP's BN rescale) into the weights, slice
every weight and buffer dim that belongs to a group at the kept channels, give every fxprune
layer its plain torch.nn class back with updated sizes, fix literal channel counts in the graph
(``view``/``split``/slices), and delete the mask nodes. Then run the masked and the pruned model
on the example inputs and refuse to return a model whose output differs.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from torch import fx, nn

from fxprune.compare import (floating_dtypes, flat_tensors, max_relative_error, output_scales,
                             run_eval)
from fxprune.errors import SurgeryError
from fxprune.groups import ChannelGraph, mark_finalized, mask_buffer, state_of
from fxprune.masks import (FXPRUNE_CLASSES, _InputMasked, _RescaledBatchNorm,
                           forget_all_ones, gather_mask, mask_weight, strip_method_hooks, unwrap)
from fxprune.op_table import add_installed_rows
from fxprune.rules.layers import FunctionalLayerNorm

from .bn_rescale import sync_loaded_rescale
from .group_analysis import lookup_rule
from .shape_prop import NodeFacts, preserving_rng
from .grad_mode import ModeRecordingTracer, autocast_dtypes, sets_modes
from .trace import FORWARD_HOOK_KINDS, copy_model

#: a model prepared before stat sites recorded their row: its only masked call was F.layer_norm
_ROW_BEFORE_STAT_RULES = FunctionalLayerNorm()


class FinalizeContext(NodeFacts):
    """What a rule's ``rewrite``/``resize`` reads: the analysis labels and which elements stay."""

    def __init__(self, channels: ChannelGraph, unit_kept: np.ndarray):
        self.ch, self.unit_kept = channels, unit_kept

    def kept(self, ids) -> np.ndarray:
        return self.ch.kept(np.asarray(ids), self.unit_kept)

    def pruned_size(self, a, dim: int) -> int:
        ids = self.labels(a).get(dim)
        return int(self.kept(ids).sum()) if ids is not None else self.shape(a)[dim]


def group_masks(prepared: fx.GraphModule) -> dict[str, np.ndarray]:
    state = state_of(prepared)
    bank = prepared.get_submodule(state.mask_owner)
    return {g.key: mask_buffer(bank, g.key, g.name, g.size).detach().double().cpu().numpy()
            for g in state.channels.groups if g.prunable}


def position_mask(channels: ChannelGraph, ids: np.ndarray, masks: dict[str, np.ndarray]) -> np.ndarray:
    """The mask value at each position of a dim whose elements are ``ids`` (1 where no group)."""
    units = channels.units(ids)
    out = np.ones(len(ids), dtype=np.float64)
    for p, u in enumerate(units.tolist()):
        if u >= 0:
            g = channels.groups[channels.unit_group[u]]
            if g.prunable:
                out[p] = masks[g.key][channels.unit_pos[u]]
    return out


def _check_masks(channels: ChannelGraph, masks: dict[str, np.ndarray]) -> None:
    for g in channels.groups:
        if not g.prunable:
            continue
        m = masks[g.key]
        if not np.all(np.isfinite(m)):
            raise SurgeryError(f"group {g.key} ({g.name}) has a non-finite mask value; masks hold 0 or 1")
        if not np.any(m != 0):
            raise SurgeryError(f"every channel of group {g.key} ({g.name}) is masked; keep at least one "
                               "(removing a whole group would disconnect the layers that read it)")
        for positions, why in g.keep_one_of:
            if not np.any(m[positions] != 0):
                raise SurgeryError(
                    f"group {g.key} ({g.name}): channels {positions.tolist()[:8]}... feed {why} that would "
                    "be left empty; keep at least one of them (ChannelGroup.keep_one_of lists these)")
    for stat in channels.stat_sites:
        for ids in stat.labels:
            m = position_mask(channels, ids, masks)
            if not np.all((m == 0) | (m == 1)):
                # (break90 F8: an EMA copy's averaged masks got this without its way out)
                raise SurgeryError(f"norm `{stat.node}` normalizes over channels whose masks are not 0/1; "
                                   "its statistics cannot be folded: set those masks to 0 or 1 (an "
                                   "EMA or averaged copy of a prepared model averages its masks: "
                                   "copy the trained model's into it first, "
                                   "fxprune.copy_masks(trained, ema_copy))")


def _is_mask_node(node: fx.Node, owner: str) -> bool:
    """A node giving masks: a mask buffer of ``owner`` (``fxprune_masks``) or their gathering
    (a module of ``owner``, or the function in graphs prepared before it was one)."""
    return (node.op == "call_function" and node.target is gather_mask) or (
        node.op in ("get_attr", "call_module") and node.target.startswith(owner + "."))


def _set_tensor(gm: fx.GraphModule, qualname: str, value: torch.Tensor) -> None:
    owner_name, _, attr = qualname.rpartition(".")
    owner = gm.get_submodule(owner_name) if owner_name else gm
    old = getattr(owner, attr)
    if isinstance(old, nn.Parameter):
        setattr(owner, attr, nn.Parameter(value, requires_grad=old.requires_grad))
    elif attr in owner._buffers:
        owner._buffers[attr] = value
    else:
        setattr(owner, attr, value)


def _check_not_computed(gm: fx.GraphModule, qualname: str) -> None:
    """SurgeryError for a tensor the surgery must change that a parametrization computes: one
    added after prepare (prepare keeps a parametrized layer whole), whose result no slice can
    be written to (break121 #2: "a bug in fxprune", and check=False gave a model that failed)."""
    owner_name, _, attr = qualname.rpartition(".")
    owner = gm.get_submodule(owner_name) if owner_name else gm
    if nn.utils.parametrize.is_parametrized(owner, attr):
        kinds = ", ".join(type(p).__name__ for p in owner.parametrizations[attr])
        raise SurgeryError(
            f"`{owner_name}` computes its {attr} with a parametrization ({kinds}) added after "
            "prepare: finalize cannot remove channels from a computed tensor; call "
            f"torch.nn.utils.parametrize.remove_parametrizations(prepared.get_submodule("
            f"{owner_name!r}), {attr!r}) before finalize, and parametrize the finalized model "
            "again if it needs one")


def _get_tensor(gm, qualname):
    owner_name, _, attr = qualname.rpartition(".")
    return getattr(gm.get_submodule(owner_name) if owner_name else gm, attr)


def remove_channels(prepared: fx.GraphModule) -> fx.GraphModule:
    """The surgery of :func:`fxprune.finalize`, unchecked: a copy of ``prepared`` with every
    channel whose mask is 0 sliced out of the weights that hold it (each op's row in the op
    table says how) and the masks folded in. ``prepared`` is not modified. Raises
    :class:`~fxprune.errors.SurgeryError` for masks that cannot be removed (a group whose
    masks are all 0, a non-finite mask); :func:`verify` checks the result."""
    state = state_of(prepared)
    ch = state.channels
    masks = group_masks(prepared)
    _check_masks(ch, masks)
    unit_kept = ch.unit_kept(masks)
    # (an uncopyable part named: a buffer the forward set, a tap's store)
    gm = copy_model(prepared, when="finalize")
    strip_method_hooks(gm)  # a method's hooks (CCP's taps mid-run) are not part of the model
    # nor is prepare's load hook: the finalized model loads without fxprune
    for key in [k for k, hook in gm._load_state_dict_post_hooks.items() if hook is sync_loaded_rescale]:
        del gm._load_state_dict_post_hooks[key]
    ctx = FinalizeContext(ch, unit_kept)
    modules = dict(gm.named_modules())
    site_by_module = {s.module: s for s in ch.mask_sites}
    for name, m in modules.items():  # fxprune's classes become plain ones: a parametrization
        # added since prepare would not survive that, whatever channels the layer keeps
        # (break124 #4: "a bug in fxprune", and check=False gave a model without a weight)
        if isinstance(m, FXPRUNE_CLASSES) and nn.utils.parametrize.is_parametrized(m):
            _check_not_computed(gm, f"{name}.{next(iter(m.parametrizations))}")

    with torch.no_grad():
        # 1. fold masks and rescale factors into the weights they scale
        for name, m in modules.items():
            if isinstance(m, _InputMasked):
                site = site_by_module[name]
                pm = position_mask(ch, ch.space_ids(site.tensor, site.dim), masks)
                if not (pm == 1).all():
                    _check_not_computed(gm, f"{name}.weight" if name else "weight")
                shape = [1] * m.weight.ndim
                shape[site.dim] = -1
                m.weight.mul_(torch.as_tensor(pm, dtype=m.weight.dtype, device=m.weight.device).view(shape))
            if isinstance(m, _RescaledBatchNorm) and m.weight is not None:
                site = site_by_module[m.fxprune_source]
                pm = position_mask(ch, ch.space_ids(site.tensor, site.dim), masks)
                factor = m.rescale_factor(torch.as_tensor(pm, dtype=torch.float64))
                m.weight.mul_(factor.to(m.weight.device, m.weight.dtype))

        for site in ch.mask_sites:  # functional layers: the weight argument was masked in the graph
            if site.functional_nodes and ch.touches_prunable(ch.space_ids(site.tensor, site.dim)):
                w = _get_tensor(gm, site.tensor)
                pm = position_mask(ch, ch.space_ids(site.tensor, site.dim), masks)
                if not (pm == 1).all():
                    _check_not_computed(gm, site.tensor)
                shape = [1] * w.ndim
                shape[site.dim] = -1
                w.mul_(torch.as_tensor(pm, dtype=w.dtype, device=w.device).view(shape))

        # 2. slice every grouped weight/buffer dim at the kept channels
        for space in ch.spaces:
            keep = ctx.kept(space.ids)
            if keep.all() or space.virtual:  # a created tensor's size is rewritten in the graph
                continue
            _check_not_computed(gm, space.tensor)
            t = _get_tensor(gm, space.tensor)
            index = torch.as_tensor(np.nonzero(keep)[0], device=t.device)
            sliced = t.detach().index_select(space.dim, index)
            if sliced.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last):
                sliced = sliced.contiguous(memory_format=torch.channels_last)  # its layout kept
            _set_tensor(gm, space.tensor, sliced)  # index_select made it a new tensor

    # 3. plain classes, sizes, literal channel counts; the graph loses its mask nodes
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is mask_weight:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    wrapped = {name for name, m in modules.items() if isinstance(m, FXPRUNE_CLASSES)}
    input_masked = {name for name in wrapped if isinstance(modules[name], _InputMasked)}
    for name in wrapped:
        unwrap(modules[name])
    graph_nodes = {n.name: n for n in gm.graph.nodes}
    mask_nodes = {n for n in gm.graph.nodes if _is_mask_node(n, state.mask_owner)}
    for stat in ch.stat_sites:  # masked functional norms back to the plain call (their row knows how)
        node = graph_nodes[stat.node]
        rule = stat.rule or _ROW_BEFORE_STAT_RULES
        rule.unmask_statistics(node, gm)
        if node.target not in wrapped and mask_nodes.intersection(node.all_input_nodes):
            raise SurgeryError(
                f"`{stat.node}` still reads its masks after its row's unmask_statistics "
                f"({type(rule).__name__}): the row must give finalize the plain call back, "
                "without the mask arguments its mask_statistics added")
    resized = set()
    add_installed_rows()  # a library's rows (timm's), for a model prepared in another process
    costed = {layer.spec.name for layer in ch.layers}
    for node in list(gm.graph.nodes):
        if node.op == "call_module":
            m = modules[node.target]
            if node.target in input_masked:  # called as (x, mask, *rest)
                node.args = (node.args[0], *node.args[2:])
            elif node.target in wrapped:  # norms: every argument after x is a mask
                node.args, node.kwargs = node.args[:1], {}
            rule = lookup_rule(node, gm, state.rules)
            if rule is None and node.target in costed:
                # a row added to CHANNEL_RULES in the process that prepared the model, not in
                # this one: its sizes would stay the dense ones (break200 F3)
                raise SurgeryError(
                    f"`{node.target}` ({type(m).__name__}) was prepared with a row of "
                    "fxprune.op_table.CHANNEL_RULES that this process lacks, so finalize cannot "
                    f"set its sizes; add the row again (CHANNEL_RULES[{type(m).__name__}] = ...) "
                    f"before finalize, or prepare with rules={{{type(m).__name__}: ...}}, which "
                    "the prepared model carries")
            if rule is not None and node.target not in resized:
                rule.resize(m, node, ctx)
                resized.add(node.target)
        if node.op in ("call_function", "call_method", "call_module"):
            rule = lookup_rule(node, gm, state.rules)
            if rule is not None:
                rule.rewrite(node, ctx)
    for node in reversed(list(gm.graph.nodes)):
        if _is_mask_node(node, state.mask_owner):
            gm.graph.erase_node(node)
    delattr(gm, state.mask_owner)
    for node in gm.graph.nodes:  # (shapes recorded at prepare are the dense model's)
        node.meta.pop("fxprune_labels", None)
        node.meta.pop("fxprune_value", None)
    gm.meta.pop("fxprune", None)
    # (a function that wants the prepared model names what it got instead)
    mark_finalized(gm)
    # The tracer class is pickled with a GraphModule; ours lives in fxprune, and the result must
    # load where fxprune is not installed; but for a graph that sets the grad or autocast mode,
    # whose calls torch.fx's own tracer would run, not record, when it re-traces the code on load.
    tracer_cls = ModeRecordingTracer if sets_modes(gm.graph) else None
    gm._tracer_cls, gm._tracer_extras = tracer_cls, {}
    # the graph keeps its own, which a deep copy of the result puts back on the module: the
    # model_pruned.pt of fxprune train (a copy, saved) needed fxprune to load (break45 #1)
    gm.graph._tracer_cls, gm.graph._tracer_extras = tracer_cls, {}
    gm.graph.lint()
    gm.recompile()
    return gm


#: finalize's check of a float16/bfloat16 model on float32 copies (:func:`verify`)
_FLOAT32_RTOL = 1e-4


def is_tolerance(rtol) -> bool:
    """Whether ``rtol`` is a relative tolerance :func:`verify` takes: a number > 0 (not a bool)."""
    return not isinstance(rtol, bool) and isinstance(rtol, (int, float)) and 0 < rtol < float("inf")


def verify(prepared: fx.GraphModule, pruned: nn.Module, inputs: tuple, rtol: float) -> float:
    """:func:`_verify`, the caller's random state as it was after it (break154 F6)."""
    with preserving_rng(prepared, inputs):
        return _verify(prepared, pruned, inputs, rtol)


def _verify(prepared: fx.GraphModule, pruned: nn.Module, inputs: tuple, rtol: float) -> float:
    """Run the masked ``prepared`` and the ``pruned`` model in eval mode on ``inputs`` (a tuple
    of forward arguments) and return the largest difference of their outputs relative to the
    output's scale; raises :class:`~fxprune.errors.SurgeryError` when it is above ``rtol``
    (a number > 0), when the masked model's output has no finite value to compare, and when
    the masked model itself differs between two runs (randomness in eval mode); warns when its
    float outputs are all zeros, which any model matches. A model with
    no float64 tensor nor autocast region that fails is judged again on float64 copies, each output's difference
    relative to its scale in the model's own precision (:func:`_float64_error`): what is
    returned then is that difference; a 16-bit model, on float32 copies, with a warning."""
    if not is_tolerance(rtol):
        # (break111 F10: a negative or NaN rtol was reported as a model that differs by 0
        # between two runs)
        raise ValueError(f"verify: rtol is a relative tolerance, a number > 0; got {rtol!r}")
    forget_all_ones(prepared.get_submodule(state_of(prepared).mask_owner).buffers())
    expected = run_eval(prepared, inputs)
    values = [t for t in flat_tensors(expected) if t.numel()]
    if not values:
        raise SurgeryError("the masked model's output on the example inputs holds no values, so "
                           "finalize has nothing to check the pruned model against; prepare with "
                           "example inputs that give a non-empty output, or finalize(..., check=False)")
    floats = [t for t in values if t.is_floating_point()]
    if floats and not any(bool(torch.isfinite(t).any()) for t in floats):
        raise SurgeryError("the masked model's output on the example inputs holds no finite value "
                           "(all NaN or inf), so finalize cannot check the pruned model against it; "
                           "look for a diverged training run, or pass finalize(..., check=False)")
    if floats and not any(bool(t.any()) for t in floats):
        # (break171 F2: a wrong custom rule "passed" against a zero-initialised head, a
        # torchvision ViT's at init: any pruned model matches zeros)
        warnings.warn("finalize: the masked model's output on the example inputs is all zeros "
                      "(a zero-initialised head?), so the check cannot tell a right pruned model "
                      "from a wrong one; finalize the trained model, whose outputs are not zero, "
                      "to have the surgery checked", RuntimeWarning, stacklevel=3)
    try:
        got = run_eval(pruned, inputs)
    except Exception as e:  # noqa: BLE001 - a surgery bug, reported as one
        hooks = _user_hooks(pruned, e)
        raise SurgeryError(f"the pruned model fails on the example inputs: {type(e).__name__}: {e}. "
                           + (hooks or _likely_cause(prepared))) from e
    err = max_relative_error(expected, got)
    if not err <= rtol:
        again = max_relative_error(expected, run_eval(prepared, inputs))
        if not again <= rtol:  # the model's own randomness, not the surgery
            # a model that samples in eval mode by design (a VAE, noise injection; break97 F5):
            # run from one random state, both draw the same numbers when the draws' shapes do
            # not follow the pruned widths
            seeded = _seeded(prepared, inputs)
            if max_relative_error(seeded, _seeded(prepared, inputs)) <= rtol:
                err = max_relative_error(seeded, _seeded(pruned, inputs))
                if err <= rtol:
                    return err
            raise SurgeryError(
                f"the masked model gives other outputs each run in eval mode (by {again:.3g} "
                "between two runs), so the pruned model cannot be checked against it: a random op "
                "ignores eval mode (F.dropout(x, p) without training=self.training, torch.rand in "
                "forward, or one prepare's warning named as frozen in the train mode it was "
                "prepared in, e.g. torch.feature_dropout), and its draws follow the pruned widths, "
                "so even from one random state the two differ; make it follow self.training "
                "(F.dropout2d follows it), prepare in eval mode, or pass finalize(..., check=False)")
        low = next((d for d in floating_dtypes(prepared) if d in (torch.float16, torch.bfloat16)), None)
        if low is not None:
            # a deep model rounds in 16 bits as much as its dense self does (break87 #2: BiT
            # in bfloat16 was 0.15 off float64, and the masked and pruned models 0.13 apart):
            # the surgery is judged on float32 copies of both
            err32 = max_relative_error(
                run_eval(copy_model(prepared, when="finalize's float32 check").float(), inputs),
                run_eval(copy_model(pruned, when="finalize's float32 check").float(), inputs))
            if err32 <= min(rtol, _FLOAT32_RTOL):
                warnings.warn(
                    f"finalize: in {str(low).replace('torch.', '')} the pruned model's output "
                    f"differs from the masked model's by {err:.3g} (relative; above {rtol:g}), "
                    f"as 16-bit rounding makes it: in float32 the two agree to {err32:.2g}. The "
                    "pruned model is right; compare the dense model in the same precision with "
                    "its float32 self to see what that precision costs this model",
                    RuntimeWarning, stacklevel=3)
                return err
        elif torch.float64 not in floating_dtypes(prepared) and not autocast_dtypes(prepared.graph):
            # (not with an autocast region: float64 tensors run it unrounded, and the 16-bit
            # rounding it makes is the model's own, which an explicit rtol judges)
            exact = _float64_error(prepared, pruned, inputs, expected)
            if exact <= rtol:
                return exact
        hooks = _user_hooks(pruned)
        raise SurgeryError(
            f"the pruned model's output differs from the masked model's by {err:.3g} (relative; "
            f"allowed {rtol:g}). " + (hooks or _likely_cause(prepared)))
    return err


def _likely_cause(prepared: fx.GraphModule) -> str:
    """The end of a failed check's error: the rows the user gave ``prepare`` (rules=) where
    there are any, the likeliest cause (break176 F8: an Elementwise() row on an op that mixes
    channels was called "a bug in fxprune or in a custom rule", naming neither), else a bug."""
    rows = state_of(prepared).rules
    anyway = "finalize(prepared, check=False) returns the model anyway."
    if not rows:
        return f"This is a bug in fxprune: please report it with the model. {anyway}"
    listed = ", ".join(f"{getattr(key, '__qualname__', None) or key}: {type(row).__name__}()"
                       for key, row in list(rows.items())[:6]) + (", ..." if len(rows) > 6 else "")
    weight_rows = any(hasattr(row, "in_dim") for row in rows.values())  # (a conv/linear row)
    # (break200 F9: a weight layer's row was pointed at Elementwise() and Barriers alone)
    layers = (" For a weight layer's row: a forward that reads sizes of its own (a reshape by "
              "self.cin) needs a row subclass whose resize sets them, and one that computes with "
              "its weight beyond a product needs a masked forward (a StandardizedConv subclass "
              "with its standardized_weight)." if weight_rows else "")
    return (f"The rows given in rules= ({listed}) are the likeliest cause: each must describe its "
            "op (an Elementwise() row keeps every channel to itself; an op that mixes, reorders "
            f"or reduces channels needs a rule of its own kind, or a Barrier).{layers} {anyway}")


def _float64_error(prepared: fx.GraphModule, pruned: nn.Module, inputs: tuple, expected) -> float:
    """The masked and pruned models' difference computed on float64 copies, relative to each
    output's scale in the models' own precision (``expected``'s) where that is larger.

    An output that is 0 in exact arithmetic (the spatial mean of an InstanceNorm's output) holds
    float32 rounding noise of 1e-8, which the two models round differently: relative to its own
    scale the difference was 0.6, and finalize called a right model a bug (break110 F1). In
    float64 a right surgery agrees far below the float32 output's scale; a wrong one differs
    by about the outputs' values, in any precision. ``inf`` when the copies do not run."""
    try:
        wide = [copy_model(m, when="finalize's float64 check").double() for m in (prepared, pruned)]
        return max_relative_error(run_eval(wide[0], inputs), run_eval(wide[1], inputs),
                                  min_scales=output_scales(expected))
    except Exception:  # noqa: BLE001 - a model that has no float64 form: the first error stands
        return float("inf")


def _seeded(model: nn.Module, inputs: tuple):
    """:func:`run_eval` from one random state (seed 0), the caller's restored after."""
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(0)
        return run_eval(model, inputs)


def _user_hooks(model: nn.Module, error: BaseException | None = None) -> str:
    """A sentence naming the forward hooks on the model's layers ("" when none): a hook written
    for the dense layer (a per-channel scale, a feature store) meets fewer channels after
    pruning, which the surgery cannot know about. The hook whose code is in ``error``'s
    traceback is the one named, with its kind (break144 F4: the first hooked layer was, a
    harmless pre-hook called a forward hook)."""
    hooked = [(name, kind, fn) for name, m in model.named_modules()
              for attr, kind in FORWARD_HOOK_KINDS for fn in getattr(m, attr).values()]
    if not hooked:
        return ""
    frames, tb = set(), getattr(error, "__traceback__", None)
    while tb is not None:
        frames.add(tb.tb_frame.f_code)
        tb = tb.tb_next

    def code_of(fn):
        fn = getattr(fn, "__func__", fn)  # a bound method
        return getattr(fn, "__code__", None) or getattr(getattr(type(fn), "__call__", None), "__code__", None)

    raised = [h for h in hooked if code_of(h[2]) in frames]
    name, kind, fn = (raised or hooked)[0]
    code = code_of(fn)
    where = f" at {os.path.basename(code.co_filename)}:{code.co_firstlineno}" if code else ""
    what = (f"Layer `{name}`'s {kind} ({getattr(fn, '__name__', type(fn).__name__)}{where}) raised it"
            if raised else
            f"Layer `{name}` has a {kind} ({getattr(fn, '__name__', type(fn).__name__)}{where}"
            f"{f'; {len(hooked)} hooks in all' if len(hooked) > 1 else ''})")
    return (f"{what}: a hook written for the dense model can fail on the pruned one's channels; "
            "remove it (handle.remove()) before finalize, or before prepare if it was registered "
            "then (prepare copies the model with its hooks), and register one for the new widths "
            "on the result")
