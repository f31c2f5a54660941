"""``fxprune demo``: prune a fraction of every channel group of a torchvision model by weight
magnitude, finalize, and show the groups and the savings (no training, no data)."""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from .errors import out_of_memory


def prune_by_magnitude(prepared, fraction: float) -> None:
    """Mask the ``fraction`` of each prunable group whose readers' weights are smallest (L2)."""
    from .importance import ImportanceAccumulator
    from .units import UnitIndex, consumer_weights

    index = UnitIndex(prepared)
    scores = ImportanceAccumulator(consumer_weights(prepared, index), index.n, "magnitude").scores()
    kept = np.zeros(index.n, dtype=np.float32)
    for i, group in enumerate(index.groups):
        sl = index.group_slice(i)
        order, min_k = index.ranking(i, scores[sl])
        k = max(min_k, int(round(group.size * (1 - fraction))), 1)
        kept[sl.start + order[:k]] = 1
    index.set_masks(prepared, kept)


def trained_size(name: str, model=None) -> int:
    """The square input size to suggest for torchvision model ``name``: the size ``model`` is
    built for if it has one (ViT's ``image_size``: it runs at that size only), else the size
    its default weights were evaluated at (their transforms' crop size), else 224. Reads
    metadata only, downloads nothing."""
    import torchvision

    if isinstance(getattr(model, "image_size", None), int):
        return model.image_size
    try:
        return int(torchvision.models.get_model_weights(name).DEFAULT.transforms.keywords["crop_size"])
    except (ValueError, AttributeError, KeyError, TypeError):
        return 224


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="resnet18", help="a torchvision classification model name (default: resnet18)")
    p.add_argument("--size", type=int, default=224, help="input height and width (default: 224)")
    p.add_argument("--fraction", type=float, default=0.5, help="share of each group's channels REMOVED (default: 0.5; 0.25 keeps 3/4)")
    p.add_argument("--all-groups", action="store_true", help="also list groups without layers")


class _Refused(Exception):
    """A bad argument or model: its message is the one line printed."""


def run(args: argparse.Namespace) -> int:
    """Exit status 0, or 2 with one line on stderr for a bad argument or model (as every
    fxprune command)."""
    try:
        return _run(args)
    except _Refused as e:
        print(e, file=sys.stderr)
        return 2
    except (RuntimeError, MemoryError) as e:  # (break186 F2, break187 F3: a 20-line traceback)
        said = out_of_memory(e)
        if said is None:
            raise
        print(_memory_line(args, said), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # (break88 F6: a 42-line traceback where train prints one line)
        print("fxprune demo: interrupted; it writes no file", file=sys.stderr)
        return 130


def _memory_line(args: argparse.Namespace, said: str) -> str:
    return (f"fxprune demo: error: {args.model} at {args.size}x{args.size} ran out of memory "
            f"({said}); try a smaller --size (e.g. 224)")


def _run(args: argparse.Namespace) -> int:
    import torchvision

    import fxprune
    from .summary import count_flops

    if not 0 < args.fraction < 1:  # (break102 F3: 0 pruned nothing, and said so as a warning)
        raise _Refused(f"fxprune demo: error: --fraction must be in (0, 1), the share of each "
                       f"group's channels removed, got {args.fraction}")
    if args.size < 1:
        raise _Refused(f"fxprune demo: error: --size must be a positive number of pixels, got "
                       f"{args.size}")
    # classification models only: detection/segmentation builders download backbone weights
    names = torchvision.models.list_models(module=torchvision.models)
    if args.model not in names:
        raise _Refused(f"fxprune demo: error: --model {args.model!r} is not a torchvision "
                       f"classification model; choose one of {', '.join(names[:6])}, ... "
                       "(torchvision.models.list_models(module=torchvision.models))")
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None).eval()
    x = torch.randn(1, 3, args.size, args.size)
    started = time.perf_counter()
    try:
        pm = fxprune.prepare(model, (x,))
    except fxprune.ExampleInputsError as e:  # e.g. an input too small for the model's downsampling
        # --size is the only input the user chose: say that in one line, not prepare's report
        cause = e.__cause__ or e
        said = out_of_memory(cause)
        if said is not None:  # (review189 R1: prepare is where a large --size runs out)
            raise _Refused(_memory_line(args, said)) from None
        first = (str(cause).strip().splitlines() or [""])[0][:200]
        raise _Refused(f"fxprune demo: error: {args.model} does not run on a "
                       f"{args.size}x{args.size} input ({type(cause).__name__}: {first}); try "
                       f"--size {trained_size(args.model, model)}") from None
    except fxprune.FxPruneError as e:
        raise _Refused(f"fxprune demo: error: {args.model} at {args.size}x{args.size}: {e}") from None
    prepared_s = time.perf_counter() - started
    prune_by_magnitude(pm, args.fraction)
    fxprune.summary(pm, all_groups=args.all_groups)
    started = time.perf_counter()
    small = fxprune.finalize(pm)  # checks the pruned output against the masked model's
    finalize_s = time.perf_counter() - started
    dense, pruned = count_flops(model, (x,)), count_flops(small, (x,))
    print(f"\n{args.model} at {args.size}x{args.size}: prepare {prepared_s:.2f} s, finalize "
          f"(with its exactness check) {finalize_s:.2f} s; FLOPs x{dense / pruned:.2f} fewer")
    return 0
