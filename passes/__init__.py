"""fxprune's torch.fx passes, one per module: ``fxprune.passes.<name>``, imported on first use
(``fxprune.passes.bn_rescale.insert_bn_rescale(pm)`` after ``import fxprune`` alone)."""


def __getattr__(name):
    import importlib
    import importlib.util

    if not name.startswith("_") and "." not in name and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
