"""``fxprune.summary``: the groups of a prepared model and what pruning them would save."""
from __future__ import annotations

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

from fxprune.passes.surgery import run_eval

from .groups import channel_groups, state_of


def count_flops(model: nn.Module, inputs: tuple) -> int:
    """FLOPs of one eval forward, as torch.utils.flop_counter counts them (2 per MAC)."""
    with FlopCounterMode(display=False) as counter:
        run_eval(model, inputs)
    return int(counter.get_total_flops())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _short(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f" +{len(names) - limit}" if len(names) > limit else "")


def summary_table(prepared: fx.GraphModule, *, all_groups: bool = False) -> str:
    from .api import finalize  # a finalize of the current masks gives the pruned figures

    state = state_of(prepared)
    groups = channel_groups(prepared, all_groups=all_groups)
    rows = [("group", "name", "size", "kept", "prunable / reason", "producers", "consumers")]
    for g in groups:
        rows.append((g.key, g.name, str(g.size), str(g.kept), "yes" if g.prunable else g.reason,
                     _short(g.producers), _short(g.consumers)))
    widths = [min(max(len(r[i]) for r in rows), 72) for i in range(len(rows[0]))]
    lines = ["  ".join(c[:w].ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    inputs = state.example_inputs
    dense_flops, dense_params = count_flops(prepared, inputs), count_params(prepared)
    n_prunable = sum(g.prunable for g in groups)
    lines.append("")
    lines.append(f"{len(groups)} groups, {n_prunable} prunable; "
                 f"{sum(g.size for g in groups if g.prunable)} prunable channels")
    if any(g.kept < g.size for g in groups if g.prunable):
        small = finalize(prepared, check=False)
        flops, params = count_flops(small, inputs), count_params(small)
        lines.append(f"params {dense_params:,} -> {params:,} ({params / dense_params:.1%})")
        lines.append(f"FLOPs  {dense_flops:,} -> {flops:,} ({flops / max(dense_flops, 1):.1%}) "
                     f"at input {[tuple(t.shape) for t in inputs if isinstance(t, torch.Tensor)]}")
    else:
        lines.append(f"params {dense_params:,}; FLOPs {dense_flops:,} (all channels kept)")
    return "\n".join(lines)


def summary(prepared: fx.GraphModule, *, all_groups: bool = False) -> None:
    """Print each channel group (size, kept channels, layers) and params/FLOPs before and after."""
    print(summary_table(prepared, all_groups=all_groups))
