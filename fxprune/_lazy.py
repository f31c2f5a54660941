"""Attribute access that imports a package's parts on first use (PEP 562 ``__getattr__``)."""
from __future__ import annotations

import importlib
import importlib.util
import sys


def lazy_getattr(package: str, names: dict[str, tuple[str, str]] | None = None):
    """A module ``__getattr__`` for ``package``: ``names`` maps an attribute to the (module,
    attribute) it is imported from; any other plain name that is a submodule of ``package``
    is imported (``fxprune.methods.method_names()`` as the README writes it failed until
    something had imported ``fxprune.methods``: break159 F7). Raises AttributeError else."""
    names = names or {}

    def __getattr__(name: str):
        if name in names:
            module, attr = names[name]
            value = getattr(importlib.import_module(module), attr)
            setattr(sys.modules[package], name, value)  # found once: later reads are plain
            return value
        if (not name.startswith("_") and "." not in name
                and importlib.util.find_spec(f"{package}.{name}") is not None):
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
