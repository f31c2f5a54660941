"""The one registry of pruning methods that the recipe, the CLI, the Lightning callback and the
benchmarks read: the shipped methods (registered in :mod:`fxprune.methods`), those a program
registers (:func:`register_method`) and the installed packages' plug-ins (entry points in the
:data:`PLUGIN_GROUP` group, imported when first built).

    entry = get_method("cucb")                  # a MethodEntry
    pruner = entry(prepared, 0.5, channel_step=8)
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ArgumentError, ArgumentTypeError, warn
from .base import PruningMethod, check_method_kwargs, method_parameters

__all__ = ["MethodEntry", "registry", "register_method", "get_method", "method_names",
           "PLUGIN_GROUP", "priced_channel_step", "moved_channel_step"]

@dataclass
class MethodEntry:
    """A registered method: ``load()`` returns its class or factory (imported when first
    used, so a test or plug-in may replace it); ``defaults`` are keyword arguments that define
    the method, added to the recipe's own: :meth:`build` refuses another value for one
    (they are what the method is, not overridable defaults)."""

    name: str
    load: Callable[[], Callable]
    defaults: dict = field(default_factory=dict)
    summary: str = ""

    @property
    def cls(self) -> Callable:
        """The method's class, or the factory function it was registered as (one-shot's)."""
        return self.load()

    def build(self, prepared, *args, **kwargs) -> Any:
        """The method on ``prepared`` (``get_method("hard").build(pm, 0.5, channel_step=8)``,
        or call the entry itself: ``get_method("hard")(pm, 0.5)``); ``args`` are the
        constructor's positional arguments after the model (``target``, ``cost``, ...). Its
        ``defaults`` are what the method is (``hard`` is SMCP with ``masks="hard"``): another
        value for one of them raises ValueError, since silently running a different method
        under this name would mislabel its results."""
        if args:  # by name, so that the defaults' check sees them (break128 F5: a TypeError)
            names = [n for n, p in list(method_parameters(self.cls).items())[1:]
                     if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            if len(args) > len(names):
                raise ArgumentTypeError(f"method {self.name!r} takes at most {len(names)} positional "
                                        f"argument(s) after the model ({', '.join(names)}), got "
                                        f"{len(args)}; pass the others by keyword")
            given = dict(zip(names, args))
            twice = sorted(set(given) & set(kwargs))
            if twice:
                raise ArgumentTypeError(f"method {self.name!r} got {twice[0]} both by position and by "
                                        "keyword; pass it once")
            kwargs = {**given, **kwargs}
        for key, value in kwargs.items():
            if key in self.defaults and value != self.defaults[key]:
                raise ArgumentError(f"method {self.name!r} runs with {key}={self.defaults[key]!r}, but "
                                    f"{key}={value!r} is set; remove {key} (in a recipe: prune.{key}; on "
                                    f"the command line: --set '~prune.{key}') or choose the method "
                                    "that has it")
        # (keys it sets itself are the method's to refuse: one-shot names them all)
        # (break111 F12: a registered default it does not take was a bare TypeError here)
        check_method_kwargs(self.cls, self.defaults, f"method {self.name!r} (its registered defaults)",
                            refuse_own=False)
        check_method_kwargs(self.cls, kwargs, f"method {self.name!r}", refuse_own=False)
        method = self.cls(prepared, **{**self.defaults, **kwargs})
        if isinstance(method, PruningMethod):
            method.registered_as = self.name  # its states say so (oneshot and smcp build SMCP)
        return method

    __call__ = build


registry: dict[str, MethodEntry] = {}


def built_argument(entry: "MethodEntry", kwargs: dict, name: str):
    """The argument ``name`` a method built from ``entry`` with ``kwargs`` receives: the one
    given, else the registration's default, else its signature's (a factory forwarding
    ``**kwargs``: its target's, see :func:`method_parameters`); None where none can be read."""
    if name in kwargs:
        return kwargs[name]
    if name in (entry.defaults or {}):
        return entry.defaults[name]
    try:
        param = method_parameters(entry.cls).get(name)
    except (TypeError, ValueError):
        return None
    if param is None or param.default is inspect.Parameter.empty:
        return None
    return param.default


def priced_channel_step(entry: "MethodEntry", kwargs: dict) -> int | None:
    """The ``channel_step`` a method built from ``entry`` with ``kwargs`` chooses widths at,
    which a latency table for it must be timed at (:func:`built_argument`); None where none
    can be read (review195 R4: the trainer and the callback guessed 1 and 8)."""
    return built_argument(entry, kwargs, "channel_step")


def moved_channel_step(entry: "MethodEntry", state, kwargs: dict) -> tuple[int, int] | None:
    """``(recorded, default now)`` where a resumed method's ``state`` recorded a
    ``channel_step`` that ``kwargs`` leave to a default which has moved since (CCP's and
    CUCB's went from 1 to 8): the run goes on at the recorded one, which ``fxprune train`` and
    the Lightning callback pass (review195 R1, review197 L1); None otherwise."""
    settings = state.get("run_settings") if isinstance(state, dict) else None
    recorded = settings.get("channel_step") if isinstance(settings, dict) else None
    if (not isinstance(recorded, int) or isinstance(recorded, bool) or "channel_step" in kwargs
            or "channel_step" in (entry.defaults or {})):
        return None
    default = priced_channel_step(entry, {})
    return None if default is None or recorded == default else (recorded, default)


def register_method(name: str, target: str | Callable, *, defaults: dict | None = None,
                    summary: str = "") -> MethodEntry:
    """Register ``target`` (a class/factory, or ``"package.module:attr"`` imported on first
    use; ``"fxprune:SMCP"`` looks the attribute up on the fxprune package each time) as
    ``prune.method: name``. ``defaults`` are settings that define the method (``hard`` is
    SMCP with ``masks="hard"``): :meth:`MethodEntry.build` refuses another value for one.

    Raises TypeError for a ``name`` that is not a non-empty str or a ``target`` that is neither
    a callable nor a ``"module:attr"`` string; a string target that fails to import or to name
    a callable raises :class:`ImportError` at first use, naming the method."""
    if not isinstance(name, str) or not name:  # (a None name broke get_method's own error)
        raise ArgumentTypeError(f"register_method: name must be a non-empty str, got {name!r}")
    if name in RESERVED_NAMES:
        raise ArgumentError(f"register_method: {name!r} is reserved: prune.method: {name} trains "
                            "the dense model; register the method under another name")
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        if not module or not attr:
            raise ArgumentTypeError(f"register_method({name!r}): a string target is 'package.module:attr', "
                                    f"got {target!r}")

        def load(module=module, attr=attr):
            try:  # break49 #9: a bare ModuleNotFoundError named no method
                loaded = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:
                raise ImportError(f"method {name!r} is registered as {target!r}, which does not "
                                  f"load ({type(e).__name__}: {e})") from e
            if not callable(loaded):
                raise ImportError(f"method {name!r} is registered as {target!r}, a "
                                  f"{type(loaded).__name__}, not a method class or factory")
            return loaded
    elif callable(target):
        def load(target=target):
            return target
    else:
        raise ArgumentTypeError(f"register_method({name!r}): target must be a method class or factory, or "
                                f"a 'package.module:attr' string, got a {type(target).__name__}")
    if defaults is not None and not isinstance(defaults, Mapping):
        raise ArgumentTypeError(f"register_method({name!r}): defaults is a dict of the method's arguments "
                                f"(e.g. {{'masks': 'hard'}}), got a {type(defaults).__name__}")
    if defaults and callable(target):  # (a string target is checked when first built)
        check_method_kwargs(target, defaults, f"register_method({name!r}, defaults=...)",
                            refuse_own=False)
    entry = MethodEntry(name, load, dict(defaults or {}), summary)
    registry[name] = entry
    return entry


def get_method(name: str) -> MethodEntry:
    """The registered method ``name`` (built-in or a plug-in's): a :class:`MethodEntry`, which
    builds it on a prepared model, ``get_method("cucb")(pm, 0.5, channel_step=8)``. Raises
    ValueError for a name not registered, with the close ones."""
    _load_methods()
    if not isinstance(name, str):  # (break111 F16: a list was "unhashable type")
        raise ArgumentError(f"a pruning method's name is a str, got {name!r}; registered: "
                            f"{', '.join(sorted(registry))}")
    if name not in registry:
        import difflib

        close = difflib.get_close_matches(str(name).lower(), sorted(registry), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""  # break73 M6: SMCP, smpc
        raise ArgumentError(f"unknown pruning method {name!r}{hint}; registered: "
                            f"{', '.join(sorted(registry))} (a package adds one with an entry point "
                            f"in the {PLUGIN_GROUP!r} group)")
    return registry[name]


def method_names() -> list[str]:
    """The registered method names, fxprune's and the entry-point plug-ins', in order."""
    _load_methods()
    return list(registry)


#: Entry-point group through which an installed package registers methods, e.g. in its
#: pyproject.toml: ``[project.entry-points."fxprune.methods"] mymethod = "mypkg.pruning:MyMethod"``.
#: Only the names are read up front; the target is imported when the method is first built.
PLUGIN_GROUP = "fxprune.methods"
#: a recipe's ``prune.method`` that trains the dense model, which no method may take as its name
NO_PRUNING = "none"
#: names no method may take
RESERVED_NAMES = (NO_PRUNING,)
_plugins_seen = False


def _load_methods() -> None:
    importlib.import_module("fxprune.methods")  # registers the shipped methods
    global _plugins_seen
    if _plugins_seen:
        return
    _plugins_seen = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=PLUGIN_GROUP):
        where = f"{ep.name} = {ep.value!r}" + (f" (package {ep.dist.name})"
                                                if getattr(ep, "dist", None) else "")
        if ep.name in registry or ep.name in RESERVED_NAMES:
            # a shipped or explicitly registered method keeps its name (break198 F8: a plug-in
            # named none was get_method's, while recipes read none as no pruning)
            taken = ("reserved: prune.method none trains the dense model" if ep.name in RESERVED_NAMES
                     else f"a method named {ep.name!r} is already registered")
            warn(f"the {PLUGIN_GROUP!r} plug-in {where} is ignored: {taken}; rename the entry "
                 "point", RuntimeWarning)
            continue
        registry[ep.name] = MethodEntry(ep.name, _plugin_loader(ep, where), {},
                                        f"plug-in {ep.value}")


def _plugin_loader(ep, where: str) -> Callable[[], Callable]:
    """``ep.load`` (it resolves "module:attr.attr"), called when the method is first built; any
    failure of the plug-in's import is one ImportError naming the plug-in and its package."""
    def load():
        try:
            target = ep.load()
        except Exception as exc:  # the plug-in's own code: whatever it raises
            raise ImportError(f"the {PLUGIN_GROUP!r} plug-in {where} failed to load: "
                              f"{type(exc).__name__}: {exc}") from exc
        if not callable(target) or inspect.ismodule(target):
            raise ImportError(f"the {PLUGIN_GROUP!r} plug-in {where} names a "
                              f"{type(target).__name__}, not a method class or factory; point "
                              "it at one (module:Class)")
        return target
    return load
