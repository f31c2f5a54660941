"""``fxprune plot INPUT... --out pareto.png``: accuracy against measured latency or FLOPs.

Inputs, any mix of:

* a recipe run folder (``fxprune train --out DIR``) or its ``results.json``: one point, labelled
  by the folder name, at the run's test accuracy and FLOPs (batch 1). Its measured latency
  comes from ``fxprune deploy`` reports written inside the run folder
  (``fxprune deploy RUN/model_pruned.pt --out RUN/deploy_b1 --trust-model-file``): every
  folder inside it (at any depth) holding a deploy marker and ``report.json``; the report's ``batch`` says which
  batch that latency is for, and its ``speedup`` (``fxprune deploy --compare DENSE``) places
  the run for ``--x speedup``; the run whose model file that report timed as ``--compare``
  (by content), given too and not deployed itself at that batch, is drawn at the dense
  latency the report holds (1.0x). Latencies timed on another backend, device, precision, thread
  count, input size or runtime version than the others (where both say: a benchmark file
  says its machine's CPU, threads and ONNX Runtime version) are refused on a latency axis.
* a benchmark results file: JSON with a ``rows`` list; each row with an ``accuracy``
  (fraction, 0..1) is a point, labelled by its ``label``, else its ``row`` or ``method`` key
  followed by its ``target`` (a fraction, drawn as a percentage) when it has one. A row's
  ``flops`` and ``latency_ms`` (a number, for the file's ``batch``, or ``{"BATCH": ms}``)
  place it, and a row's ``speedup`` (over the dense model timed beside it, a number or
  ``{"BATCH": x}``) does for ``--x speedup``; ``accuracy_std`` draws an error bar. Rows with a
  ``net`` key are drawn in one panel
  per network (different networks' latencies do not share an axis), and rows of one kind share
  a colour: the ``row`` name where a row has one (``bench_fashion_mnist.py``'s ``hard masks``
  runs SMCP's trainer but is its own baseline), else the method family (the ``method`` name up
  to its first ``-``: ``tp-taylor-r8`` is ``tp``).

``--x latency`` (default) uses the median latency in milliseconds at ``--batch`` (default: the
only batch the inputs measured, else the smallest); ``--x speedup`` the measured speedup over
dense at ``--batch``, which stays comparable when rows were timed in different processes or
sessions (each against its own dense model) while their milliseconds are not; ``--x flops`` the
FLOPs per image.
The output is a PNG; an existing file is replaced only when ``fxprune plot`` wrote it (its PNG
metadata says so).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FxPruneError, warn
from .run_io import RUN_MARKER, RUN_MODEL_FILES, atomic_write, file_sha256

__all__ = ["PlotError", "Point", "load_points", "plot_points", "add_arguments", "run"]

SOFTWARE = "fxprune plot"  # written into the PNG's metadata: the mark of a file this wrote
DEPLOY_MARKER = ".fxprune-deploy"


class PlotError(FxPruneError):
    """An input cannot be plotted, or the output would replace a file plot did not write."""


@dataclass
class Point:
    """One model: test accuracy (fraction), FLOPs per image, latency (ms) per batch size."""

    label: str
    accuracy: float
    flops: float | None = None
    latency_ms: dict[int, float] = field(default_factory=dict)
    speedup: dict[int, float] = field(default_factory=dict)  # over dense, per batch size
    accuracy_std: float | None = None
    source: str = ""
    panel: str = ""    # the network a benchmark row measured ("" : the one shared panel)
    family: str = ""   # the colour group: a benchmark row's method family ("" : its source)
    timing: dict[int, dict] = field(default_factory=dict)  # how each batch's latency was timed
    # what the accuracy was scored on (a run's data set name, test images, their hashes; a
    # benchmark row's test image count where it records one; None: not recorded)
    test_set: dict | None = None
    # per batch, what plot_points warns of where it plots that batch (a deploy report timed
    # under load, a speedup over the model itself)
    notes: dict[int, list[str]] = field(default_factory=dict)


_INPUTS = "pass a run folder (fxprune train --out), its results.json or a benchmark results .json"


def _read_json(path: Path, way_out: str = _INPUTS) -> object:
    """``path``'s JSON; a missing or unreadable file is a PlotError ending in ``way_out``
    (for a file inside a run, not the inputs' advice: break174 F5)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PlotError(f"{path} does not exist; {way_out}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlotError(f"{path} is not JSON ({str(exc).splitlines()[0][:120]}); "
                        f"{way_out}") from None


def _number(value, what: str, source: str, *, fraction: bool = False) -> float:
    try:  # a 400-digit integer does not convert
        finite = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    except OverflowError:
        finite = False
    if not finite:
        raise PlotError(f"{source}: {what} must be a finite number, got {repr(value)[:40]}")
    if fraction and not 0 <= value <= 1:
        raise PlotError(f"{source}: {what} {value!r} is not a fraction in [0, 1] (accuracies are "
                        "stored as fractions, 0.92 not 92)")
    return float(value)


def _path_or_none(value, what: str, source: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise PlotError(f"{source}: {what} must be a path, got {value!r}")
    return value


def _positive(value, what: str, source: str) -> float:
    number = _number(value, what, source)
    if number <= 0:
        raise PlotError(f"{source}: {what} must be positive, got {value!r}")
    return number


def _not_negative(value, what: str, source: str) -> float:
    number = _number(value, what, source)
    if number < 0:
        raise PlotError(f"{source}: {what} must not be negative, got {value!r}")
    return number


def _literal(text: str) -> str:
    """Text matplotlib draws as written: a ``$`` would start mathtext (and a bad formula in a
    run folder's name ended the plot with a parser traceback)."""
    return str(text).replace("$", r"\$")


def _batch_size(value, what: str, source: str) -> int:
    """A batch size from a JSON key or value: a positive integer ("64" or 64), else PlotError."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlotError(f"{source}: {what} must be a batch size (a positive integer), got "
                        f"{value!r}")
    return value


def _latencies(value, batch, source: str, what: str = "latency_ms") -> dict[int, float]:
    """``{batch: value}`` from a row's ``latency_ms`` (or ``speedup``): a number for the file's
    batch or a ``{"BATCH": number}`` mapping; every value must be positive."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {_batch_size(b, f"a {what} key", source): _positive(v, f"{what}[{b}]", source)
                for b, v in value.items()}
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PlotError(f"{source}: {what} must be a number or a {{\"BATCH\": value}} mapping, "
                        f"got {value!r}")
    if batch is None:
        raise PlotError(f"{source}: {what} is one number but the file states no batch; "
                        f"write it as {{\"BATCH\": value}} or add a top-level \"batch\"")
    return {_batch_size(batch, "the file's batch", source): _positive(value, what, source)}


def _deploy_latencies(run_dir: Path, results: Path, run_model: str | None,
                      run_params: int | None = None, backend: str | None = None) -> dict[int, dict]:
    """Per batch, from the deploy reports written in a run folder (the folder itself or its
    sub-folders): ``{"median": ms, "speedup": over the dense model timed beside it or None,
    "timing": the runtime setting (backend, device, precision, threads, input)}``. A report
    counts only if the file it timed is that file as it is now (the content hash it records;
    a report without one, of an earlier fxprune or a module deployed from Python: if it is
    newer than the run's results.json), since a run redone with --overwrite leaves its old
    deploy folders behind, and,
    when it names the model file it timed, that file is the run's model or a deploy's export
    of it inside the run folder (:func:`_export_of`); a report naming no file (a module
    deployed from Python) must count the run's parameters. Anything else is an error, not a
    point. ``backend``: only reports of that backend count (None: any)."""
    out: dict[int, dict] = {}
    other: set[str] = set()  # the backends of reports --backend left out
    run = run_dir.resolve()
    finished = results.stat().st_mtime
    # The run's model file lives in the run folder, which may have moved since: results.json
    # names it relative to where `fxprune train` ran, or where the run was then; paths a
    # deploy recorded inside that old folder are read inside this one.
    own = _run_model_file(run_dir, run_model)
    old_run = None
    if run_model and Path(run_model).expanduser().is_absolute():
        old_run = Path(run_model).expanduser().parent.resolve()

    # at any depth: RUN/deploys/b1 was passed over, then "deploy the runs" was advised
    subs = sorted({m.parent for m in run_dir.rglob(DEPLOY_MARKER)})
    # the model's hash once, and only where there are reports to match it with
    digest = file_sha256(own) if subs and own is not None and own.is_file() else None
    if old_run is None and own is not None:  # a relative out: results.json names no folder
        old_run = _where_the_run_was(run_dir, own, subs, digest)

    for sub in subs:
        report = sub / "report.json"
        if not (sub / DEPLOY_MARKER).is_file() or not report.is_file():
            continue
        data = _read_json(report, f"deploy the run there again, or move {sub} out of the run")
        # where the run was when this report was written: a run deployed, copied and deployed
        # again holds reports of two places (break174 F2, review177 F2: the second place was
        # refused); what the paths then name is judged by content below
        # (only a report whose content hash is then checked: one without, of an earlier
        # fxprune, is judged by its time in the run's own place; review178 F2)
        was = ((_written_at(run, sub, data) if isinstance(data, dict)
                and isinstance(data.get("model_sha256"), str) else None)
               or (_timed_there(run, sub, data, own, digest) if own is not None else None)
               or old_run)
        inside = functools.partial(_moved, was=was, run=run)
        if backend is not None and isinstance(data, dict) and data.get("backend") != backend:
            other.add(str(data.get("backend")))  # (break151 F4: two backends at one batch)
            continue
        try:
            batch, median = data["batch"], data["latency_ms"]["median"]
        except (KeyError, TypeError):
            raise PlotError(f"{report} is not an fxprune deploy report (no batch and "
                            "latency_ms.median)") from None
        batch = _batch_size(batch, "batch", str(report))
        median = _positive(median, "latency_ms.median", str(report))
        timed = _path_or_none(data.get("model_file"), "model_file", str(report))
        # which model the report timed: by content where it recorded the file's (a run copied
        # with fresh times, in any order, is still the run: break62 #3), else by time
        recorded = data.get("model_sha256") if timed is not None else None
        if not isinstance(recorded, str) and report.stat().st_mtime < finished:
            raise PlotError(f"{report} is older than the run's {results.name}: it timed a model "
                            f"of an earlier run in {run_dir}; deploy the run again or remove it")
        if timed is None and (run_params is None or data.get("params") != run_params):
            theirs = (f"the run's {run_params}" if run_params is not None
                      else f"given in the run's {results.name}")
            raise PlotError(f"{report} names no model file it timed (a module deployed from "
                            f"Python) and its {data.get('params')} parameters are not "
                            f"{theirs}: it may be another model; deploy "
                            f"{own or run_dir / 'model_pruned.pt'} there, or move that report "
                            "out of the run")
        if timed is not None:
            try:
                path = Path(timed).resolve()
            except (OSError, ValueError) as exc:  # a NUL in the path
                raise PlotError(f"{report}: model_file {timed!r} is not a path ({exc})") from None
            path = inside(path)
            # the run's model, or deploy's export of it inside the run (not a dense model
            # deployed there, nor an ONNX file of the user's, which may be any model)
            ours = path == own or (path.is_relative_to(run) and _export_of(
                path, own, timed_by=report, after=finished, run=run, fallback=old_run))
            if not ours or not path.is_file():
                raise PlotError(f"{report} timed {timed}, not the model of the run {run_dir}"
                                f"{' (the file is gone)' if ours else ''}; deploy "
                                f"{own or run_dir / 'model_pruned.pt'} there, or move that "
                                f"report out of the run")
            if isinstance(recorded, str) and file_sha256(path) != recorded:
                raise PlotError(f"{report} timed another {path.name} than the one in {run_dir} "
                                "now (its content changed since: a run redone there?); deploy "
                                "the run again or remove it")
        if batch in out:  # named (break62 #7), so the user can tell which to move
            kinds = {out[batch]["timing"]["backend"], data.get("backend")}
            pick = (f", or pass --backend {' or '.join(sorted(map(str, kinds)))} to plot one "
                    "backend's" if backend is None and len(kinds) > 1 else "")
            raise PlotError(f"{run_dir} holds two deploy reports at batch {batch} "
                            f"({out[batch]['report']}, {report}); move one out of the run{pick}")
        notes = []  # said when this batch is drawn (break174 F6: not for batches left off)
        if data.get("timed_under_load") is True:  # deploy said so; a plot of it must too (break58 #8)
            load = data.get("load_average") if isinstance(data.get("load_average"), dict) else {}
            def avg(v):  # as uptime prints it (break70 #4: 5.4306640625)
                return f"{v:.2f}" if isinstance(v, (int, float)) else str(v)

            said = (f" (load average {avg(load.get('before'))} -> {avg(load.get('after'))} on "
                    f"{load.get('cores')} cores)" if load else "")
            notes.append(f"{report} was timed while other processes shared the CPU{said}: its "
                         "latency and speedup may be off; deploy the run again on an idle machine")
        speedup = data.get("speedup")
        if data.get("compare_is_model") and speedup is not None:
            notes.append(f"{report} timed the model against {data['compare_is_model']} as "
                         "--compare: its speedup measures timing noise, not drawn; deploy the run "
                         "again with the dense model as --compare")
            speedup = None
        shape = data.get("input_shape")
        out[batch] = {"median": median, "report": str(report), "dense": _dense_timed(data),
                      "speedup": speedup if isinstance(speedup, (int, float)) and speedup > 0 else None,
                      "timing": {**{key: data.get(key) for key in ("backend", "device", "precision",
                                                                  "threads")},
                                 "input": "x".join(map(str, shape[1:])) if isinstance(shape, list) else None,
                                 "runtime": data.get(f"{data.get('backend')}_version")},
                      "notes": notes}
    if other and not out:  # (review153 F5: "deploy the runs" said of runs deployed)
        warn(f"{run_dir}: its deploy reports are of {', '.join(sorted(other))}, not --backend "
             f"{backend}: it has no latency to draw", RuntimeWarning)
    return out


def _run_model_file(run_dir: Path, run_model: str | None) -> Path | None:
    """The model file a run wrote, in ``run_dir`` now: the one its results.json names (by
    name: the run folder may have moved since), or for a results.json without "model"
    (edited by hand) the one model file the run wrote; None where that is not known."""
    if run_model:
        return (run_dir / Path(run_model).expanduser().name).resolve()
    saved = [run_dir / name for name in RUN_MODEL_FILES if (run_dir / name).is_file()]
    return saved[0].resolve() if len(saved) == 1 else None


def _dense_timed(report: dict) -> dict | None:
    """The dense model a deploy report timed beside its model (``--compare``): ``{"sha256":
    its file's content hash, "median": ms}``, or None (no --compare, a module compared from
    Python, or the model compared with itself)."""
    dense = report.get("dense")
    if not isinstance(dense, dict) or report.get("compare_is_model"):
        return None
    sha = dense.get("model_sha256")
    median = dense.get("latency_ms", {}).get("median") if isinstance(dense.get("latency_ms"), dict) else None
    if not isinstance(sha, str) or not isinstance(median, (int, float)) or isinstance(median, bool) \
            or not math.isfinite(median) or median <= 0:
        return None
    return {"sha256": sha, "median": float(median)}


# what must agree for latencies to share an axis (the batch is the axis's own), where both
# sides say: a deploy report says all, a benchmark file its machine's CPU, threads and runtime
_TIMING_KEYS = ("backend", "device", "precision", "threads", "input", "runtime")


def _moved(p: Path, *, was: Path | None, run: Path) -> Path:
    """``p``, recorded while the run folder ``run`` was at ``was``, where it is now."""
    if was is not None and was != run and p.is_relative_to(was):
        return run / p.relative_to(was)
    return p


def _written_at(run: Path, sub: Path, data) -> Path | None:
    """Where the run folder ``run`` was when the deploy report of its sub-folder ``sub`` was
    written: deploy records its ONNX file's absolute path, which lies in ``sub`` (None where
    the report records none, or one elsewhere)."""
    onnx = data.get("onnx") if isinstance(data, dict) else None
    path = onnx.get("path") if isinstance(onnx, dict) else None
    if not isinstance(path, str):
        return None
    try:
        then = Path(path).resolve().parent.parts
        rel = sub.resolve().relative_to(run).parts
    except (OSError, ValueError):  # a NUL in the path; a sub outside the run
        return None
    if not rel or len(then) <= len(rel) or then[len(then) - len(rel):] != rel:
        return None
    return Path(*then[:len(then) - len(rel)])


def _export_of(path: Path, own: Path | None, *, timed_by: Path, after: float, run: Path,
               fallback: Path | None) -> bool:
    """Whether ``path`` is a deploy folder's ``model.onnx`` exported from ``own``: that folder's
    report timed ``own`` and is newer than ``after`` (the run), and the file is no newer than
    it or than ``timed_by`` (a later deploy there, even a failed one, rewrote it). The model
    file that report names is read where the run folder ``run`` was when it was written
    (:func:`_written_at`, else ``fallback``)."""
    source = path.parent / "report.json"
    if path.name != "model.onnx" or not (path.parent / DEPLOY_MARKER).is_file() or not source.is_file():
        return False
    made = _read_json(source, f"deploy the run there again, or move {path.parent} out of the run")
    made = made if isinstance(made, dict) else {}
    onnx = made.get("onnx") if isinstance(made.get("onnx"), dict) else {}
    if isinstance(made.get("model_sha256"), str) and isinstance(onnx.get("sha256"), str):
        # by content (break62 #3): the deploy there timed ``own`` as it is now, and the file
        # there is the one it exported (a later deploy, even a failed one, rewrote it)
        if own is None or not own.is_file() or file_sha256(own) != made["model_sha256"]:
            return False
        if not path.is_file() or file_sha256(path) != onnx["sha256"]:
            return False
    else:  # a report of an earlier fxprune: by time
        if source.stat().st_mtime < after:
            return False
        if path.is_file() and path.stat().st_mtime > min(source.stat().st_mtime, timed_by.stat().st_mtime):
            return False
    made_from = made.get("model_file")
    was = (_written_at(run, path.parent, made) if isinstance(made.get("model_sha256"), str)
           else None) or fallback
    try:
        return isinstance(made_from, str) and _moved(Path(made_from).resolve(), was=was, run=run) == own
    except (OSError, ValueError):  # a NUL in the path
        return False


def _where_the_run_was(run_dir: Path, own: Path, subs: list[Path],
                       digest: str | None = None) -> Path | None:
    """The folder a run trained with a relative out was in when it was deployed, where it has
    moved since (break70 #1: a byte-identical copy was refused): a deploy report inside the run
    that timed a file of the run model's name and content (the sha256 it records), written at
    the same place in that folder as it is in this one (its ONNX file's path, where recorded).
    None when no report says so. ``digest``: ``own``'s sha256, where the caller has it."""
    run = run_dir.resolve()
    if digest is None and subs:
        digest = file_sha256(own) if own.is_file() else None
    for sub in subs:
        try:
            data = json.loads((sub / "report.json").read_text())
        except (OSError, ValueError):
            continue  # judged (and refused, if need be) by the reading that follows
        old = _timed_there(run, sub, data, own, digest)
        if old is not None:
            return old
    return None


def _timed_there(run: Path, sub: Path, data, own: Path, digest: str | None) -> Path | None:
    """The folder the run (now at ``run``) was in when the report ``data`` of its sub-folder
    ``sub`` timed the run's model there: a file of ``own``'s name and content (``digest``),
    written at the same place in that folder (its ONNX file's path, where recorded); else
    None."""
    try:
        timed = Path(data["model_file"]).resolve()
        onnx = data.get("onnx") if isinstance(data.get("onnx"), dict) else {}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    old = timed.parent
    if (timed.name != own.name or old == run or digest is None
            or data.get("model_sha256") != digest):
        return None
    if isinstance(onnx.get("path"), str) and not Path(onnx["path"]).resolve().is_relative_to(
            old / sub.resolve().relative_to(run)):
        return None  # that report was not written in the run's folder then
    return old


@dataclass
class _RunSeen:
    """A run's point, its folder, its model file now and, per batch, the dense model its
    deploy reports timed beside it (``{"sha256", "median", "timing", "report"}``)."""

    point: Point
    folder: Path
    model_file: Path | None = None
    dense_beside: dict[int, dict] = field(default_factory=dict)


def _run_point(results: Path, run_dir: Path | None, backend: str | None = None) -> _RunSeen:
    data = _read_json(results)
    source = str(results)
    if isinstance(data, dict) and "meta" in data and "accuracy" not in data:
        # a benchmark's file without rows (an older bench_methods.py's), not a run's (break81 #3)
        raise PlotError(f"{source} is a benchmark results file without rows of result points "
                        f"(it holds {', '.join(map(str, list(data)[:6]))}): fxprune plot reads "
                        "a run's results.json or a benchmark file with rows, which "
                        "bench_methods.py and bench_vs_torch_pruning.py write; run the "
                        "benchmark again to get one")
    if not isinstance(data, dict) or "accuracy" not in data or "flops" not in data:
        raise PlotError(f"{source} is not the results.json of an fxprune train run (no accuracy "
                        "and flops); pass a run folder or a benchmark results file with rows")
    # absolute: "." or a bare results.json (plot run from inside the run) has no name (break174
    # F3); not resolved, which would name a link's target (review177 F5)
    label = Path(os.path.abspath(run_dir or results.parent)).name or str(results)
    if data.get("cost_timed_under_load"):  # (break70 #3: said once, at training, only)
        warn(f"{source}: the latency table that priced this run had "
             f"{data['cost_timed_under_load']} timings taken while other processes shared the "
             "CPU: its channel choices may follow noise; measure the table again on an idle "
             "machine", RuntimeWarning)
    deploys = (_deploy_latencies(run_dir, results, _path_or_none(data.get("model"), "model", source),
                                 data.get("params"), backend) if run_dir is not None else {})
    # a dense run (prune.method none) is the 1.0x every --compare speedup is over: drawn there
    # on --x speedup wherever it was timed (break52: it was left off the plot)
    dense = data.get("method") == "none"
    point = Point(label, _number(data["accuracy"], "accuracy", source, fraction=True),
                  _not_negative(data["flops"], "flops", source),
                  {b: d["median"] for b, d in deploys.items()},
                  {b: 1.0 if dense and d["speedup"] is None else d["speedup"]
                   for b, d in deploys.items() if d["speedup"] is not None or dense},
                  timing={b: d["timing"] for b, d in deploys.items()}, source=source,
                  notes={b: d["notes"] for b, d in deploys.items() if d["notes"]},
                  test_set=_test_set(data))
    folder = run_dir or results.parent
    return _RunSeen(point, folder,
                    # (only where deploy reports are read: --x flops reads no model path)
                    _run_model_file(folder, _path_or_none(data.get("model"), "model", source))
                    if run_dir is not None else None,
                    {b: {**d["dense"], "timing": d["timing"], "report": d["report"]}
                     for b, d in deploys.items() if d["dense"] is not None})


def _test_set(data: dict) -> dict | None:
    """The test set a run's results or a benchmark row records (``test_data``; an older
    run's, and bench rows, ``test_samples`` only), or None."""
    if isinstance(data.get("test_data"), dict):
        return data["test_data"]
    return {"samples": data["test_samples"]} if data.get("test_samples") is not None else None


def _bench_points(data: dict, source: str) -> list[Point]:
    rows = data["rows"]
    if isinstance(rows, dict):  # bench_smcp_ablation's: a summary per row name (break81 #3)
        raise PlotError(f"{source}: its rows are a summary per row name (the SMCP ablation's), "
                        "not a list of result points with accuracy and flops: fxprune plot "
                        "draws those of runs and of bench_methods.py / bench_vs_torch_pruning.py")
    if not isinstance(rows, list):
        raise PlotError(f"{source}: rows must be a list of result rows")
    about = data.get("meta") or data.get("machine") or {}
    batch = data.get("batch", about.get("batch") if isinstance(about, dict) else None)
    machine = about.get("machine", about) if isinstance(about, dict) else {}
    machine = machine if isinstance(machine, dict) else {}
    timing = {"device": machine.get("cpu"), "threads": machine.get("threads"),
              "runtime": machine.get("onnxruntime")}
    points = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "accuracy" not in row:
            continue
        where = f"{source} row {i}"
        label = str(row.get("label") or row.get("row") or row.get("method") or f"row {i}")
        target = row.get("target")
        if not row.get("label") and isinstance(target, (int, float)) and not isinstance(target, bool):
            label += f" {target * 100:g}%"  # one row kind at several targets: say which point is which
        panel = str(row.get("net") or "")
        if panel and label.startswith(panel + ":"):
            label = label[len(panel) + 1:]  # the panel's title names the network
        std = row.get("accuracy_std")
        points.append(Point(
            label, _number(row["accuracy"], "accuracy", where, fraction=True),
            None if row.get("flops") is None else _not_negative(row["flops"], "flops", where),
            _latencies(row.get("latency_ms"), row.get("batch", batch), where),
            _latencies(row.get("speedup"), row.get("batch", batch), where, "speedup"),
            # (break106 #5: 5, i.e. 500 points, was drawn, where accuracy itself is refused)
            None if std is None else _number(std, "accuracy_std", where, fraction=True), source, panel,
            str(row.get("row") or row.get("method") or label).split("-")[0],
            test_set=_test_set(row)))  # (break174 F1: a row's was never compared)
        points[-1].timing = dict.fromkeys(points[-1].latency_ms, timing)
    if not points:
        raise PlotError(f"{source} has no row with an accuracy; nothing to plot from it")
    return points


def load_points(inputs, *, latencies: bool = True, backend: str | None = None) -> list[Point]:
    """Points from run folders, runs' ``results.json`` and benchmark results files (see the
    module docstring); raises :class:`PlotError` naming a missing or foreign input.
    ``latencies=False`` reads no run's deploy reports (a FLOPs plot needs none, so a stale one
    does not refuse the run: break56 #12). ``backend``: read only runs' deploy reports of
    that backend ("onnxruntime", "torch", "tensorrt"; None: any). What a deploy report warns
    of (timed under load, a speedup over the model itself) is kept in :attr:`Point.notes` and
    said by :func:`plot_points` where it draws that batch."""
    points: list[Point] = []
    runs: list[_RunSeen] = []
    seen: dict[Path, str] = {}
    for given in inputs:
        path = Path(os.path.expanduser(os.fspath(given)))
        same = (path / "results.json" if path.is_dir() else path).resolve()
        if same in seen:  # a run folder and its results.json are one input
            raise PlotError(f"{given} is given twice (as {seen[same]} too); pass each input once")
        seen[same] = os.fspath(given)
        if path.is_dir():
            results = path / "results.json"
            if not results.is_file():
                why = ("it is a run that has not finished" if (path / RUN_MARKER).is_file()
                       else "it is not an fxprune train --out folder")
                raise PlotError(f"{path} has no results.json ({why}); pass finished run folders "
                                "or results files")
            runs.append(_run_point(results, path if latencies else None, backend))
            points.append(runs[-1].point)
            continue
        data = _read_json(path)
        if isinstance(data, dict) and "rows" in data:
            points.extend(_bench_points(data, str(path)))
        else:
            run_dir = path.parent if (path.parent / RUN_MARKER).is_file() else None
            runs.append(_run_point(path, run_dir if latencies else None, backend))
            points.append(runs[-1].point)
    _time_dense_runs_from_compare(runs)
    _tell_runs_apart([(run.point, run.folder) for run in runs])
    _tell_points_apart(points)
    return points


def _time_dense_runs_from_compare(runs: list[_RunSeen]) -> None:
    """A run given with no latency of its own at a batch where another run's deploy report
    timed that run's very model file (by content) as ``--compare`` is drawn at that timing,
    1.0x on ``--x speedup``: the dense run a pruned run was deployed against was "not drawn"
    (break185 F4), the reference the plot is for."""
    beside = [(b, timed) for run in runs for b, timed in run.dense_beside.items()]
    if not beside:
        return
    for run in runs:
        missing = {b for b, _ in beside if b not in run.point.latency_ms}
        if not missing or run.model_file is None or not run.model_file.is_file():
            continue
        digest = file_sha256(run.model_file)
        for b in sorted(missing):
            timings = [t for at, t in beside if at == b and t["sha256"] == digest]
            if not timings:
                continue
            # several reports timed it: their median, whatever the inputs' order (break190 F4:
            # the first input's report set it, 3.4 or 6.4 ms by the order), and said where
            # they disagree
            medians = sorted(t["median"] for t in timings)
            run.point.latency_ms[b] = statistics.median(medians)
            run.point.speedup[b] = 1.0  # the model every speedup of those reports is over
            run.point.timing[b] = timings[0]["timing"]
            if medians[-1] > 1.2 * medians[0]:
                run.point.notes.setdefault(b, []).append(
                    f"{run.point.label}: deploy --compare timed it {len(medians)} times at batch "
                    f"{b}, {medians[0]:.4g} to {medians[-1]:.4g} ms "
                    f"({', '.join(sorted(t['report'] for t in timings))}): drawn at their median; "
                    "those timings disagree, so its latency and the runs' speedups may be off")


def _tell_points_apart(points: list[Point]) -> None:
    """Points of one panel that still share a label (a benchmark row and a run both "dense",
    two rows of one file both "A") were drawn and listed alike (break174 F4): a benchmark row
    gets its file's name after the label where the points come from several files, and those
    still alike a number (#1, #2, ...)."""
    def alike(of: list[Point]) -> list[list[Point]]:
        groups: dict[tuple[str, str], list[Point]] = {}
        for point in of:
            groups.setdefault((point.panel, point.label), []).append(point)
        return [same for same in groups.values() if len(same) > 1]

    for same in alike(points):
        if len({p.source for p in same}) > 1:
            for point in same:
                if not point.source.endswith("results.json"):  # (a run's label is its folder)
                    point.label += f" ({Path(point.source).name})"
    for same in alike(points):
        for i, point in enumerate(same, 1):
            point.label += f" #{i}"


def _tell_runs_apart(runs: list[tuple[Point, Path]]) -> None:
    """Runs whose folders share a name (r1/run, r2/run) are labelled by as many trailing
    parts of their paths as tell them apart; both were "run" (break37 #5)."""
    by_label: dict[str, list[tuple[Point, Path]]] = {}
    for point, folder in runs:
        by_label.setdefault(point.label, []).append((point, folder))
    for same in by_label.values():
        if len(same) < 2:
            continue
        parts = [folder.resolve().parts for _, folder in same]
        for k in range(2, max(map(len, parts)) + 1):
            labels = ["/".join(p[-k:]) for p in parts]
            if len(set(labels)) == len(labels):
                break
        for (point, _), label in zip(same, labels):
            point.label = label


def _pick_batch(points: list[Point], batch: int | None, x: str = "latency") -> int:
    batches = sorted({b for p in points for b in (p.speedup if x == "speedup" else p.latency_ms)})
    if not batches and x == "speedup":
        raise PlotError("no input has a measured speedup over dense (a benchmark row's "
                        "speedup, or a deploy report's with --compare); plot with --x latency "
                        "or --x flops")
    if not batches:
        raise PlotError("no input has a measured latency: deploy the runs (fxprune deploy "
                        "RUN/model_pruned.pt --out RUN/deploy) or plot with --x flops")
    if batch is None:
        return batches[0]
    if batch not in batches:
        raise PlotError(f"no input has a {x} at batch {batch}; measured batches: "
                        f"{', '.join(map(str, batches))}")
    return batch


def _check_alike_timing(points: list[Point], batch: int) -> None:
    """Latencies timed on another runtime, device, precision, thread count or input size are
    not on one axis (one model measured 3.7x apart): refused, naming the first difference.
    Compared where both points say (a benchmark file says its CPU, threads and runtime)."""
    timed = [(p, p.timing[batch]) for p in points if batch in p.timing]
    for key in _TIMING_KEYS:
        said = [(p, t[key]) for p, t in timed if t.get(key) is not None]
        other = next(((p, v) for p, v in said[1:] if v != said[0][1]), None)
        if other is not None:
            (first, a), (second, b) = said[0], other
            raise PlotError(f"the latencies at batch {batch} were timed differently: {first.label} "
                            f"with {key} {a}, {second.label} with {key} {b}; time them alike to "
                            "put them on one axis, or plot --x speedup or --x flops")


def _check_one_test_set(points: list[Point]) -> None:
    """PlotError where two runs' accuracies were scored on different test sets (another data
    set, another count of test images, other images): one accuracy axis would compare them as
    if alike (break158 F2: a synthetic run beside Fashion-MNIST ones, without a word). Points
    that do not record their test set (most benchmarks' rows) are not compared."""
    said = [p for p in points if p.test_set]
    for key in ("name", "samples", "images_sha256", "labels_sha256"):
        known = [p for p in said if p.test_set.get(key) is not None]
        other = next((p for p in known[1:] if p.test_set[key] != known[0].test_set[key]), None)
        if other is not None:
            first = known[0]
            raise PlotError(f"the accuracies were scored on different test sets: {first.label} on "
                            f"{_test_set_words(first.test_set, key)}, {other.label} on "
                            f"{_test_set_words(other.test_set, key)}; plot runs scored on one "
                            "test set")


def _test_set_words(test_set: dict, differs: str) -> str:
    words = f"{test_set['samples']} test images" if "samples" in test_set else "its test images"
    if test_set.get("name"):
        words = f"{test_set['name']} ({words})"
    if differs.endswith("_sha256"):  # the same count of other images (or labels)
        words += f", {differs.split('_')[0]} sha256 {test_set[differs][:12]}"
    return words


def _check_out(out: Path) -> None:
    if out.suffix.lower() != ".png":  # (".png" alone has no suffix: a hidden file's name)
        raise PlotError(f"--out {out} must be a file name ending in .png (e.g. pareto.png)")
    if out.is_dir():
        raise PlotError(f"--out {out} is a folder; give a file name ending in .png")
    if not out.parent.is_dir():  # a typo in the path would make a new tree (break37 #6)
        raise PlotError(f"--out {out}: the folder {out.parent} does not exist; create it, or "
                        "give a path in an existing folder")
    if out.is_symlink():  # the file is written beside the link and renamed over it: a link
        # of the user's (live or dangling) became a plain file (break151 F3), as deploy refuses
        raise PlotError(f"--out {out} is a symbolic link, which fxprune plot would replace with "
                        "a file; give the path it points to, or another --out")
    if out.exists():
        from PIL import Image

        try:
            with Image.open(out) as im:
                software = im.info.get("Software")
        except Exception:  # noqa: BLE001 - any unreadable file is not ours
            software = None
        if software != SOFTWARE:
            raise PlotError(f"--out {out} exists and fxprune plot did not write it; choose "
                            "another --out")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotError("fxprune plot needs matplotlib: pip install 'fxprune[plot]' "
                        "(or pip install matplotlib)") from None
    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def plot_points(points: list[Point], out, *, x: str = "latency", batch: int | None = None,
                title: str | None = None) -> dict:
    """Draw accuracy (%) against ``x`` ("latency": median ms at ``batch``; "speedup": measured
    speedup over dense at ``batch``; "flops": MFLOPs per image) and save a PNG at ``out``.
    Returns what was drawn: ``{"x": ..., "batch": ...,
    "points": [(label, x, accuracy), ...], "skipped": [labels without that x]}``."""
    if x not in ("latency", "speedup", "flops"):
        raise PlotError(f"--x must be latency, speedup or flops, got {x!r}")
    if batch is not None and x == "flops":
        raise PlotError("--batch picks a measured latency or speedup; FLOPs are per image: "
                        "drop --batch or use --x latency/speedup")
    if batch is not None and batch < 1:
        raise PlotError(f"--batch must be a positive batch size, got {batch}")
    out = Path(os.path.expanduser(os.fspath(out)))
    plt = _pyplot()
    _check_out(out)
    if x == "latency":
        batch = _pick_batch(points, batch)
        xs = {id(p): p.latency_ms.get(batch) for p in points}
        _check_alike_timing(points, batch)
        xlabel = f"measured latency, median ms at batch {batch}"
    elif x == "speedup":
        batch = _pick_batch(points, batch, x)
        xs = {id(p): p.speedup.get(batch) for p in points}
        xlabel = f"measured speedup over dense at batch {batch} (right is faster)"
    else:
        xs = {id(p): None if p.flops is None else p.flops / 1e6 for p in points}
        xlabel = "MFLOPs per image (batch 1)"
    drawn = [p for p in points if xs[id(p)] is not None]
    _check_one_test_set(drawn)
    # the notes of every report at this batch, drawn or not (review177 F3: a speedup over the
    # model itself is why that run is not drawn on --x speedup)
    for p in points if x != "flops" else ():
        for note in p.notes.get(batch, ()):
            warn(note, RuntimeWarning)
    if not drawn:
        raise PlotError(f"no input has {dict(latency='a latency', speedup='a speedup').get(x, 'FLOPs')} "
                        "to plot against; try another --x")
    def group(p: Point) -> str:
        if p.family:
            return p.family
        return (Path(os.path.abspath(p.source)).parent.name if p.source.endswith("results.json")
                else Path(p.source).name)

    panels = list(dict.fromkeys(p.panel for p in drawn))
    colours = {g: f"C{i % 10}" for i, g in enumerate(dict.fromkeys(group(p) for p in drawn))}
    fig, axes = plt.subplots(1, len(panels), figsize=(7 if len(panels) == 1 else 5.5 * len(panels), 4.5),
                             dpi=120, squeeze=False)
    try:
        for ax, panel in zip(axes[0], panels):
            for g, colour in colours.items():
                mine = [p for p in drawn if p.panel == panel and group(p) == g]
                if not mine:
                    continue
                ax.errorbar([xs[id(p)] for p in mine], [100 * p.accuracy for p in mine],
                            yerr=[100 * (p.accuracy_std or 0.0) for p in mine], fmt="o",
                            capsize=3, color=colour,
                            label=" " * g.startswith("_") + _literal(g))  # "_x" hides a label
                for p in mine:
                    ax.annotate(_literal(p.label), (xs[id(p)], 100 * p.accuracy), textcoords="offset points",
                                xytext=(4, 4), fontsize=7)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(_literal(panel or title or f"accuracy vs {x if x != 'flops' else 'FLOPs'}"))
            ax.margins(x=0.15, y=0.1)  # room for the labels at the edges
            ax.grid(True, alpha=0.3)
            if len(colours) > 1:
                ax.legend(fontsize=7)
        if panels != [""]:
            fig.suptitle(_literal(title or f"accuracy vs {x if x != 'flops' else 'FLOPs'}"))
        fig.tight_layout()
        try:
            atomic_write(out, lambda tmp: fig.savefig(tmp, format="png",
                                                      metadata={"Software": SOFTWARE}))
        except OSError as exc:  # (break174 F11: it named plot's temporary file, no way out)
            raise PlotError(f"--out {out} could not be written ({exc.strerror or exc}); give "
                            "a path in a folder you can write to") from None
    finally:
        plt.close(fig)
    return {"x": x, "batch": None if x == "flops" else batch, "panels": panels,
            "points": [(p.label, xs[id(p)], p.accuracy) for p in drawn],
            "point_panels": [p.panel for p in drawn],  # the network of each point ("" : none)
            "skipped": [p.label for p in points if xs[id(p)] is None],
            # what a skipped point has instead (break45: "no latency" for a run measured at
            # another batch only)
            "skipped_has": {p.label: sorted((p.latency_ms if x == "latency" else p.speedup))
                            for p in points if xs[id(p)] is None and x != "flops"}}


# ----------------------------------------------------------------------------- CLI

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="recipe run folders, their results.json, benchmark results .json files")
    p.add_argument("--out", required=True, metavar="PNG", help="the PNG to write")
    p.add_argument("--x", choices=("latency", "speedup", "flops"), default="latency",
                   help="x axis: measured median latency (ms; the default: a run needs a "
                        "fxprune deploy report), measured speedup over dense (benchmark rows, runs "
                        "deployed with --compare) "
                        "or FLOPs per image")
    p.add_argument("--batch", type=int, default=None,
                   help="latency or speedup at this batch size (default: the smallest "
                        "measured)")
    p.add_argument("--backend", choices=("onnxruntime", "torch", "tensorrt"), default=None,
                   help="read only runs' deploy reports of this backend (a run deployed on "
                        "two at one batch)")
    p.add_argument("--title", default=None)


def run(args: argparse.Namespace) -> int:
    import sys

    if args.backend is not None and args.x == "flops":
        print(f"fxprune plot: --backend {args.backend} is not used with --x flops (it picks "
              "deploy reports, which a FLOPs axis does not read)", file=sys.stderr)
    if str(args.out).endswith(("/", os.sep)):  # (Path drops the slash: a.png/ wrote a.png)
        print(f"fxprune plot: error: --out {args.out} ends in a slash, as a folder does; give a "
              "file name ending in .png", file=sys.stderr)
        return 2
    try:
        drawn = plot_points(load_points(args.inputs, latencies=args.x != "flops",
                                        backend=args.backend), args.out, x=args.x, batch=args.batch,
                            title=args.title)
    except (PlotError, OSError) as exc:  # the message alone: it says what to do
        print(f"fxprune plot: error: {exc}", file=sys.stderr)
        return 2
    for (label, xv, acc), panel in zip(drawn["points"], drawn["point_panels"]):
        name = f"{panel}: {label}" if panel else label  # three nets' "dense" rows told apart
        print(f"{name:40} {xv:12.4g} {100 * acc:8.2f}%")
    if drawn["skipped"]:
        at = "" if drawn["batch"] is None else f" at batch {drawn['batch']}"
        has = drawn.get("skipped_has", {})
        print(f"not drawn (no {args.x}{at}): " + ", ".join(
            label + (f" (measured at batch {', '.join(map(str, has[label]))}: --batch N)"
                     if has.get(label) else "") for label in drawn["skipped"]))
    print(f"wrote {args.out}")
    return 0
