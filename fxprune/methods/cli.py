"""``fxprune methods``: the pruning methods a recipe's ``prune.method`` may name, read from the
registry (:mod:`fxprune.methods.registration`), with each one's arguments and defaults."""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="*", help="show these methods' arguments (all listed, "
                                                "without them, by summary)")


def run(args: argparse.Namespace) -> int:
    from ..recipe_config import CONTEXT_ARGS, TRAINER_GIVES
    from .base import method_parameters
    from .registration import RESERVED_NAMES, get_method, method_names

    detailed = bool(args.name)  # `fxprune methods smcp ccp` (break52: one name was taken)
    names = list(args.name) or method_names()
    width = max(14, *(len(n) + 1 for n in names))
    for name in names:
        if name in RESERVED_NAMES:  # valid in a recipe (break37 #9), but no registered method
            print(f"{name:{width}} no pruning: train the dense model (prune.method: none); "
                  "no arguments")
            continue
        try:
            entry = get_method(name)
            cls = entry.cls if detailed else None  # the listing imports nothing
        except (ValueError, ImportError) as exc:  # unknown name, or a plug-in that fails to load
            print(f"fxprune methods: error: {exc}", file=sys.stderr)
            return 2
        fixed = "".join(f" {k}={v!r}" for k, v in entry.defaults.items())
        print(f"{name:{width}} {entry.summary}" + (f" [{fixed.strip()}]" if fixed else ""))
        if detailed:
            try:  # (break105 F3: oneshot's SMCP arguments, which it forwards, were left out)
                params = method_parameters(cls)
            except (TypeError, ValueError):  # a callable without a readable signature
                print("    (arguments not introspectable)")
                continue
            sets_itself = getattr(cls, "sets_itself", ())
            for p in list(params.values())[1:]:
                if p.kind == p.VAR_KEYWORD:
                    base = next((b.__name__ for b in getattr(cls, "__mro__", ())[1:]
                                 if "__init__" in vars(b) and b is not object), None)
                    print(f"    **{p.name} (other keywords, passed on as they are"
                          + (f", e.g. to {base}'s own arguments)" if base else ")"))
                if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in sets_itself:
                    continue
                default = entry.defaults.get(p.name, p.default)
                said = ""
                if p.name == "target" and default is None and hasattr(cls, "default_target"):
                    said = f"  ({cls.default_target:g} of dense unless a fixed fraction is given)"
                elif p.name == "schedule":  # built from the schedule keys (break57 #9)
                    said = "  (Python API only: a recipe sets warmup/ramp/update_every/freeze_after)"
                elif p.name in CONTEXT_ARGS:  # break56 #10: listed, then refused in a recipe
                    # (break211 F4: the trainer passes no scaler and no loss_reduction)
                    said = (f"  (Python API only: fxprune train gives it{TRAINER_GIVES[p.name]}, "
                            "not a recipe key)" if p.name in TRAINER_GIVES
                            else "  (Python API only, not a recipe key)")
                print(f"    {p.name} = {default!r}{said}")
    return 0
