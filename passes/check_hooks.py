"""The user's hooks on masked layers take the masks.

A masked layer (or norm) is called as ``(input, *masks)``. Hooks written for the plain layer
can drop the masks or fail on them; the prepared model runs once, between hooks of this pass,
and a layer whose hooks did either is refused by name.
"""
from __future__ import annotations

from torch import fx

from fxprune.compare import run_eval
from fxprune.errors import UnsupportedModelError
from fxprune.masks import FXPRUNE_CLASSES, user_class

from .shape_prop import preserving_rng
from .trace import FORWARD_HOOK_KINDS, hook_names


def check_hooks_take_the_masks(gm: fx.GraphModule, inputs: tuple) -> None:
    """A masked layer (or norm) is called as ``(input, *masks)``: a hook written for the plain
    layer can drop the masks (a pre-hook returning the input alone: the prepared model failed
    at its first forward with torch's bare "missing 1 required positional argument: 'mask'",
    break141 F3; a masked LayerNorm silently normalized over every channel, review142 F1), or
    fail on them (``(x,) = args``: review143 F1, break144 F8). Where a masked layer has forward
    hooks or pre-hooks, the prepared model runs once here (eval mode, every buffer put back; the
    user's hooks run once more) between hooks of ours: one before theirs marks the layer
    entered, one after their pre-hooks counts the arguments it gets, one after their forward
    hooks marks it left. A layer that gets fewer arguments than the graph passes, or fails
    while entered, is refused by name (review142 F2); any other failure is raised as it is
    (review142 F3).

    Raises:
        ValueError: naming the layer, its hooks and what they did with the masks.
    """
    hooked = {name: m for name, m in gm.named_modules()
              if isinstance(m, FXPRUNE_CLASSES) and hook_names(m, FORWARD_HOOK_KINDS)}
    passed = {}  # the arguments the graph calls each with
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target in hooked:
            passed[node.target] = len(node.args)
    if not passed:
        return
    dropped: dict[str, int] = {}
    inside: list[str] = []  # the hooked layers entered and not left

    def entering(name):
        def pre(module, args):
            inside.append(name)
        return pre

    def counting(name):
        def pre(module, args):
            if len(args) < passed[name]:
                dropped.setdefault(name, len(args))
        return pre

    def leaving(name):
        def post(module, args, output):
            inside.pop()
        return post

    handles = []
    for name in passed:
        module = hooked[name]
        handles += [module.register_forward_pre_hook(entering(name), prepend=True),
                    module.register_forward_pre_hook(counting(name)),
                    module.register_forward_hook(leaving(name))]
    failure = None
    try:
        try:
            with preserving_rng(gm, inputs):
                run_eval(gm, inputs)
        except Exception as exc:
            if not dropped and not inside:  # not theirs to answer for
                raise
            failure = exc
    finally:
        for handle in handles:
            handle.remove()
    name = next(iter(dropped)) if dropped else inside[-1] if inside else None
    if name is None:
        return
    module = hooked[name]
    cls = user_class(module).__name__
    what = (f"gets {dropped[name]} of the {passed[name]} arguments the prepared model calls it "
            "with (input, then its masks)" if name in dropped else
            f"fails where the prepared model calls it with (input, then its masks): "
            f"{type(failure).__name__}: {failure}")
    raise UnsupportedModelError(
        f"prepare: `{name}` ({cls}, with {hook_names(module, FORWARD_HOOK_KINDS)}) {what}; a hook on a masked "
        "layer sees every argument, and a pre-hook must return them all (or None): register "
        "hooks written for the plain layer on the finalized model") from failure
