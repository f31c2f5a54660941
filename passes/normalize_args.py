"""Pass the tensor a function or module call gives by keyword (``torch.flip(input=y, dims=[1])``,
``self.bn(input=y)``) as its first positional argument, as the channel rules read it.

Legal PyTorch, and torch.fx records the call as written: the rules, which read a call's tensor
at ``node.args[0]``, met an empty ``args`` and failed with a bare IndexError (break122 F1:
``torch.flip``, ``chunk``, ``sum``, ``roll``, ``F.pixel_shuffle``, ``F.conv2d`` and others). The
graph computes the same after this pass: only a parameter that is first and positional in
every signature of the function is moved (for a module, of its ``forward``).
"""
from __future__ import annotations

import inspect

from torch import fx
from torch.fx.operator_schemas import get_signature_for_torch_op


def _input_is_positional(target) -> bool:
    """Whether ``target``'s first parameter is ``input`` and may be passed by position, in
    every signature it has (torch's builtins: their overloads' schemas; break124 #1:
    ``torch.where(condition=, input=, other=)`` takes ``condition`` first). Unknown: False."""
    try:
        signatures = [inspect.signature(target)]
    except (TypeError, ValueError):
        signatures = get_signature_for_torch_op(target) or []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    firsts = [next(iter(s.parameters.values()), None) for s in signatures]
    return bool(firsts) and all(p is not None and p.name == "input" and p.kind in positional
                                for p in firsts)


def _module_input_name(module) -> str | None:
    """The name of the first parameter of ``module.forward`` where it may be passed by
    position or by keyword (``input`` for torch's layers), else None: a keyword of the name of
    a positional-only one goes to ``**kwargs`` (review135 F4)."""
    try:
        first = next(iter(inspect.signature(module.forward).parameters.values()), None)
    except (TypeError, ValueError):
        return None
    return first.name if first is not None and first.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD else None


def normalize_input_keyword(gm: fx.GraphModule) -> int:
    """Move ``input=`` into ``args[0]`` for every ``call_function`` node that gives no
    positional argument, and a module call's first ``forward`` parameter given by keyword
    (review134 F2: ``self.bn(input=y)`` failed with a bare IndexError); returns how many were
    moved. ``gm`` is changed in place and recompiled when any was."""
    moved = 0
    for node in gm.graph.nodes:
        if node.args:
            continue
        name = None
        if node.op == "call_function" and "input" in node.kwargs and _input_is_positional(node.target):
            name = "input"
        elif node.op == "call_module" and node.kwargs:
            name = _module_input_name(gm.get_submodule(node.target))
        if name is not None and name in node.kwargs:
            kwargs = dict(node.kwargs)
            node.args = (kwargs.pop(name),)
            node.kwargs = kwargs
            moved += 1
    if moved:
        gm.recompile()
    return moved
