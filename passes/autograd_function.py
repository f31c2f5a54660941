"""Trace a custom ``torch.autograd.Function`` as one call, its backward kept.

``MyFn.apply(x)`` runs ``MyFn.forward`` with grad off and records the custom backward. Traced
by torch.fx on proxies, the forward's ops went into the graph instead, made with grad off: the
grad-mode pass (:mod:`fxprune.passes.grad_mode`) kept them as a no-grad region, so every layer
before the Function got no gradient (break154 F1: timm's ``HardMishAutoFn`` left 60 of
resnet18's 62 parameters untrained), and a straight-through estimator or a gradient-reversal
layer lost its backward. While fxprune traces, :func:`tracing_autograd_functions` has
``Function.apply`` with a proxy among its arguments record one node,
``apply_function(*args, _fxprune_function="module:QualName")`` (torch.fx's graphs hold no
classes as arguments: the class is named, and found again by :func:`resolve`; a keyword, so
that a rule reads the Function's own arguments where it reads a node's).

The channel rule of such a node is the row of the Function class (``rules={MyFn: ...}`` or
:data:`fxprune.op_table.CHANNEL_RULES`); a class without one is a barrier that says so. A saved
model with such a node needs fxprune, and the class importable, to load.
"""
from __future__ import annotations

import contextlib
import importlib
import threading

from torch import fx
from torch.autograd.function import Function
from torch.utils import _pytree as pytree

#: classes by their key, in this process: every class traced (resolving a key is a dict look-up
#: where the class was seen, which torch.compile traces: review157 F2), and the only record of
#: one defined inside a function (it cannot be imported by its name)
_DEFINED: dict[str, type] = {}
#: the keyword argument of :func:`apply_function` that names the class
KEY = "_fxprune_function"


def _imported(module: str, qualname: str) -> type | None:
    if "<locals>" in qualname:
        return None
    try:
        found = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None
    return found if isinstance(found, type) else None


def function_key(function: type) -> str:
    """``"module:QualName"`` of an autograd Function class, with ``@file:line`` of its forward
    added where that name does not import it (a class defined in a function: found in this
    process only; the same definition made again, at each call of that function, has the same
    key, so two traces of a model agree: review157 F3)."""
    key = f"{function.__module__}:{function.__qualname__}"
    if _imported(function.__module__, function.__qualname__) is not function:
        code = getattr(getattr(function, "forward", None), "__code__", None)
        where = f"{code.co_filename}:{code.co_firstlineno}" if code is not None else f"{id(function):x}"
        key = f"{key}@{where}"
    _DEFINED[key] = function
    return key


def resolve(key: str) -> type:
    """The class :func:`function_key` named. Raises RuntimeError when it cannot be found (a
    saved model loaded where its Function's module is not importable)."""
    found = _DEFINED.get(key)
    if found is None:
        module, _, qualname = key.partition("@")[0].partition(":")
        found = _imported(module, qualname)
        if found is not None:
            _DEFINED[key] = found
    if found is None:
        raise RuntimeError(f"the model applies the custom autograd Function {key.partition('@')[0]}, "
                           "which cannot be imported here: define it at module level in a module "
                           "this process can import")
    return found


def apply_function(*args, _fxprune_function: str):
    """``resolve(_fxprune_function).apply(*args)``; while torch.fx traces (a proxy among the
    arguments), one ``call_function`` node of this function instead, whatever the tracer (a
    saved model is re-traced from its code when loaded)."""
    proxy = next((a for a in pytree.tree_leaves(args) if isinstance(a, fx.Proxy)), None)
    if proxy is not None:
        return proxy.tracer.create_proxy("call_function", apply_function, args,
                                         {KEY: _fxprune_function})
    return resolve(_fxprune_function).apply(*args)


def function_of(node: fx.Node) -> type | None:
    """The autograd Function class ``node`` applies, or None for any other node."""
    if node.op == "call_function" and node.target is apply_function and KEY in node.kwargs:
        return resolve(node.kwargs[KEY])
    return None


@contextlib.contextmanager
def tracing_autograd_functions():
    """While the block traces: ``Function.apply`` with a proxy among its arguments records
    :func:`apply_function` (other calls, on tensors, run as always)."""
    original = Function.__dict__["apply"]
    mine = threading.get_ident()  # (another thread's trace is left to torch.fx: review157 F10)

    def apply(cls, *args, **kwargs):
        if (not kwargs and threading.get_ident() == mine
                and any(isinstance(a, fx.Proxy) for a in pytree.tree_leaves(args))):
            return apply_function(*args, _fxprune_function=function_key(cls))
        return original.__get__(None, cls)(*args, **kwargs)

    Function.apply = classmethod(apply)
    try:
        yield
    finally:
        Function.apply = original


__all__ = ["KEY", "apply_function", "function_key", "function_of", "resolve",
           "tracing_autograd_functions"]
