"""Which dims of which nodes change size when the inputs do (run on demand by the analysis).

The example inputs fix every size, so a dim of ``y.flatten(1)`` (channels times H*W) looks the
same to the rules as one of a channel shuffle's output (channels times a literal group count).
Surgery may write a split of the first in numbers only at the example's resolution; the second
is safe. This pass runs the graph once more on fake tensors whose input sizes are symbols
(torch's FakeTensorMode and ShapeEnv, as torch.export does) and reads, per node, the dims whose
size holds a symbol. torch's ops fix a symbol only where the model needs that size (a conv's
weight fixes the input's channels; a linear after a flatten, the resolution). Code the trace did
not see may fix one by a branch (``if x.shape[2] == 8`` in a module called as one op); then the
answer is unknown, since other sizes may take the other branch.
"""
from __future__ import annotations

import copy

import torch
from torch import fx

from .shape_prop import TensorMeta


def input_dependent_dims(gm: fx.GraphModule) -> dict[str, frozenset[int]] | None:
    """``{node name: dims whose size follows the inputs' sizes}`` for every tensor node, or
    None when the graph does not run on symbolic sizes, or when code the trace did not see fixed
    an input's size (fxprune then assumes the worst).
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
                empty = torch.empty(meta.shape, dtype=meta.dtype, device=device)  # outside the mode
                fake = mode.from_tensor(empty, symbolic_context=StatelessSymbolicContext(
                    dynamic_sizes=[DimDynamic.DYNAMIC] * len(meta.shape)))
                symbols.update(s.node.expr for s in fake.shape if isinstance(s, torch.SymInt))
                args.append(fake)
            else:
                args.append(meta)
        gm.eval()  # as propagate_shapes: no norm statistics touched
        with mode, torch.no_grad():
            shapes: dict[str, tuple] = {}
            branched = []

            class _Run(fx.Interpreter):
                def run_node(self, n):
                    opaque = _opaque(n, self.module)
                    before = _fixed(env, symbols) if opaque else set()
                    result = super().run_node(n)
                    if opaque and _fixed(env, symbols) - before:  # this node fixed a size
                        branched.append(n.name)
                    if isinstance(result, torch.Tensor):
                        shapes[n.name] = tuple(result.shape)
                    return result

            _Run(gm).run(*args)
    except Exception:  # noqa: BLE001 - data-dependent code, custom ops, guards torch cannot settle
        return None
    finally:
        for m, training in modes.items():
            m.training = training
    if branched:
        # an input size fixed inside code fxprune did not trace (``if x.shape[2] == 8`` in a
        # module called as one op): a branch, so other sizes may take another path
        return None
    return {name: frozenset(d for d, size in enumerate(shape)
                            if isinstance(size, torch.SymInt) and size.node.expr.free_symbols)
            for name, shape in shapes.items()}


def _fixed(env, symbols) -> set:
    return {sym for sym in symbols if env.replace(sym).is_number}


_TORCH_OWN = ("_operator", "operator", "math", "builtins")


def _opaque(node: fx.Node, root) -> bool:
    """Whether ``node`` runs code the trace did not see (a user's module called as one op, a
    wrapped function): only there can a size decide a branch. torch's own ops fix a size only
    when the model needs it (a conv's or linear's weight, a literal in a view). A module is
    judged by where its ``forward`` is defined (a bare ``nn.Conv2d`` subclass runs torch's)."""
    if node.op == "call_module":
        where = getattr(type(root.get_submodule(node.target)).forward, "__module__", None) or ""
    elif node.op == "call_function":
        where = getattr(node.target, "__module__", None) or ""
    else:
        return False
    return not (where == "torch" or where.startswith("torch.") or where in _TORCH_OWN)
