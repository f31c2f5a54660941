"""Helpers shared by the benchmark scripts (not part of the fxprune package)."""
from __future__ import annotations

from pathlib import Path

import fxprune

RESULTS = Path(__file__).resolve().parent / "results"


def results_stem(name: str, out=None, smoke: bool = False) -> Path:
    """Where a benchmark writes its ``.json`` and ``.md``: ``out`` when given, else
    ``benchmarks/results/NAME``, or ``NAME_smoke`` for a smoke run, so that a smoke run's
    figures never replace the published ones (git ignores ``*_smoke.*`` there)."""
    if out is not None:
        return Path(out)
    return RESULTS / (f"{name}_smoke" if smoke else name)


def half_masks(prepared) -> None:
    """Mask every other channel of every prunable group of ``prepared`` (in place), keeping one
    channel of each tied position set (grouped convs): the mid-ramp worst case of the timing
    benchmarks, with as many masked channels as kept ones."""
    for g in fxprune.channel_groups(prepared):
        if g.prunable:
            g.mask[1::2] = 0
            for positions in g.keep_one_of:
                if not g.mask[positions].any():
                    g.mask[positions[0]] = 1
