"""``fxprune.deploy.deploy``: export, verify, build and time a model (and a dense one to compare).

Files written to ``out_dir``: ``model.onnx`` (and ``dense.onnx``), ``model.engine`` (and
``dense.engine``) with the TensorRT backend, and ``report.json``. The ``torch`` backend times the
PyTorch modules themselves (CUDA graphs + cuDNN on a GPU, eager on the CPU; see
:mod:`fxprune.deploy.torch_backend`); it still exports and checks the ONNX file so every
backend's report has the same fields.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from fxprune.run_io import (atomic_write_text, file_record, file_sha256, lock_out_folder,
                            matches_file_record, release_out_folder)

from . import onnxruntime_backend as ortb
from . import tensorrt_backend as trtb
from . import torch_backend as tb
from .common import (DeployArgumentError, DeployError, check_tolerance, cpu_busy, cpu_load,
                     cpu_name, file_in_the_way, load_said, prepared_inside, silent)
from .model_io import (check_input_fits, check_onnx_input_fits, check_runs_at, eval_copy,
                       flat_outputs, is_onnx, load_model, not_a_file, onnx_input_shape, read_onnx,
                       resolve_input_shape)
from .onnx_export import DEFAULT_OPSET, check_opset, example_input, export_model, verify_onnx
from .report import build_report, format_table, model_entry, write_report

BACKENDS = ("auto", "tensorrt", "torch", "onnxruntime")
PRECISIONS = ("fp32", "fp16", "bf16")


def choose_backend(backend: str, log: Callable[[str], None] = print) -> str:
    """Resolve ``auto``: TensorRT when it imports and a CUDA device exists, else PyTorch on the
    CUDA device, else ONNX Runtime on the CPU; says why."""
    if backend not in BACKENDS:
        raise DeployError(f"backend {backend!r} is not one of {BACKENDS}")
    if backend == "tensorrt":
        trtb.require_tensorrt()
    if backend != "auto":
        return backend
    ok, why = trtb.tensorrt_status()
    if ok:
        log(f"backend auto: using TensorRT {trtb.version()} on {trtb.gpu_name()}")
        return "tensorrt"
    if torch.cuda.is_available():
        log(f"backend auto: using PyTorch (CUDA graphs, cuDNN) on {torch.cuda.get_device_name()} "
            f"(TensorRT not usable: {why})")
        return "torch"
    log(f"backend auto: using ONNX Runtime on the CPU ({why}; no CUDA device for the torch "
        "backend either)")
    return "onnxruntime"


def _check_counts(**counts) -> None:
    """Counts that must be positive (warmup: non-negative), checked before any work."""
    for name, value in counts.items():
        if value is None and name in ("batch", "max_batch", "workspace"):
            continue
        low = 0 if name == "warmup" else 1
        # (numpy ints too: break179 F8)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            # both names, as atol (--atol): the Python argument and the flag (break174 F9)
            raise DeployArgumentError(f"{_both(name)} must be an integer >= {low}, got {value!r}")


def _both(name: str) -> str:
    """A deploy() argument named as in Python and as its command-line flag."""
    if name == "workspace":  # bytes in Python, MiB on the command line
        return "workspace (bytes; --workspace-mib in MiB)"
    return f"{name} (--{name.replace('_', '-')})"


def _check_utf8_path(what: str, path, *, onnx_file: bool = True) -> None:
    """DeployError for a path ONNX opens (``onnx_file``: a model path naming an ``.onnx``
    file; else a folder deploy writes its ONNX files in) whose name is not UTF-8 (a Latin-1
    file name: Python holds its bytes as surrogates): ONNX's checker and ONNX Runtime take
    UTF-8 paths only, and refused it in four lines of pybind11 after a second export "at
    batch 1" (break187 F9). A ``.pt`` path, which torch opens, or a module is not checked."""
    if not isinstance(path, (str, os.PathLike)):
        return
    name = os.fspath(path)
    if onnx_file and not name.lower().endswith(".onnx"):
        return
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise DeployError(f"{what} {name!r} is not a UTF-8 path, and ONNX and ONNX Runtime open "
                          "UTF-8 paths only: rename it") from None


def deploy(model: nn.Module | str | os.PathLike, out_dir: str | os.PathLike, *,
           backend: str = "auto", precision: str = "fp32", input_shape=None,
           batch: int | None = None, compare: nn.Module | str | os.PathLike | None = None,
           threads: int = 2, iters: int = 100, warmup: int = 10, opset: int = DEFAULT_OPSET,
           max_batch: int | None = None, workspace: int | None = None,
           atol: float | None = None, rtol: float | None = None, progress: bool = True,
           trust_model_file: bool = False, device: str | None = None,
           log: Callable[[str], None] = print) -> dict:
    """Deploy ``model`` (a module or a ``torch.save`` file) and return the report dict.

    ``input_shape`` is batch first ("1,3,224,224" or a tuple); without it the module's
    ``fxprune_input_shape`` attribute is used (see :mod:`fxprune.deploy.model_io`); ``batch``
    replaces its first dim. ``compare`` is the dense model, timed interleaved with ``model``.
    ``max_batch`` widens the TensorRT engine's batch range (default: the batch itself);
    ``workspace`` is the TensorRT builder's workspace in bytes (default 1 GiB). Both apply to the
    TensorRT backend only and are refused with another one.
    ``atol``/``rtol`` bound the ONNX-vs-PyTorch check (None: 1e-6/1e-3 for an fp32 export,
    1e-4/2e-2 for fp16: ``onnx_export.TOLERANCES``). ``log`` takes each progress line
    (None: none are said). ``device`` is where the torch backend
    times ("cuda", "cpu"; default: CUDA when there is one). ``precision="bf16"`` is for the
    torch backend only (its ONNX file is then exported and checked in fp32). Nothing passed in
    is modified.

    Files: ``*.onnx`` files are used as they are (no code runs; their outputs are not checked
    against PyTorch, there is no PyTorch model). Pickled ``torch.save`` modules are loaded only
    with ``trust_model_file=True``: unpickling runs code the file carries.
    ``out_dir`` must be a folder (created if missing); files there that a deploy did not write
    are never replaced (the folder's marker records what deploy wrote).

    Raises:
        DeployError: every refusal, each one line naming the way out: a bad option or count,
            a backend or precision this machine lacks, an unknown input shape, a model file
            that is damaged or not trusted (``trust_model_file``), an ONNX export or check that
            fails, an ``out_dir`` that cannot be written, memory running out.
    """
    if log is not None and not callable(log):  # (break196 F5: "'int' is not callable" later)
        raise DeployError(f"log takes each progress line (a function such as print) or None, "
                          f"got {type(log).__name__}")
    if precision not in PRECISIONS:
        raise DeployError(f"precision {precision!r} is not one of {PRECISIONS}")
    _check_counts(threads=threads, iters=iters, warmup=warmup, batch=batch, max_batch=max_batch,
                  workspace=workspace)
    # plain ints from here: a numpy one would not be written to report.json (break179 F8)
    threads, iters, warmup = int(threads), int(iters), int(warmup)
    batch, max_batch, workspace = (None if v is None else int(v)
                                   for v in (batch, max_batch, workspace))
    if log is None:  # silent (break179 F8: a TypeError)
        log = silent
    for name, value in (("atol (--atol)", atol), ("rtol (--rtol)", rtol)):
        check_tolerance(name, value)
    for name, given in (("model", model), ("compare (--compare)", compare)):
        optional = given is None and name != "model"
        if not optional and not isinstance(given, (nn.Module, str, os.PathLike)):
            # (break111 F8: deploy(None, out) was a bare KeyError: 'model')
            raise DeployError(f"deploy's {name} is an nn.Module or the path of a .pt or .onnx "
                              f"file, got {type(given).__name__}")
    check_opset(opset, "--opset")
    opset = int(opset)  # a numpy int too
    atol, rtol = (None if v is None else float(v) for v in (atol, rtol))
    if not isinstance(out_dir, (str, os.PathLike)):  # (break187 F5: a bare TypeError)
        raise DeployError(f"deploy's out_dir is the folder to write model.onnx and report.json "
                          f"to (a str or path), got {type(out_dir).__name__}")
    out_dir = os.path.expanduser(os.fspath(out_dir))
    _check_utf8_path("the model file", model)
    _check_utf8_path("--compare", compare)
    _check_utf8_path("--out", out_dir, onnx_file=False)
    if not out_dir.strip():  # (break66 #4: a bare errno message)
        raise DeployError("--out is empty: give the folder to write model.onnx and report.json to")
    if blocked := file_in_the_way(os.path.join(out_dir, "report.json")):  # (break129 F7: a
        # bare "[Errno 20] Not a directory" for --out FILE/sub)
        raise DeployError(f"--out {out_dir}: {blocked} is a file, not a folder; choose another --out")
    if os.path.isdir(out_dir):
        # in use is said before the folder's files are judged: a running deploy's fresh
        # model.onnx, not yet in its marker, was called not deploy's, "delete it" (break69 F1)
        _lock(out_dir)
        release_out_folder(Path(out_dir))
    _check_out_dir(out_dir, model=model, dense=compare)
    _check_not_overwritten(out_dir, model=model, dense=compare)
    if device is not None:
        try:
            torch.device(device)
        except (RuntimeError, TypeError):
            raise DeployError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1)") from None
    # why auto chose this backend is said once the inputs are checked: before an error about
    # a missing model file it was noise (break37 #9)
    chosen: list[str] = []
    backend = choose_backend(backend, chosen.append)
    if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
        # said first: the advice to pass --backend torch led to this error next (break199 F6),
        # and --device cpu, with ONNX Runtime, to "applies to the torch backend" (review202 R6)
        way = "pass --device cpu" if backend == "torch" else "drop --device (ONNX Runtime runs on the CPU)"
        raise DeployError(f"--device {device}: torch sees no CUDA device here; {way} or run on a "
                          "machine with a GPU")
    if device is not None and backend != "torch":
        raise DeployError(f"--device {device} applies to the torch backend, but the {backend} "
                          "backend was chosen; drop --device or pass --backend torch")
    if backend == "torch" and device is not None and torch.device(device).type not in ("cpu", "cuda"):
        # before the export, not after it (break66 #4: --device mps)
        raise DeployError(f"--device {device}: the torch backend times on 'cpu' or 'cuda', not "
                          f"{torch.device(device).type!r}")
    tensorrt_only = {_both("max_batch"): max_batch, _both("workspace"): workspace}
    given_trt = [flag for flag, value in tensorrt_only.items() if value is not None]
    if given_trt and backend != "tensorrt":
        raise DeployError(f"{' and '.join(given_trt)} appl{'y' if len(given_trt) > 1 else 'ies'} "
                          f"to the tensorrt backend, but the {backend} backend was chosen; drop "
                          f"{'them' if len(given_trt) > 1 else 'it'} or pass backend='tensorrt' "
                          "(--backend tensorrt)")
    if precision == "bf16" and backend != "torch":
        raise DeployError(f"precision bf16 is timed by the torch backend only, not {backend}; "
                          "pass --backend torch or --precision fp16")
    models: dict = {}
    for name, given in (("model", model), ("dense", compare)):
        if given is None:
            continue
        if isinstance(given, (str, os.PathLike)):  # a quoted '~/run/m.pt' too, as train and plot
            given = os.path.expanduser(os.fspath(given))
        if is_onnx(given):
            path = os.fspath(given)
            if not os.path.isfile(path):
                raise not_a_file(path, "model" if name == "model" else "--compare")
            if backend == "torch":
                raise DeployError(f"{path} is an ONNX file and the torch backend times PyTorch "
                                  "modules; pass --backend onnxruntime (or tensorrt), or the "
                                  "torch.save file of the module")
            models[name] = (None, path)
        else:
            models[name] = load_model(given, trust_model_file=trust_model_file,
                                      role="model" if name == "model" else "--compare")
    for name, (mod, lbl) in models.items():
        inside = prepared_inside(mod) if mod is not None else None
        if inside is not None:
            where = lbl if inside == "the model" else f"{lbl} holds {inside}, which"
            warnings.warn(f"{where} is a model fxprune.prepare returned, not finalized: it runs at "
                          "full width with its masks; deploy fxprune.finalize(model) to time the "
                          "pruned model", RuntimeWarning, stacklevel=2)
    same = _same_model(model, compare)
    if same:  # a typo in --compare, most likely; its "speedup" is the timing's noise
        warnings.warn(f"--compare is {same} as MODEL: the speedup measures timing noise only; "
                      "pass the dense model to --compare", RuntimeWarning, stacklevel=2)
    module, label = models["model"]
    if module is None:
        shape = onnx_input_shape(label, input_shape, batch)
    else:
        shape = resolve_input_shape(module, input_shape, batch)
    if max_batch is not None and max_batch < shape[0]:
        raise DeployError(f"--max-batch {max_batch} is below the batch deployed at ({shape[0]}); "
                          f"pass --max-batch >= {shape[0]} or drop it")
    trt = trtb.require_tensorrt() if backend == "tensorrt" else None
    onnx_precision = trtb.onnx_precision_for(trt, precision) if trt else precision
    if onnx_precision == "bf16":
        onnx_precision = "fp32"
    where = tb.resolve_device(device) if backend == "torch" else None  # the torch backend's device
    # every check that can refuse, before anything is written (break179 F1, F5: a model.onnx
    # left without a report)
    # TensorRT 10 builds fp16 from an fp32 file (FP16 flag) and from an fp16 one (break37 #1)
    accepted = (onnx_precision, precision) if trt else (onnx_precision,)
    given = {}  # a given ONNX file's graph and precision, read and checked once
    for name, (mod, lbl) in models.items():
        if mod is not None:
            check_input_fits(mod, shape, lbl)
            check_runs_at(mod, shape, lbl, onnx_precision, torch.device("cpu"), "exported")
            if where is not None and (precision, where.type) != (onnx_precision, "cpu"):
                check_runs_at(mod, shape, lbl, precision, where, "timed")  # (not the same again)
        else:
            check_onnx_input_fits(lbl, shape)
            given[name] = _given_precision(lbl, onnx_precision, accepted)
    for line in chosen:
        log(line)
    created = _missing_folders(out_dir)  # removed again if nothing is written (break179 F7)
    os.makedirs(out_dir, exist_ok=True)
    _lock(out_dir)  # (break66 #2: two deploys into one folder paired one's report with the other's file)
    marker = os.path.join(out_dir, DEPLOY_MARKER)
    try:
        _check_out_dir(out_dir, model=model, dense=compare)  # again, under the lock
        had_marker = os.path.exists(marker)
        # The last deploy's report describes the files about to be replaced: removed first,
        # so that a deploy that fails or is stopped leaves no report of other files (break66
        # #1: a failed re-deploy's model.onnx sat beside a report of another model's speedup)
        report_path = os.path.join(out_dir, "report.json")
        if os.path.isfile(report_path):
            os.remove(report_path)
        # and the files it described that this deploy does not write again (a --compare's
        # dense.onnx, a TensorRT deploy's engines) stayed beside a report not of them (break77
        # F6): deploy's own, unchanged (checked above), and not an input of this deploy
        inputs = {os.path.realpath(os.path.expanduser(os.fspath(v))) for v in (model, compare)
                  if isinstance(v, (str, os.PathLike))}
        inputs |= {path + ".data" for path in inputs}  # an input's external weights (break82 F1)
        for name in DEPLOY_FILES:
            path = os.path.join(out_dir, name)
            if os.path.isfile(path) and os.path.realpath(path) not in inputs:
                os.remove(path)
        try:
            return _deploy_into(out_dir, models, shape, backend=backend, precision=precision,
                                trt=trt, onnx_precision=onnx_precision, where=where,
                                given=given,
                                model=model, compare=compare, threads=threads, iters=iters,
                                warmup=warmup, opset=opset, max_batch=max_batch,
                                workspace=workspace, atol=atol, rtol=rtol, progress=progress,
                                log=log, itself=same)
        finally:
            # every file of deploy's names there now is deploy's: the check above refused others
            written = _record_written(out_dir)
            if written or had_marker:  # (whole or not at all: break206 F1, a cut one was
                # "not written by fxprune deploy", a way out that could not work)
                atomic_write_text(Path(marker), json.dumps({"fxprune_deploy": 1,
                                                            "written": written}, indent=1))
            elif created and not os.listdir(out_dir):  # failed before writing anything
                for folder in created:  # the innermost first; one in use since stays
                    try:
                        os.rmdir(folder)
                    except OSError:
                        break
    finally:
        release_out_folder(Path(out_dir))


def _missing_folders(out_dir: str) -> list[str]:
    """The folders ``os.makedirs(out_dir)`` would create, the innermost first."""
    missing, folder = [], os.path.abspath(out_dir)
    while not os.path.isdir(folder) and folder != os.path.dirname(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing


def _lock(out_dir: str) -> None:
    """Take ``out_dir``'s lock (:func:`fxprune.run_io.lock_out_folder`), or refuse in one line."""
    try:
        lock_out_folder(Path(out_dir))
    except FileExistsError:
        raise DeployError(f"--out {out_dir} is in use: another fxprune deploy or train is "
                          "writing there (it holds the folder's lock); wait for it to end, or "
                          "choose another --out") from None


def _same_model(model, compare) -> str | None:
    """How ``compare`` is ``model`` ("the same module", "the same file", "a file of the same
    content"), or None (break151 F5: a model timed against itself was blamed on FLOPs)."""
    if compare is None:
        return None
    if not isinstance(model, (str, os.PathLike)) or not isinstance(compare, (str, os.PathLike)):
        return "the same module" if model is compare else None
    a, b = (os.path.expanduser(os.fspath(p)) for p in (model, compare))
    if not (os.path.isfile(a) and os.path.isfile(b)):
        return None
    if os.path.samefile(a, b):
        return "the same file"
    if os.path.getsize(a) == os.path.getsize(b) and file_sha256(a) == file_sha256(b):
        return "a file of the same content"
    return None


def _deploy_into(out_dir, models, shape, *, backend, precision, trt, onnx_precision, where,
                 given, model, compare, threads, iters, warmup, opset, max_batch, workspace,
                 atol, rtol, progress, log, itself: str | None = None) -> dict:
    """Export, check and time ``models`` into ``out_dir`` (``deploy``'s arguments, checked;
    ``trt``: the tensorrt module, or None; ``onnx_precision``: the files' precision; ``where``:
    the torch backend's device; ``given``: each given ONNX file's graph and precision
    (:func:`_given_precision`); ``itself``: how the dense model is ``model`` again, warned of
    and recorded)."""
    onnx_infos = {}
    for name, (mod, lbl) in models.items():
        path = os.path.join(out_dir, f"{name}.onnx")
        if mod is None:
            onnx_infos[name] = _given_onnx(lbl, path, log, *given[name])
            continue
        log(f"[{name}] exporting {lbl} to {path} ({onnx_precision}, input {tuple(shape)})")
        try:
            # (the output folder's own files: deploy guards them, see _check_out_dir)
            info = export_model(mod, shape, path, precision=onnx_precision, opset=opset,
                                overwrite=True, log=log)
            info["max_abs_diff"] = verify_onnx(path, mod, shape, precision=onnx_precision,
                                               atol=atol, rtol=rtol, threads=threads)
        except BaseException:
            # a file that failed its check, or one cut short by Ctrl-C / SIGTERM, is not left
            # for the marker to vouch for (break66 #1, #3)
            for leftover in (path, path + ".data"):
                if os.path.isfile(leftover):
                    os.remove(leftover)
            raise
        info["sha256"] = file_sha256(path)  # the file checked and timed (break66 #2)
        # (a bare 1.9e-01 beside "matches" alarmed a user whose outputs were near 7e5: break98 F5)
        log(f"[{name}] ONNX Runtime matches PyTorch (max abs diff {info['max_abs_diff']:.2e}, "
            f"within atol + rtol x max|output| at {onnx_precision})")
        onnx_infos[name] = info

    engines, trt_diffs = {}, {}
    # CPU timings read the load around them: other processes' work slows the longer (dense)
    # model's runs more, and a speedup of 3.5x read 8.35x under load, unsaid (break55 #2)
    on_cpu = backend == "onnxruntime" or (where is not None and where.type == "cpu")
    loads = [cpu_load()] if on_cpu else []
    cores = loads[0][1] if loads else 0  # the cores this process may use (review131 F4)
    if on_cpu and threads > cores:  # (break129 F14: p90 13x the median, unsaid; the load
        # check cannot flag it, as it allows the timing its own threads)
        warnings.warn(f"deploy: timing with {threads} threads on {cores} usable cores: the "
                      f"threads take turns, so the latencies measure that; pass threads={cores} "
                      f"(--threads {cores}) or fewer", RuntimeWarning, stacklevel=3)
    if backend == "onnxruntime":
        log(f"timing on ONNX Runtime ({threads} threads, {warmup} warm-up + {iters} runs"
            f"{', interleaved' if len(models) > 1 else ''})")
        times = ortb.time_onnx_models({n: i["path"] for n, i in onnx_infos.items()}, shape,
                                      threads=threads, iters=iters, warmup=warmup,
                                      progress=progress)
        device, run_threads = cpu_name(), threads
    elif backend == "torch":
        log(f"timing with PyTorch on {where} ({precision}, {warmup} warm-up + {iters} runs"
            f"{', CUDA graphs' if where.type == 'cuda' else f', {threads} threads'}"
            f"{', interleaved' if len(models) > 1 else ''})")
        times = tb.time_models({n: mod for n, (mod, _) in models.items()}, shape, device=where,
                               precision=precision, threads=threads, iters=iters,
                               warmup=warmup, progress=progress)
        device, run_threads = tb.device_name(where), (threads if where.type == "cpu" else None)
    else:
        runners = {}
        for name, (mod, _) in models.items():
            engines[name] = os.path.join(out_dir, f"{name}.engine")
            log(f"[{name}] building TensorRT engine {engines[name]} ({precision}; can take "
                "minutes)")
            trtb.build_engine(onnx_infos[name]["path"], engines[name], shape, precision=precision,
                              max_batch=max_batch,
                              workspace=trtb.DEFAULT_WORKSPACE if workspace is None else workspace)
            with open(engines[name], "rb") as f:
                runners[name] = trtb.EngineRunner(trt, f.read(), shape)
            if mod is not None:
                trt_diffs[name] = _backend_diff(runners[name], mod, shape)
        log(f"timing on TensorRT ({warmup} warm-up + {iters} runs, GPU time per inference)")
        times = trtb.time_runners(runners, iters=iters, warmup=warmup, progress=progress)
        device, run_threads = trtb.gpu_name(), None

    # Sizes of both models counted the same way: module parameters, or, when either is an ONNX
    # file, both ONNX files' initializers (BatchNorm folded in; a ratio across the two would
    # compare different counts).
    from_modules = all(mod is not None for mod, _ in models.values())
    entries = {
        name: model_entry(label=lbl, params=sum(p.numel() for p in mod.parameters()) if from_modules
                          else _onnx_params(onnx_infos[name]["path"]), times_ms=times[name],
                          batch=shape[0], onnx_info=onnx_infos[name], engine=engines.get(name),
                          backend_max_abs_diff=trt_diffs.get(name),
                          flops=_flops(mod, shape) if from_modules else None)
        for name, (mod, lbl) in models.items()
    }
    on_gpu = backend == "tensorrt" or (backend == "torch" and where.type == "cuda")
    versions = {"torch": torch.__version__, "onnxruntime": ortb.version(),
                "tensorrt": trt.__version__ if trt else trtb.version(),
                # a CPU run's report named the build's CUDA as if it had run on it (break25 #13)
                "cuda": torch.version.cuda if on_gpu else None,
                "cudnn": torch.backends.cudnn.version() if on_gpu else None}
    report = build_report(backend=backend, device=device, precision=precision, input_shape=shape,
                          threads=run_threads, iters=iters, warmup=warmup, versions=versions,
                          pruned=entries["model"], dense=entries.get("dense"),
                          params_counted="module parameters" if from_modules
                          else "ONNX floating-point initializer elements")
    if itself:  # its speedup is the timing's noise: recorded, so `fxprune plot` does not
        # draw it as one (review153 F8)
        report["compare_is_model"] = itself
    if backend == "tensorrt":  # the largest batch the engines take (from 1; a fixed-batch
        # ONNX: its one batch)
        report["engine_max_batch"] = int(max_batch or shape[0])
    if on_cpu:
        loads.append(cpu_load())
        report["load_average"] = {"before": loads[0][0], "after": loads[-1][0],
                                  "cores": loads[0][1]}
        report["timed_under_load"] = cpu_busy(loads, threads)
        if report["timed_under_load"]:
            warnings.warn(f"deploy: timed while other processes shared the CPU ({load_said(loads)}): "
                          "the latencies and the speedup may be off; time again on an "
                          "idle machine", RuntimeWarning,
                          stacklevel=3)  # the caller of deploy (break179 F9)
    for name, given in (("model", model), ("dense", compare)):
        entry = report if name == "model" else report.get("dense")
        if isinstance(given, (str, os.PathLike)):  # which file was timed (fxprune plot checks it)
            entry["model_file"] = os.path.abspath(os.path.expanduser(os.fspath(given)))
            # by content: a copy of the run (fresh times) is still the run (break62 #3)
            entry["model_sha256"] = file_sha256(entry["model_file"])
        onnx = entry.get("onnx") if isinstance(entry, dict) else None
        if isinstance(onnx, dict) and isinstance(onnx.get("path"), str):
            # absolute, as model_file: relative to deploy's working folder, a moved run was
            # plotted from one folder and refused from the others (break129 F5)
            onnx["path"] = os.path.abspath(onnx["path"])
        if (isinstance(onnx, dict) and "sha256" not in onnx and isinstance(onnx.get("path"), str)
                and os.path.isfile(onnx["path"])):
            onnx["sha256"] = file_sha256(onnx["path"])  # the file given here
    path = write_report(report, out_dir)
    log(format_table(report))
    if report.get("speedup") is not None and report["speedup"] < 1 and not itself:
        log(_why_slower(models["model"][0], models.get("dense", (None,))[0], report["speedup"]))
    log(f"report written to {path}")
    return report


def _convs(module: nn.Module | None) -> dict[str, nn.Module]:
    return ({name: m for name, m in module.named_modules()
             if isinstance(m, nn.modules.conv._ConvNd)} if module is not None else {})


def _why_slower(module: nn.Module | None, dense: nn.Module | None, speedup: float) -> str:
    """A line for a pruned model slower than dense (break120 F2: mobilenet_v2 hand-masked to odd
    widths ran 0.71x at 29% of the FLOPs; deploy printed the figure without a word). Widths
    the dense model has too are not blamed (review123 #5: efficientnet's squeeze-excitation)."""
    convs, dense_width = _convs(module), {n: m.out_channels for n, m in _convs(dense).items()}
    odd = [name for name, m in convs.items()
           if m.out_channels % 8 and dense_width.get(name) != m.out_channels]
    said = f"the pruned model runs slower than dense here ({speedup:.2f}x): "
    if odd:
        return (said + f"{len(odd)} of its {len(convs)} convs keep a channel count that is not a "
                f"multiple of 8 ({', '.join(odd[:3])}{', ...' if len(odd) > 3 else ''}), which "
                "many kernels run slower than a round count; prune with channel_step=8 (SMCP's "
                "default), or price with a latency table measured here (README, Deploy and "
                "latency tables)")
    return (said + "FLOPs are a poor guide to this runtime's speed; price with a latency table "
            "measured here (README, Deploy and latency tables)")


DEPLOY_MARKER = ".fxprune-deploy"
DEPLOY_FILES = ("model.onnx", "dense.onnx", "model.onnx.data", "dense.onnx.data", "model.engine",
                "dense.engine", "report.json")


def _record_written(out_dir: str) -> dict[str, list]:
    """``{name: [size in bytes, mtime in ns, sha256]}`` of deploy's files in ``out_dir``."""
    record = {}
    for name in DEPLOY_FILES:
        path = os.path.join(out_dir, name)
        if os.path.isfile(path) and not os.path.islink(path):
            record[name] = file_record(path)
    return record


def _check_out_dir(out_dir: str, **given) -> None:
    """``out_dir`` is a folder; files of the names deploy writes there must be its own: each
    one recorded (size, modification time and content) in the folder's marker when deploy
    wrote it. ``given``: the model files passed (named in the error when one is there)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DeployError(f"--out {out_dir} is a file, not a folder; choose another --out")
    if not os.path.isdir(out_dir):
        return
    marker = os.path.join(out_dir, DEPLOY_MARKER)
    if os.path.islink(marker) or (os.path.lexists(marker) and not os.path.isfile(marker)):
        raise DeployError(f"--out {out_dir} holds {DEPLOY_MARKER}, which is not a file fxprune "
                          "deploy wrote (a link or a folder); choose a new or empty folder")
    linked = [f for f in (DEPLOY_MARKER, *DEPLOY_FILES) if os.path.isfile(os.path.join(out_dir, f))
              and os.stat(os.path.join(out_dir, f)).st_nlink > 1]
    if linked:  # written in place, the same file elsewhere would change too
        raise DeployError(f"--out {out_dir} holds {', '.join(linked)} with other hard links (the "
                          "same file elsewhere would be rewritten); remove them there or choose "
                          "a new or empty folder")
    recorded, old_marker = {}, False
    if os.path.exists(marker):
        try:
            with open(marker) as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            text = ""
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("fxprune_deploy") == 1:
            recorded = data.get("written")
        elif text.startswith("fxprune deploy writes here:"):  # an older fxprune's text marker
            recorded = None
        elif not text.strip() or text.startswith('{\n "fxprune_deploy": 1'):
            # one an older fxprune deploy left cut, interrupted or on a full disk (break206 F1)
            raise DeployError(f"--out {out_dir} holds a {DEPLOY_MARKER} left cut by an "
                              "interrupted fxprune deploy, so which files there are deploy's is "
                              f"not known: remove {DEPLOY_MARKER} and the files there of the names deploy "
                              "writes (model.onnx, report.json...), or choose a new folder")
        else:  # a file of the user's by that name: deploy would write over it
            raise DeployError(f"--out {out_dir} holds a {DEPLOY_MARKER} that fxprune deploy did "
                              "not write; choose a new or empty folder")
        old_marker = not isinstance(recorded, dict)
        recorded = recorded if isinstance(recorded, dict) else {}
    clash = [f for f in DEPLOY_FILES if os.path.lexists(path := os.path.join(out_dir, f))
             and (os.path.islink(path) or not os.path.isfile(path)
                  or not matches_file_record(recorded.get(f), path))]  # cp -r: break62 #5
    for name, value in given.items():
        if not isinstance(value, (str, os.PathLike)):
            continue
        path = os.path.realpath(os.path.expanduser(os.fspath(value)))
        inside = [f for f in clash if os.path.realpath(os.path.join(out_dir, f)) == path]
        if inside:  # break62 #6: told to delete the model being deployed "if not yours"
            flag = "MODEL" if name == "model" else "--compare"
            # (break179 F10: "deploy writes dense.onnx" said to a deploy without --compare)
            this_one = given.get("dense") is not None or not inside[0].startswith("dense")
            raise DeployError(f"{flag} {value} is inside --out {out_dir}, where deploy writes "
                              f"{inside[0]}{'' if this_one else ' (with --compare)'}; choose "
                              "another --out")
    if clash:
        why = ("its marker records no files: an older fxprune's, or a deploy killed while "
               "writing it" if old_marker else
               "your own, changed since, or left by a deploy that was killed")
        raise DeployError(f"--out {out_dir} holds {', '.join(clash)} that fxprune deploy did not "
                          f"record writing ({why}); delete them if they are not yours, or "
                          "choose a new or empty folder")


def _check_not_overwritten(out_dir: str, **given) -> None:
    """A model file given as input must not be one this deploy writes before reading it (e.g.
    ``--compare OUT/model.onnx``: the export of MODEL would replace it, and the dense model
    timed would be the pruned one)."""
    # real paths: a symlinked folder or file is the same file
    written = {os.path.realpath(os.path.join(out_dir, f)): f for f in DEPLOY_FILES}
    for name, value in given.items():
        if not isinstance(value, (str, os.PathLike)):
            continue
        path = os.path.realpath(os.path.expanduser(os.fspath(value)))
        if path in written and path != os.path.realpath(os.path.join(out_dir, f"{name}.onnx")):
            flag = "MODEL" if name == "model" else "--compare"
            if name == "model" and given.get("dense") is None and written[path].startswith("dense."):
                # no --compare: its own export would replace the pruned model.onnx there
                raise DeployError(f"MODEL {os.fspath(value)} is the dense model of the deploy in "
                                  f"{out_dir}; deploying it there would replace that deploy's "
                                  "model.onnx and report.json with the dense model's: choose "
                                  "another --out")
            raise DeployError(f"{flag} {os.fspath(value)} is the {written[path]} this deploy "
                              f"writes into {out_dir}, so it would be replaced before it is read; "
                              "copy it out of that folder first, or choose another --out")


def _given_precision(source: str, precision: str, accepted=None):
    """``source``'s ONNX graph (without its weights) and its input's precision, which must be
    one of ``accepted`` (default: ``precision``); DeployError otherwise."""
    import onnx

    from .onnx_export import check_onnx, written_precision

    check_onnx(source)
    m = read_onnx(source)  # the graph only: what the file declares
    written = written_precision(m)
    if written is None:
        inputs = m.graph.input
        kind = (onnx.TensorProto.DataType.Name(inputs[0].type.tensor_type.elem_type)
                if inputs else "none")
        raise DeployError(f"{source}'s input is of type {kind}: fxprune deploy times models "
                          "whose one input is an fp32, fp16 or bf16 tensor")
    if written == "bf16":  # else each way out below would lead to another refusal
        raise DeployError(f"{source} is a bf16 ONNX file, and no backend here times one "
                          "(ONNX Runtime's CPU kernels lack bf16; the torch backend times PyTorch "
                          "modules): give an fp32 or fp16 export, or deploy the PyTorch module "
                          "with --backend torch --precision bf16")
    if written not in (accepted or (precision,)):
        raise DeployError(f"{source} is an ONNX file of precision {written} (its input's type), "
                          f"timed as it is, and precision {precision} was asked for: pass "
                          f"--precision {written}, or give a file exported at {precision}")
    return m, written


def _given_onnx(source: str, path: str, log, m, written: str) -> dict:
    """An ONNX file the user gave, checked by :func:`_given_precision` (its graph ``m``, its
    input's precision ``written``): copied to ``path``, described (not re-exported)."""
    import shutil

    import onnx

    from .onnx_export import written_opset

    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)
    if os.path.realpath(source) == os.path.realpath(path):  # a symlink to it is the file too
        pass
    elif external:
        # its weights sit in a side file named inside it: saved again beside the copy under
        # deploy's own name (model.onnx.data), so MODEL and --compare never share one
        whole = read_onnx(source, load_external_data=True)
        onnx.save_model(whole, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{os.path.basename(path)}.data")
        # small tensors stay inside the file (onnx's size threshold)
        external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in whole.graph.initializer)
    else:
        shutil.copyfile(source, path)
    log(f"using ONNX file {source} as it is (no PyTorch model to compare its outputs with)")
    return {"path": path, "exporter": "given", "opset": written_opset(m),
            "precision": written, "source": os.fspath(source), "max_abs_diff": None,
            "external_data": external, "outputs": [o.name for o in m.graph.output]}


#: initializer types counted as parameters: weights, not the integer constants an export
#: keeps as initializers (a mean's axes, a reshape's shape: break106 #3 counted them)
_WEIGHT_TYPES = frozenset({"FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE"})


def _onnx_params(path: str) -> int:
    """The elements of the file's floating-point initializers (its weights)."""
    import onnx

    m = read_onnx(path, load_external_data=True)
    weights = {getattr(onnx.TensorProto, name) for name in _WEIGHT_TYPES}
    return sum(math.prod(t.dims) for t in m.graph.initializer if t.data_type in weights)


def _flops(module: nn.Module, shape) -> int | None:
    """FLOPs of one forward of ``module`` at ``shape`` (fxprune.count_flops, on an fp32 CPU
    copy): one image's times the batch where an image's and two images' counts show the
    forward computes images apart (a ResNet-50 at batch 256 counted whole took about 90 s:
    review208 R5), else the whole batch counted (a forward that reshapes the batch into clips,
    or mixes samples: break209 F3); None where torch's flop counter cannot run it (not a
    reason to fail a deploy)."""
    from fxprune.summary import count_flops

    copy = eval_copy(module, "fp32")

    def at(batch):
        with torch.no_grad():
            return count_flops(copy, (example_input((batch, *shape[1:]), "fp32"),))

    try:
        one, two = at(1), at(2)
        if two == 2 * one:
            return one * int(shape[0])
    except Exception:  # noqa: BLE001 - the whole batch below, as it is timed
        pass
    try:
        return at(int(shape[0]))
    except Exception:  # noqa: BLE001 - a count is extra; the timing stands without it
        return None


def _backend_diff(runner, module: nn.Module, shape) -> float:
    """max |TensorRT - PyTorch fp32| on one random input (reported, not enforced: TF32 and fp16
    kernels legitimately move results by more than the ONNX check's tolerance)."""
    from .onnx_export import output_gap

    x = example_input(shape, "fp32", seed=1)
    with torch.no_grad():
        ref = flat_outputs(eval_copy(module, "fp32")(x))
    got = runner.infer(x)
    if len(got) != len(ref):
        raise DeployError(f"the TensorRT engine has {len(got)} outputs, PyTorch gives {len(ref)}")
    # (an inf in the same place in both is no difference: output_gap)
    return max(output_gap(g.detach().float().cpu().numpy(), r.detach().float().cpu().numpy())[0]
               for g, r in zip(got, ref, strict=True))
