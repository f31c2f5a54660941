"""One-line argument checks shared by the pruning methods and the cost models: each
raises an ArgumentError (a ValueError; a wrong kind: ArgumentTypeError) naming the argument,
what it must be and what was given."""
from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import ArgumentError, ArgumentTypeError

__all__ = ["check_number", "check_fraction", "check_bool"]


def check_number(name: str, value, low=None, high=None, *, integer: bool = False,
                 open_low: bool = False, open_high: bool = False) -> None:
    """A one-line ValueError naming ``name`` unless ``value`` is a finite real number (an
    integer if ``integer``; numpy scalars count, bools do not) within ``[low, high]`` (a
    bound left open with ``open_low``/``open_high``; None: unbounded)."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise ArgumentError(f"{name} must be {'an integer' if integer else 'a finite number'}, "
                            f"got {value!r}")
    if low is not None and (value <= low if open_low else value < low):
        raise ArgumentError(f"{name} must be {'>' if open_low else '>='} {low}, got {value!r}")
    if high is not None and (value >= high if open_high else value > high):
        raise ArgumentError(f"{name} must be {'<' if open_high else '<='} {high}, got {value!r}")


def check_bool(name: str, value) -> None:
    """A one-line ArgumentTypeError unless ``value`` is a bool (numpy's too): a string such as
    ``"no"`` read as True (break196 F5)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ArgumentTypeError(f"{name} is True or False, got {value!r}")


def check_fraction(name: str, value, what: str) -> None:
    """A one-line ValueError unless ``value`` is a real number in (0, 1]; ``what`` says what
    the fraction is of (the message reads "target is the fraction of the dense cost to keep")."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or not 0 < value <= 1):
        hint = ""  # break49 #11, break53 #6: the ways users get here by habit
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
            hint = f" (give a number: {name}={name}.item())"
        elif number and 1 < value < 10 and "cost" in what:  # 1.5 reads as a speed-up (break62 #8)
            hint = (f" (a speed-up of {value:g}x? give the fraction of the cost to keep: "
                    f"{name}={1 / value:.3g})")
        elif number and 1 < value < 10:  # a fraction of channels (ratio) is not one of the cost
            hint = (f" (a speed-up of {value:g}x? {name} counts channels, not cost: for "
                    f"{1 / value:.3g} of the cost, give target={1 / value:.3g} instead)")
        elif number and 10 <= value <= 100:
            hint = f" (a percentage? give the fraction: {name}={value / 100:g})"
        elif number and value > 100:
            hint = (" (a fraction of dense, not an absolute cost: divide by the dense cost, "
                    "e.g. fxprune.summary's dense FLOPs)")
        raise ArgumentError(f"{name} is {what}, in (0, 1]; got {value!r}{hint}")
