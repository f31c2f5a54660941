"""Keep the autograd and autocast modes a model's ``forward`` sets, which torch.fx drops.

``with torch.no_grad():`` (or ``@torch.no_grad()`` on a submodule's forward, or
``torch.set_grad_enabled(False)``) and ``with torch.autocast(...):`` run while torch.fx traces,
on proxies, and leave nothing in the graph: a frozen encoder or a stop-gradient branch (a
BYOL/SimSiam target) was trained through, and a float32 island under the caller's autocast ran
in bfloat16 (break97 F1, F2). As torch.export does, the graph gets the calls that set the
modes:

- :func:`recording_modes`, around tracing, marks each node made while grad was off
  (``node.meta["fxprune_grad_enabled"] = False``) and records every ``torch.autocast``
  entered and left as ``torch.amp._enter_autocast(device, dtype, enabled, cache)`` /
  ``torch.amp._exit_autocast(ctx)`` nodes;
- :func:`keep_no_grad_regions` brackets each run of nodes made without grad with
  ``previous = torch.is_grad_enabled(); torch._C._set_grad_enabled(False)`` ...
  ``torch._C._set_grad_enabled(previous)``, so a call under the caller's ``torch.no_grad()``
  stays without grad after the region.

The grad mode is read relative to tracing, which runs with grad on: ``torch.enable_grad()``
inside a forward is not kept (it changes nothing then).
"""
from __future__ import annotations

import contextlib
import threading

import torch
import torch.fx as fx

from .autograd_function import tracing_autograd_functions

GRAD_ENABLED = "fxprune_grad_enabled"
_MODE_SETTERS = (torch._C._set_grad_enabled, torch.amp._enter_autocast, torch.amp._exit_autocast)


_TRACING = threading.RLock()  # one tracer patches torch.autocast at a time (nested: the same thread)


@contextlib.contextmanager
def recording_modes(tracer: fx.Tracer):
    """While tracing with ``tracer``: grad on (so that a node made with it off was made in a
    region the forward turned off), and ``torch.autocast`` regions recorded as nodes. Nodes
    are marked by :func:`mark_grad_mode`, called from the tracer's ``create_proxy``.

    ``torch.autocast``'s methods are patched on the class for the trace, so traces are
    serialized (another thread's trace waits), and only this thread's autocast regions are
    recorded (another thread's ``with torch.autocast`` went into the graph: review102 #2)."""
    cls = torch.amp.autocast_mode.autocast
    with _TRACING:
        init, enter, exit_ = cls.__init__, cls.__enter__, cls.__exit__
        mine = threading.get_ident()

        def recorded_init(self, device_type, dtype=None, enabled=True, cache_enabled=None):
            init(self, device_type, dtype, enabled, cache_enabled)
            if threading.get_ident() == mine:
                # what the code asks for, as it asks: autocast("cuda") on a host without CUDA
                # turns itself off (break100 F5: recorded so, it never autocast on the GPU),
                # and a dtype or cache flag left out is the caller's at each call (review102
                # #1: the dtype at prepare was recorded)
                self._fxprune_asked = (dtype, bool(enabled), cache_enabled)

        def recorded_enter(self):
            out = enter(self)
            if threading.get_ident() == mine:
                dtype, enabled, cache = self.__dict__.get(
                    "_fxprune_asked", (self.fast_dtype, self._enabled, self._cache_enabled))
                node = tracer.create_proxy("call_function", torch.amp._enter_autocast,
                                           (self.device, dtype, enabled, cache), {})
                self.__dict__.setdefault("_fxprune_entered", []).append(node)
            return out

        def recorded_exit(self, *exc):
            entered = self.__dict__.get("_fxprune_entered")
            if entered and threading.get_ident() == mine:
                tracer.create_proxy("call_function", torch.amp._exit_autocast, (entered.pop(),), {})
            return exit_(self, *exc)

        cls.__init__, cls.__enter__, cls.__exit__ = recorded_init, recorded_enter, recorded_exit
        try:
            with torch.enable_grad():
                yield
        finally:
            cls.__init__, cls.__enter__, cls.__exit__ = init, enter, exit_


@contextlib.contextmanager
def preserving_modes():
    """Runs the block and then gives back the grad mode and the CPU and CUDA autocast state
    (enabled, dtype, cache flag, nesting depth), whatever the block raised: for running a graph
    that sets modes node by node (an ``fx.Interpreter``: shape propagation), whose region
    exits an exception skips (review102 #3: a failed prepare left the depth raised)."""
    grad = torch.is_grad_enabled()
    devices = ("cpu", "cuda")
    state = [(torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in devices]
    cache = torch.is_autocast_cache_enabled()
    depth = torch.autocast_increment_nesting() - 1
    torch.autocast_decrement_nesting()
    try:
        yield
    finally:
        torch.set_grad_enabled(grad)
        for d, (enabled, dtype) in zip(devices, state):
            torch.set_autocast_enabled(d, enabled)
            torch.set_autocast_dtype(d, dtype)
        torch.set_autocast_cache_enabled(cache)
        now = torch.autocast_increment_nesting() - 1
        torch.autocast_decrement_nesting()
        for _ in range(now - depth):
            if torch.autocast_decrement_nesting() == 0:
                torch.clear_autocast_cache()


def mark_grad_mode(node: fx.Node) -> None:
    """Marks ``node`` as made with grad off, when it was (see :func:`recording_modes`)."""
    if not torch.is_grad_enabled():
        node.meta[GRAD_ENABLED] = False


class RestoreModes:
    """A code transformer (``Graph.on_generate_code``) that runs the generated forward's body
    inside ``with torch.set_grad_enabled(torch.is_grad_enabled()):`` and, per device of the
    graph's autocast regions, a ``try``/``finally`` that puts back the caller's autocast state
    (enabled, dtype): an exception raised inside a region no longer leaves the caller without
    grad or under autocast (break99 F1), which the ``with`` statements of the model's own code
    saw to. The code names only ``torch``, which every generated forward has, and no
    ``torch.autocast`` (loading re-traces the code and would record one)."""

    def __init__(self, devices: tuple[str, ...] = ()):
        self.devices = tuple(devices)

    def __call__(self, body: list[str]) -> list[str]:
        out = ["with torch.set_grad_enabled(torch.is_grad_enabled()):\n"]
        indent = "    "
        saved = "".join(f"torch.is_autocast_enabled({d!r}), torch.get_autocast_dtype({d!r}), "
                        for d in self.devices)
        if self.devices:
            # autocast's nesting depth, read by a step up and back (torch has no getter): a
            # region left by an exception never ran its exit, which lowers it and clears the
            # cache of cast weights at depth 0 (break100 F1: later steps ran on stale casts)
            out += [f"{indent}_fxprune_autocast = ({saved}torch.is_autocast_cache_enabled(), "
                    "torch.autocast_increment_nesting() - 1)\n",
                    f"{indent}torch.autocast_decrement_nesting()\n", f"{indent}try:\n"]
            indent += "    "
        for chunk in body:
            out.append("".join(indent + line if line.strip() else line
                               for line in chunk.splitlines(keepends=True)))
        if self.devices:
            out.append("    finally:\n")
            for i, d in enumerate(self.devices):
                out.append(f"        torch.set_autocast_enabled({d!r}, _fxprune_autocast[{2 * i}])\n")
                out.append(f"        torch.set_autocast_dtype({d!r}, _fxprune_autocast[{2 * i + 1}])\n")
            n = 2 * len(self.devices)
            out += [f"        torch.set_autocast_cache_enabled(_fxprune_autocast[{n}])\n",
                    "        _fxprune_depth = torch.autocast_increment_nesting() - 1\n",
                    "        torch.autocast_decrement_nesting()\n",
                    f"        for _ in range(_fxprune_depth - _fxprune_autocast[{n + 1}]):\n",
                    "            if torch.autocast_decrement_nesting() == 0:\n",
                    "                torch.clear_autocast_cache()\n"]
        return out


def restore_modes_on_exit(graph: fx.Graph) -> None:
    """Has ``graph``'s generated code restore the caller's modes (:class:`RestoreModes`) when
    it sets any."""
    if sets_modes(graph):
        devices = sorted({node.args[0] for node in graph.find_nodes(
            op="call_function", target=torch.amp._enter_autocast) if isinstance(node.args[0], str)})
        graph.on_generate_code(lambda _: RestoreModes(tuple(devices)))


class ModeRecordingTracer(fx.Tracer):
    """A tracer that keeps the modes (:func:`recording_modes`, :func:`keep_no_grad_regions`),
    and records a custom autograd Function's ``apply`` as one call (whose forward runs with
    grad off: :mod:`fxprune.passes.autograd_function`).

    fxprune's tracer is one; a finalized model whose graph sets modes is pickled with this
    class, since loading re-traces its code, and a plain tracer would run those calls instead of
    recording them (so loading such a model needs fxprune)."""

    def trace(self, root, concrete_args=None):
        with recording_modes(self), tracing_autograd_functions():
            graph = super().trace(root, concrete_args)
        keep_no_grad_regions(graph)
        restore_modes_on_exit(graph)
        return graph

    def create_proxy(self, kind, target, args, kwargs, *rest, **more):
        proxy = super().create_proxy(kind, target, args, kwargs, *rest, **more)
        mark_grad_mode(proxy.node)
        return proxy


def autocast_dtypes(graph: fx.Graph) -> set[torch.dtype]:
    """The dtypes of the autocast regions ``graph`` enters enabled (its ops may run in them)."""
    return {node.args[1] if isinstance(node.args[1], torch.dtype) else torch.get_autocast_dtype(node.args[0])
            for node in graph.find_nodes(op="call_function", target=torch.amp._enter_autocast)
            if len(node.args) > 2 and node.args[2]}  # (a dtype left out: the device's default)


def sets_modes(graph: fx.Graph) -> bool:
    """Whether ``graph`` has nodes that set the grad or autocast mode."""
    return any(node.op == "call_function" and node.target in _MODE_SETTERS for node in graph.nodes)


def keep_no_grad_regions(graph: fx.Graph) -> int:
    """Brackets each run of nodes marked as made without grad with the calls that turn grad
    off and restore the caller's mode; returns how many runs there were."""
    runs: list[list[fx.Node]] = []
    inside = False
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        off = node.meta.get(GRAD_ENABLED) is False
        if off and not inside:
            runs.append([node, node])
        elif off:
            runs[-1][1] = node
        inside = off
    for first, last in runs:
        with graph.inserting_before(first):
            previous = graph.call_function(torch.is_grad_enabled)
            off = graph.call_function(torch._C._set_grad_enabled, (False,))
        with graph.inserting_after(last):
            on = graph.call_function(torch._C._set_grad_enabled, (previous,))
        for node, like in ((previous, first), (off, first), (on, last)):
            _made_by(node, like)
    return len(runs)


def _made_by(node: fx.Node, like: fx.Node) -> None:
    """Gives ``node`` the module and source line of the code that made ``like`` (its caller's,
    for a module call): a region a submodule opens only in one mode (``torch.set_grad_enabled(
    self.training)``) is then that submodule's difference between the modes, which makes it
    one op following .train()/.eval() (passes/follow_mode.py; break100 F6: the model's own
    forward was named, and the region frozen in the mode of the prepare)."""
    stack = dict(like.meta.get("nn_module_stack", {}))
    if like.op == "call_module" and stack and list(stack.values())[-1][0] == like.target:
        stack.popitem()
    node.meta["nn_module_stack"] = stack
    if "stack_trace" in like.meta:
        node.meta["stack_trace"] = like.meta["stack_trace"]
