"""``fxprune deploy MODEL --out DIR``: export ONNX, build and time an engine, compare with dense.

MODEL and DENSE_MODEL are ONNX files, or files written by ``torch.save(module)``: those are
pickles, and unpickling runs code the file carries, so they load only with
``--trust-model-file``. The input shape comes from ``--input-shape``, from the module's
``fxprune_input_shape`` attribute (set before saving), or from the ONNX file's input.
"""
from __future__ import annotations

import argparse
import sys

from .common import DeployError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="an ONNX file (model.onnx: runs no code), or a module saved with "
                        "torch.save(module, path) (a pickle: needs --trust-model-file)")
    p.add_argument("--trust-model-file", action="store_true",
                   help="allow loading pickled .pt modules (MODEL and --compare): unpickling "
                        "runs any code the file carries, so only for files you wrote or trust")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for model.onnx (and dense.onnx with --compare), the engines "
                        "and report.json")
    p.add_argument("--backend", choices=("auto", "tensorrt", "torch", "onnxruntime"),
                   default="auto",
                   help="auto: TensorRT when it imports and a CUDA GPU exists, else PyTorch on "
                        "the CUDA GPU (CUDA graphs, cuDNN), else ONNX Runtime on the CPU")
    p.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="fp16: TensorRT 10 builds with its FP16 flag from an fp32 ONNX; "
                        "TensorRT 11 (strongly typed) and ONNX Runtime get an fp16 ONNX; "
                        "bf16: torch backend only")
    p.add_argument("--device", default=None,
                   help="torch backend: cuda, cuda:1 or cpu (default: CUDA when available)")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size to deploy at (replaces the input shape's first dim)")
    p.add_argument("--input-shape", default=None, metavar="N,C,H,W",
                   help="input shape, batch first, e.g. 1,3,224,224 (required unless the model "
                        "file records fxprune_input_shape)")
    p.add_argument("--compare", default=None, metavar="DENSE_MODEL",
                   help="dense model (ONNX, or torch.save file with --trust-model-file) to time "
                        "interleaved with MODEL; its export goes to DIR/dense.onnx")
    p.add_argument("--threads", type=int, default=2,
                   help="CPU threads: ONNX Runtime intra-op, or torch on the CPU (default 2)")
    p.add_argument("--iters", type=int, default=100, help="timed runs per model (default 100)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs first (default 10)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="largest batch the TensorRT engine accepts (default: --batch)")
    p.add_argument("--workspace-mib", type=int, default=None,
                   help="TensorRT builder workspace in MiB (default 1024)")
    p.add_argument("--atol", type=float, default=None,
                   help="ONNX vs PyTorch check: absolute floor of the tolerance (default 1e-6 fp32, 1e-4 fp16)")
    p.add_argument("--rtol", type=float, default=None,
                   help="ONNX vs PyTorch check: tolerance relative to max|output| "
                        "(default 1e-3 fp32, 2e-2 fp16)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from fxprune.run_io import outlive_reader, stop_on_sigterm

    # (break66 #3: a kill mid-export left a truncated model.onnx the next deploy refused;
    # break158 F1: a reader of its output that went away stopped it before report.json)
    with stop_on_sigterm(), outlive_reader():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import time

    from .pipeline import deploy

    started_ns = time.time_ns()  # a report.json written since is this deploy's

    try:
        if args.workspace_mib is not None and args.workspace_mib < 1:
            raise DeployError(f"--workspace-mib must be an integer >= 1, got {args.workspace_mib}")
        mib = args.workspace_mib
        deploy(args.model, args.out, backend=args.backend, precision=args.precision,
               input_shape=args.input_shape, batch=args.batch, compare=args.compare,
               threads=args.threads, iters=args.iters, warmup=args.warmup, opset=args.opset,
               max_batch=args.max_batch, workspace=None if mib is None else mib * 1024 * 1024,
               atol=args.atol, rtol=args.rtol, progress=not args.no_progress,
               trust_model_file=args.trust_model_file, device=args.device)
    except (DeployError, OSError) as e:  # the message alone: it says what to do
        print(f"fxprune deploy: error: {_file_system_said(e, args.out) or e}", file=sys.stderr)
        return 2  # as every fxprune command's errors (argparse's usage errors too)
    except KeyboardInterrupt:
        print(f"fxprune deploy: interrupted; {_left_behind(args.out, started_ns)}; run it again "
              "to time the model", file=sys.stderr)
        return 130
    return 0


def _file_system_said(exc: BaseException, out) -> str | None:
    """A full disk, a quota, a read-only place or a permission refused in ``out`` said with
    the way out (break206 F7: the system's words alone, "[Errno 30] Read-only file system:
    '.../report.json'"); None for any other error (review208 R3: an input it could not read
    was "writing" it)."""
    import errno
    import os

    from .common import NO_WRITE_ERRNOS

    if not isinstance(exc, OSError):
        return None
    where = exc.filename if isinstance(exc.filename, (str, os.PathLike)) else out
    folder = os.path.realpath(os.path.expanduser(os.fspath(out)))
    real = os.path.realpath(os.fspath(where))
    inside = real == folder or real.startswith(folder + os.sep)
    if exc.errno not in NO_WRITE_ERRNOS and not (exc.errno in (errno.EACCES, errno.EPERM)
                                                 and inside):
        return None
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return (f"writing {where}: {(exc.strerror or '').lower() or 'cannot write'}"
            + ("; free space there, then deploy again" if full else
               "; choose an --out on a file system that takes files this large"
               if exc.errno == errno.EFBIG else "; choose an --out you can write"))


def _left_behind(out, started_ns: int = 0) -> str:
    """What an interrupted deploy left in ``out``, as it is (break158 F8: the fixed text spoke
    of checked ONNX files in a folder not yet made)."""
    from pathlib import Path

    folder = Path(out).expanduser()
    try:
        onnx = sorted(p.name for p in folder.glob("*.onnx")) if folder.is_dir() else []
    except OSError:
        onnx = []
    if not folder.is_dir():
        return f"{out} was not created"
    report = folder / "report.json"
    if report.is_file() and report.stat().st_mtime_ns >= started_ns:  # written whole, since
        # this deploy started (break206 F1: "no report.json" beside one; review208 R4: the
        # last deploy's, stopped before it was removed, was called this one's)
        return f"{out} holds this deploy's report.json, written before it stopped"
    if not onnx:
        return f"{out} holds no file of this deploy"
    return (f"{out} holds no report.json of this deploy (the ONNX files there, "
            f"{', '.join(onnx)}, stay)")
