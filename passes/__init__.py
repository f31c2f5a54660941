"""fxprune's torch.fx passes, one per module: ``fxprune.passes.<name>``, imported on first use
(``fxprune.passes.bn_rescale.insert_bn_rescale(pm)`` after ``import fxprune`` alone)."""
from fxprune._lazy import lazy_getattr as _lazy_getattr

__getattr__ = _lazy_getattr(__name__)


def __dir__() -> list[str]:
    """The passes too, not yet imported (break174 F10: dir() was empty)."""
    import pkgutil

    return sorted({*globals(), *(m.name for m in pkgutil.iter_modules(__path__))})
