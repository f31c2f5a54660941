"""Where a masked training step spends its time: torch.profiler over plain and half-masked steps.

    python benchmarks/profile_step.py --model convnext_tiny --out OUT   # CUDA, about a minute
    python benchmarks/profile_step.py --device cpu --smoke --out OUT    # tiny, seconds

bench_gpu.py section (a) measured convnext_tiny's half-masked bf16 step at 1.62x the plain
one on an H200 (resnet50: 1.06x). This script says which ops make the difference: for the
plain model and the prepared one with half of every group masked (the mid-ramp worst case),
it profiles a few training steps (bf16 autocast on CUDA, SGD) and writes the top ops by
device time (self time, summed over the profiled steps) of each to ``OUT.txt``, with the
machine and versions; an existing ``OUT.txt`` is replaced only if this script wrote it (its
first line), refused otherwise.
A diagnosis, not a benchmark: its figures are the profiler's, with its overhead.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (at_least, device_problem, first_line_of, given_options,  # noqa: E402
                          refuse_unwritable, run_script)
from bench_gpu import half_masked_setup  # noqa: E402

from fxprune.deploy import torch_backend as tb  # noqa: E402


# the first line of every OUT.txt it writes: it replaces only such a file (break180 F9: a rerun
# into its own earlier output was refused, unlike every other benchmark's --out)
HEADER = "# benchmarks/profile_step.py: torch.profiler's top ops of a plain and a half-masked step"


#: the first line an earlier version of this script wrote (no header line yet), as the shipped
#: benchmarks/results/profile_convnext_h200.txt has it (break184 F2: called not its output)
_OLDER_FIRST_LINE = re.compile(r"\S+, batch \d+ x 3x\d+x\d+, \d+ profiled steps, device ")


def own_output(path: Path) -> bool:
    """Whether ``path`` is an ``OUT.txt`` this script wrote: its first line is :data:`HEADER`,
    or the first line an earlier version wrote."""
    first = first_line_of(path)
    return first is not None and (first == HEADER or bool(_OLDER_FIRST_LINE.match(first)))


def profile(model, x, y, device, steps: int, amp: bool):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up: cuDNN's algorithm search, allocator
        step()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return prof


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="convnext_tiny")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="a tiny model and input (CPU check)")
    parser.add_argument("--batch", type=at_least(1), default=64)
    parser.add_argument("--steps", type=at_least(1), default=5)
    parser.add_argument("--rows", type=at_least(1), default=25)
    parser.add_argument("--out", type=Path, required=True, help="writes OUT.txt")
    args = parser.parse_args(argv)
    if args.out.suffix == ".txt":  # OUT, or OUT.txt as written (break80 F9: OUT.txt.txt)
        args.out = args.out.with_suffix("")
    if Path(f"{args.out}.txt").exists() and not own_output(Path(f"{args.out}.txt")):
        # a user's file (break61 #8: replaced silently); its own earlier output is replaced
        parser.error(f"{args.out}.txt exists and is not this script's output; give another "
                     "--out (or move the file away)")
    refuse_unwritable(args.out, (".txt",))  # before the work (break167 F3)
    given = given_options(parser, argv)  # (break167 F7: --model=resnet50 was not seen)
    if args.smoke and {"model", "batch"} & given:
        parser.error("--smoke profiles a tiny ConvNeXt at batch 4 on the CPU; drop "
                     f"--{'model' if 'model' in given else 'batch'} or --smoke")
    try:  # one line, not a traceback (break80 F9)
        device = tb.resolve_device(args.device)
    except Exception as e:  # noqa: BLE001 - no CUDA here, or a device name torch does not know
        parser.error(f"--device {args.device}: {device_problem(e)}; `--device cpu --smoke` "
                     "checks the script without a GPU")
    name = "tiny_convnext" if args.smoke else args.model
    batch, size = (4, 32) if args.smoke else (args.batch, 224)
    try:
        model, pm, x, y = half_masked_setup(name, batch, size, device)
    except ValueError as e:  # an unknown --model
        parser.error(f"--model {args.model}: {e}")
    if device.type == "cuda":
        pm = pm.to(memory_format=torch.channels_last)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    from fxprune.deploy.common import cpu_name

    started = time.perf_counter()
    lines = [HEADER, f"{name}, batch {batch} x 3x{size}x{size}, {args.steps} profiled steps, device "
             f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, CPU "
             f"{cpu_name()} ({torch.get_num_threads()} torch threads), torch {torch.__version__}; "
             f"sorted by {sort_by}", ""]
    for label, m in (("plain", model), ("half masked (prepared)", pm)):
        prof = profile(m, x, y, device, args.steps, amp=device.type == "cuda")
        lines += [f"== {label}", prof.key_averages().table(sort_by=sort_by, row_limit=args.rows), ""]
    lines.append(f"{time.perf_counter() - started:.1f} s in all")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.txt").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
