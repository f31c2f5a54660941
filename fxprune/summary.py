"""``fxprune.summary``: the groups of a prepared model and what pruning them would save."""
from __future__ import annotations

import contextlib
import warnings

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

from fxprune.passes.shape_prop import preserving_rng
from fxprune.compare import run_eval

from .errors import (ArgumentTypeError, ExampleInputsError, FxPruneError, NotPreparedError,
                     SurgeryError, first_line, out_of_memory)
from .groups import channel_groups, is_prepared, state_of


__all__ = ["summary", "summary_table", "count_flops", "count_params", "dense_flops",
           "counted_kernels"]


@contextlib.contextmanager
def counted_kernels():
    """Run the ops torch.utils.flop_counter counts: attention's fused kernels
    (``nn.MultiheadAttention``'s fast path, ``F.scaled_dot_product_attention``'s flash and
    memory-efficient kernels) and oneDNN's and cuDNN's fused RNNs are ops it has no formula
    for, so in an eval forward they counted 0 FLOPs (break91 F1: torchvision's vit_b_16 22.5
    GFLOPs of 33.7, and a 0.5 FLOPs target kept 0.67; an LSTM head nothing). Inside, they
    run as the matrix products the counter sees (the same function, slower: for counting)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # (set and put back by hand: mkldnn.flags() also sets TF32 flags, and warns of them)
    was = (torch.backends.mha.get_fastpath_enabled(), torch.backends.mkldnn.enabled,
           torch.backends.cudnn.enabled)
    torch.backends.mha.set_fastpath_enabled(False)
    torch.backends.mkldnn.enabled = torch.backends.cudnn.enabled = False
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was[0])
        torch.backends.mkldnn.enabled, torch.backends.cudnn.enabled = was[1:]


def count_flops(model: nn.Module, inputs: tuple) -> int:
    """FLOPs of one eval forward on ``inputs`` (a tuple of the forward's arguments), as
    torch.utils.flop_counter counts them (2 per MAC), attention and RNNs included
    (:func:`counted_kernels`).

    Raises TypeError for a non-module or inputs not given as a tuple (or list), and ExampleInputsError
    (chained to the model's own error) when the model does not run on ``inputs``. Warns for a
    prepared model with pruned channels, which counts as the dense model."""
    _check_module(model, "count_flops")
    _warn_if_masked(model, "count_flops")
    return _count_flops(model, inputs)


def _count_flops(model: nn.Module, inputs: tuple) -> int:
    """:func:`count_flops` without its check for a masked model (``dense_flops`` counts one
    with every mask at 1 on purpose)."""
    if isinstance(inputs, torch.Tensor):  # (break67 #5: its batch was unpacked as arguments)
        raise ArgumentTypeError("count_flops takes the forward's arguments as a tuple: pass (x,), not x")
    if not isinstance(inputs, (tuple, list)):
        raise ArgumentTypeError(f"count_flops takes the forward's arguments as a tuple, e.g. (x,); got "
                                f"{type(inputs).__name__}")
    # FlopCounterMode's module tracker hooks the gradient of every argument of a submodule
    # that requires one, even without grad: a parameter's view made under no_grad (PiT's and
    # CaiT's class token, ``self.cls_token.expand(b, -1, -1)``, passed to a block) has none to
    # hook, and torch raised an AssertionError. Counting needs no gradient: switched off here.
    trained = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in trained:
            p.requires_grad_(False)
        # the caller's random state stays as it was (break159 F5: a forward drawing noise moved
        # it when a method was built or summary() printed, as prepare's once did)
        with preserving_rng(model, inputs), counted_kernels(), FlopCounterMode(display=False) as counter:
            try:
                run_eval(model, inputs)
            except FxPruneError:  # fxprune's own refusal inside the forward says its way out
                raise
            except Exception as e:  # noqa: BLE001 - the model's own error, chained
                raise _not_run(model, inputs, e) from e
    finally:
        for p in trained:
            p.requires_grad_(True)
    return int(counter.get_total_flops())


def _not_run(model: nn.Module, inputs: tuple, e: Exception) -> ExampleInputsError:
    """count_flops' one line for a forward that fails on ``inputs`` (break187 F5: a wrong
    shape was torch's multi-line RuntimeError, naming neither the call nor the inputs)."""
    shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in inputs]
    said = out_of_memory(e)
    if said is not None:
        return ExampleInputsError(f"count_flops: running {type(model).__name__} on inputs of "
                                  f"shapes {shapes} ran out of memory ({said}); count on a smaller "
                                  "batch (FLOPs scale with it)")
    first = (str(e).strip().splitlines() or [""])[0]
    return ExampleInputsError(f"count_flops: {type(model).__name__} does not run on inputs of "
                              f"shapes {shapes} ({type(e).__name__}: {first}); pass the "
                              "arguments its forward takes, as a tuple")


def _warn_if_masked(model: nn.Module, fn: str) -> None:
    """A prepared model whose masks prune channels still holds every weight and runs every
    product: it counts as the dense model (break196 F6: silent, where deploy warns)."""
    if not is_prepared(model):
        return
    masks = [g.mask for g in channel_groups(model) if g.prunable]
    if any(bool((m == 0).any()) for m in masks):  # (a host read: counting is not per step)
        warnings.warn(f"{fn}: a model fxprune.prepare returned counts as the dense model, its "
                      "masked channels included; count fxprune.finalize(model), or read the "
                      "masked cost with pruner.cost() or fxprune.summary(model)",
                      RuntimeWarning, stacklevel=3)


def _check_module(model, fn: str) -> None:
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"{fn} takes an nn.Module (the model to count), got {type(model).__name__}")


def count_params(model: nn.Module) -> int:
    """Parameters of ``model`` (every element of ``model.parameters()``, shared ones once).
    Warns for a prepared model with pruned channels, which counts as the dense model."""
    _check_module(model, "count_params")
    _warn_if_masked(model, "count_params")
    return sum(p.numel() for p in model.parameters())


def _short(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" +{len(names) - limit}" if len(names) > limit else "")


def _table(rows, whole: int | None = None) -> list[str]:
    """Aligned columns, each cut at 72 characters but the ``whole`` one (the last, uncut)."""
    widths = [min(max(len(r[i]) for r in rows), 72) for i in range(len(rows[0]))]
    lines = ["  ".join(c if i == whole else c[:w].ljust(w)
                       for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def _reason_kind(reason: str) -> str:
    """A reason without where it happened (``... at `node` (op)``), to count alike reasons."""
    return reason.split(" at `")[0]


def _check_prepared(model) -> None:
    """Refuse what is not a prepared model, saying how to count it instead (a wrapper around a
    prepared model is left to ``state_of``, which names the attribute to pass)."""
    if is_prepared(model) or any(is_prepared(getattr(model, attr, None))
                                 for attr in ("_orig_mod", "module")):
        return
    if isinstance(model, fx.GraphModule):
        what = ("a GraphModule that is not a prepared model (what fxprune.finalize returns, or "
                "another fx graph): summarize the prepared model it came from")
    else:
        what = (f"{type(model).__name__}, not a prepared model: summarize what "
                "fxprune.prepare(model, example_inputs) returns")
    raise NotPreparedError(
        f"fxprune.summary lists a prepared model's channel groups; got {what}, or count this "
        "model's FLOPs and parameters with fxprune.count_flops(model, inputs) and "
        "fxprune.count_params(model)")


def dense_flops(prepared: fx.GraphModule) -> int:
    """FLOPs of the prepared model on its example inputs with every mask at 1: a masked norm
    under other masks computes its statistics over the kept channels by extra products that
    the dense model does not run. The masks are restored after."""
    masks = [g.mask for g in channel_groups(prepared, all_groups=True) if g.prunable]
    saved = [m.detach().clone() for m in masks]
    try:
        with torch.no_grad():
            for m in masks:
                m.fill_(1)
        try:
            return _count_flops(prepared, state_of(prepared).example_inputs)
        except ExampleInputsError as e:  # inputs fxprune chose, not the caller (review195 R13)
            cause = e.__cause__ if e.__cause__ is not None else e
            raise ExampleInputsError(
                f"the prepared model no longer runs on the example inputs it was prepared with "
                f"({type(cause).__name__}: {first_line(cause)}); was it moved, cast or edited "
                "since prepare? prepare it again from the model as it is") from e
    finally:
        with torch.no_grad():
            for m, old in zip(masks, saved):
                m.copy_(old)


def summary_table(prepared: fx.GraphModule, *, all_groups: bool = False) -> str:
    """The text :func:`summary` prints: prunable groups, then every kept group with its reason
    (groups without a conv/linear only with ``all_groups``; otherwise their reasons are counted)."""
    from .api import finalize  # a finalize of the current masks gives the pruned figures

    _check_prepared(prepared)
    state = state_of(prepared)
    listed = channel_groups(prepared)
    everything = channel_groups(prepared, all_groups=True)
    groups = everything if all_groups else listed
    lines = []
    prunable = [g for g in groups if g.prunable]
    if prunable:
        rows = [("group", "name", "size", "kept", "producers", "consumers")]
        rows += [(g.key, g.name, str(g.size), str(g.kept), _short(g.producers), _short(g.consumers))
                 for g in prunable]
        lines += ["prunable groups:"] + _table(rows)
    kept = [g for g in groups if not g.prunable]
    if kept:
        # the reason last and whole: the longest ones end with the way out
        rows = [("group", "name", "size", "producers", "kept whole because")]
        rows += [(g.key, g.name, str(g.size), _short(g.producers), g.reason) for g in kept]
        lines += ([""] if lines else []) + ["groups kept whole:"] + _table(rows, whole=4)
    hidden = [g for g in everything if g.key not in {h.key for h in listed} and not g.prunable]
    if hidden and not all_groups:
        counts: dict[str, int] = {}
        for g in hidden:
            counts[_reason_kind(g.reason)] = counts.get(_reason_kind(g.reason), 0) + 1
        lines.append("")
        lines.append(f"{len(hidden)} more groups hold no layer fxprune prunes (a conv or linear "
                     "module, or one on a module's weight) and are kept whole (all_groups=True lists "
                     "them): "
                     + "; ".join(f"{n} x {r}" for r, n in sorted(counts.items(), key=lambda kv: -kv[1])))
    inputs = state.example_inputs
    dense, dense_params = dense_flops(prepared), sum(p.numel() for p in prepared.parameters())
    n_prunable = sum(g.prunable for g in groups)
    lines.append("")
    lines.append(f"{len(groups)} groups, {n_prunable} prunable; "
                 # mask entries: a group ties a channel of each layer it touches to one entry
                 # (break81 #5: "10 prunable channels" of 40 across tied layers)
                 f"{sum(g.size for g in groups if g.prunable)} mask entries (a group's channel "
                 "positions, each removing a channel of every layer the group touches)")
    if state.untraced_params:
        modules = ", ".join(state.untraced_modules[:3]) + (", ..." if len(state.untraced_modules) > 3 else "")
        lines.append(f"not counted: {state.untraced_params:,} parameters of the model given to "
                     f"prepare that its traced forward never reads ({modules}: e.g. auxiliary "
                     "heads of the other mode); the prepared and finalized models do not hold them")
    quantized = getattr(state, "quantized_layers", ())  # (a state saved before it was kept)
    if quantized:
        from .op_table import QUANTIZATION_WAY_OUT
        names = ", ".join(quantized[:3]) + (", ..." if len(quantized) > 3 else "")
        lines.append(f"not counted: the weights and FLOPs of {len(quantized)} quantized layer"
                     f"{'s' if len(quantized) > 1 else ''} ({names}), packed outside "
                     f"nn.Parameter; {QUANTIZATION_WAY_OUT}")
    if not everything:  # (break139 F2: "see the reasons above" with none above)
        lines.append("no channel group was found: no layer of the prepared model has channels "
                     "fxprune follows (each conv or linear is called as one op, or is of a kind "
                     "with no row in fxprune.op_table.CHANNEL_RULES); prepare's warnings say "
                     "which, and rules= or leaf_modules= change it")
    elif not listed:
        lines.append("no group has a conv or linear layer in it: fxprune found no layer it prunes "
                     "(a layer with no row in fxprune.op_table.CHANNEL_RULES is traced through or a "
                     "barrier; see the reasons above, or pass rules=)")
    # the input the FLOPs are of: the example's whole batch (break186 F4: 8x the per-image
    # figure at batch 8, unsaid where all channels were kept)
    at = f"at input {[tuple(t.shape) for t in inputs if isinstance(t, torch.Tensor)]}"
    if any(g.kept < g.size for g in groups if g.prunable):
        try:
            with warnings.catch_warnings():
                # finalize's advice (call finalize_masks first; masks neither 0 nor 1) is about
                # a finalize the user runs; this one only counts the current masks (break67 #4)
                warnings.simplefilter("ignore", RuntimeWarning)
                small = finalize(prepared, check=False)
        except SurgeryError as exc:  # the groups still shown: that is when they are wanted
            # (break81 #2: a whole group or a split piece masked printed no table at all)
            lines.append(f"params {dense_params:,}; FLOPs {dense:,} dense {at}; the current masks "
                         f"cannot be finalized, so no pruned figures: {exc}")
            return "\n".join(lines)
        flops, params = count_flops(small, inputs), count_params(small)
        lines.append(f"params {dense_params:,} -> {params:,} ({params / dense_params:.1%})")
        lines.append(f"FLOPs  {dense:,} -> {flops:,} ({flops / max(dense, 1):.1%}) {at}")
    else:
        lines.append(f"params {dense_params:,}; FLOPs {dense:,} {at} (all channels kept)")
    return "\n".join(lines)


def summary(prepared: fx.GraphModule, *, all_groups: bool = False) -> None:
    """Print each channel group (size, kept channels, layers) and params/FLOPs before and after."""
    print(summary_table(prepared, all_groups=all_groups))
