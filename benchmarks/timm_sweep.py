"""Sweep timm: the smallest model of every family (timm module), no pretrained weights.

For each: trace + prepare at a small resolution, mask half of every prunable group at random,
finalize, and compare the pruned model's output with the masked model's. Prints one line per
model and writes a JSON file (``--out PATH``: PATH.json; the slow test tests/test_timm.py
keeps its own table of these models, written from such a sweep).

    python benchmarks/timm_sweep.py --out /tmp/timm_sweep
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import signal
import sys
import time
from pathlib import Path

import torch

from fxprune.deploy.common import cpu_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import at_least, changed_options, results_stem, run_script  # noqa: E402

# Name parts that mark a family's small variants, smallest first.
PREFERENCE = ["test_", "atto", "femto", "pico", "nano", "xxs", "_xs", "tiny", "mini", "_s0", "_b0", "_m0",
              "_s1", "_t", "small", "_s", "050", "_b1", "18", "26", "34", "_100", "_002", "b_224"]


def pick(names: list[str]) -> str:
    def score(n):
        for i, key in enumerate(PREFERENCE):
            # "mini" is a size, "minimal" a variant (tf_mobilenetv3_large_minimal_100)
            if key in n and not (key == "mini" and "minimal" in n):
                return (i, len(n), n)
        return (len(PREFERENCE), len(n), n)
    return min(names, key=score)


def create(name: str, size: int):
    import timm
    try:  # transformers take the resolution at construction
        model = timm.create_model(name, pretrained=False, img_size=size)
    except TypeError:
        model = timm.create_model(name, pretrained=False)
    return model.eval()


def run_one(name: str, size: int) -> dict:
    import fxprune
    from fxprune.compare import max_relative_error, run_eval
    from fxprune.summary import count_flops
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import random_masks

    torch.manual_seed(0)
    model = create(name, size)
    x = torch.randn(1, 3, size, size)
    out = {"model": name, "size": size}
    t0 = time.perf_counter()
    pm = fxprune.prepare(model, (x,))
    groups = fxprune.channel_groups(pm)
    out["groups"] = len(groups)
    out["prunable"] = sum(g.prunable for g in groups)
    reasons = {}
    for g in groups:
        if not g.prunable:
            r = g.reason.split(" at `")[0]
            reasons[r] = reasons.get(r, 0) + 1
    out["kept_reasons"] = reasons
    if out["prunable"]:
        dense = count_flops(pm, (x,))  # (before any mask is 0: a masked model counts as dense)
        random_masks(pm, 0.5, seed=0)
        small = fxprune.finalize(pm, rtol=1e-3)
        out["error"] = max_relative_error(run_eval(pm, (x,)), run_eval(small, (x,)))
        out["flops_kept"] = count_flops(small, (x,)) / max(dense, 1)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


class _Timeout(Exception):
    pass


def main():
    import timm
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None,
                   help="results path (.json; default benchmarks/results/timm_sweep.json)")
    p.add_argument("--size", type=at_least(1), default=64)
    p.add_argument("--timeout", type=at_least(1), default=120)
    p.add_argument("--only", default="", help="regex of family names")
    args = p.parse_args()
    if args.only and args.out is None:  # (break167 F13: a one-family run became the results)
        p.error("--only sweeps some families, and benchmarks/results/timm_sweep.json is the whole "
                "sweep's: give --out PATH too")
    try:
        only = re.compile(args.only)
    except re.error as exc:  # (break167 F8: a traceback)
        p.error(f"--only {args.only!r} is not a regular expression: {exc}")
    families = [f for f in timm.list_modules() if only.search(f)]
    if not families:  # (break167 F13: an empty results file, exit 0)
        p.error(f"--only {args.only!r} matches no timm model family (timm.list_modules())")
    # replaces only its own results (break56 #6: a user's JSON at --out was replaced)
    out = results_stem("timm_sweep", args.out, changed=changed_options(p, args, ignore=("timeout",)),
                       keys=("machine", "processor", "results"), files=(".json",))
    torch.set_num_threads(1)
    results, started = [], time.perf_counter()

    def alarm(*_):
        raise _Timeout()
    signal.signal(signal.SIGALRM, alarm)
    for family in families:
        names = timm.list_models(module=family)
        if not names:
            continue
        name = pick(names)
        signal.alarm(args.timeout)
        try:
            try:
                r = run_one(name, args.size)
            except _Timeout:
                raise
            except Exception as e:  # noqa: BLE001 - a model at 64 px may need its own size
                if "trace" in type(e).__name__.lower() or args.size >= 224:
                    raise
                r = run_one(name, 224)
                r["note"] = f"at {args.size}: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        except _Timeout:
            r = {"model": name, "failure": f"over {args.timeout}s"}
        except Exception as e:  # noqa: BLE001 - reported per model
            r = {"model": name, "failure": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        finally:
            signal.alarm(0)
        r["family"] = family
        results.append(r)
        print(json.dumps(r), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps({
        "machine": platform.platform(), "processor": cpu_name(), "threads": 1,
        "device": "cpu", "batch": 1, "size": args.size, "torch": torch.__version__,
        "timm": timm.__version__, "runtime_s": round(time.perf_counter() - started, 1),
        "results": results}, indent=1))


if __name__ == "__main__":
    raise SystemExit(run_script(main))
