"""Which dims of which nodes change size when the inputs do (run on demand by the analysis).

The example inputs fix every size, so a dim of ``y.flatten(1)`` (channels times H*W) looks the
same to the rules as one of a channel shuffle's output (channels times a literal group count).
Surgery may write a split of the first in numbers only at the example's resolution; the second
is safe. This pass runs the graph once more on fake tensors whose input sizes are symbols
(torch's FakeTensorMode and ShapeEnv, as torch.export does) and reads, per node, the dims whose
size holds a symbol. A float input's dim 1 (channels, features) is fixed from the start. When
the run fixes any other input size (a linear after a flatten needs one resolution; a module
traced as one call may branch on ``x.shape[2] == 8``) the answer is unknown: one run cannot tell
a size the model needs from a branch it took.
"""
from __future__ import annotations

import copy

import torch
from torch import fx

from .shape_prop import TensorMeta


def input_dependent_dims(gm: fx.GraphModule) -> dict[str, frozenset[int]] | None:
    """``{node name: dims whose size follows the inputs' sizes}`` for every tensor node, or
    None when the graph does not run on symbolic sizes, or when the run fixed an input's size
    (fxprune then assumes the worst).
    Reads the placeholders' shapes left by ``propagate_shapes``; runs nothing real."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import (DimDynamic, ShapeEnv,
                                                       StatelessSymbolicContext)

    try:  # a copy: a module may cache what its forward computes (timm's attention biases),
        gm = copy.deepcopy(gm)  # and a fake tensor kept in the real model would break it
    except Exception:  # noqa: BLE001 - a model deepcopy cannot copy
        return None
    tensors = [*gm.parameters(), *gm.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    env = ShapeEnv()
    mode = FakeTensorMode(shape_env=env, allow_non_fake_inputs=True)
    args, modes, symbols = [], {m: m.training for m in gm.modules()}, set()
    try:
        for node in gm.graph.find_nodes(op="placeholder"):
            meta = node.meta.get("fxprune_value")
            if isinstance(meta, TensorMeta):
                # a float input's dim 1 holds channels or features, which the first layer's
                # weight fixes; every other size (batch, space, a sequence) is a symbol
                dims = [DimDynamic.STATIC if d == 1 and meta.dtype.is_floating_point
                        else DimDynamic.DYNAMIC for d in range(len(meta.shape))]
                empty = torch.empty(meta.shape, dtype=meta.dtype, device=device)  # outside the mode
                fake = mode.from_tensor(empty, symbolic_context=StatelessSymbolicContext(
                    dynamic_sizes=dims))
                symbols.update(s.node.expr for s in fake.shape if isinstance(s, torch.SymInt))
                args.append(fake)
            else:
                args.append(meta)
        gm.eval()  # as propagate_shapes: no norm statistics touched
        with mode, torch.no_grad():
            shapes: dict[str, tuple] = {}

            class _Run(fx.Interpreter):
                def run_node(self, n):
                    result = super().run_node(n)
                    if isinstance(result, torch.Tensor):
                        shapes[n.name] = tuple(result.shape)
                    return result

            _Run(gm).run(*args)
    except Exception:  # noqa: BLE001 - data-dependent code, custom ops, guards torch cannot settle
        return None
    finally:
        for m, training in modes.items():
            m.training = training
    if any(env.replace(sym).is_number for sym in symbols):
        # an input size the run fixed: a weight that needs it (flatten -> linear) or a branch on
        # it (``if x.shape[2] == 8`` in a module traced as one call), which this one run cannot
        # tell apart; the other branch may run at other sizes
        return None
    return {name: frozenset(d for d, size in enumerate(shape)
                            if isinstance(size, torch.SymInt) and size.node.expr.free_symbols)
            for name, shape in shapes.items()}
