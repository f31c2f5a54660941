"""Run I/O of ``fxprune train``: the run folder, checkpoints, CSV and TensorBoard logs, saved
models and ``results.json``.

Everything ``fxprune train`` writes goes through this module, and only the main process
(global rank 0 under ``torchrun``, see :func:`fxprune.distributed.is_main_process`) writes:
:class:`RunLogs` does nothing on the other ranks, and the loop calls :func:`save_checkpoint`,
:func:`save_module` and :func:`write_results` on rank 0 only. Every rank reads the same
checkpoint on ``--resume``.

Safety rules: a run writes only into a folder it created or one holding its ``.fxprune-run``
marker (:func:`check_out_folder`), only the files of :data:`RUN_FILES` (and ``tensorboard/``),
each through a temporary file and a rename, so a crash never leaves a half-written file; the
CSV logs are the exception, a row appended in place (a kill mid-row can leave that last row
partial; a header that grows rewrites the file through a rename).
Checkpoints hold tensors and plain data only and are read with ``weights_only=True``.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import importlib.util
import io
import json
import os
import pickle
import random
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import FxPruneError, first_line
from .groups import is_finalized, mark_finalized, record_input_shape
from .recipe_config import ConfigError, dotted_keys, dump_yaml

__all__ = ["INPUT_SHAPE", "RUN_MARKER", "RUN_FILES", "CheckpointError", "check_out_folder",
           "claim_out_folder", "lock_out_folder", "release_out_folder", "stop_on_sigterm",
           "outlive_reader", "atomic_write", "check_replaceable",
           "atomic_write_text", "save_checkpoint", "load_checkpoint", "move_tensors", "rng_state", "set_rng_state", "config_changes", "CsvLog", "RunLogs",
           "cost_columns", "save_module", "write_results", "format_results"]

INPUT_SHAPE = (1, 1, 28, 28)  # what the saved models run on: one Fashion-MNIST image

# ----------------------------------------------------------------------------- the run folder

RUN_MARKER = ".fxprune-run"  # in every folder a run writes to: it holds fxprune's files only
# Every file a run writes (under its folder); nothing else there is ever touched.
RUN_MODEL_FILES = ("model_dense.pt", "model_pruned.pt")  # a run writes one of them, at its end
RUN_FILES = ("config.yaml", "metrics.csv", "steps.csv", "checkpoint.pt", "checkpoint.prev.pt",
             *RUN_MODEL_FILES, "results.json")


#: the layout of ``fxprune train``'s checkpoints (format 1 held pickled objects)
CHECKPOINT_FORMAT = 2


class CheckpointError(FxPruneError):
    """A checkpoint cannot be read (truncated, empty, not fxprune's) or does not fit the run."""


def unwritable_run_file(out: Path) -> str | None:
    """Why a run could not write one of its files in ``out``, or None: a run file there that
    is read-only or a symbolic link, which :func:`atomic_write` refuses to replace (review165
    F3: a read-only results.json failed the run at its end, after the training)."""
    for name in RUN_FILES:
        path = out / name
        if path.is_symlink() or (path.exists() and not os.access(path, os.W_OK)):
            return (f"{path} is {'a symbolic link' if path.is_symlink() else 'read-only'}, and "
                    "the run writes a file of its own there; make it a writable file")
    return None


def unwritable_folder(folder: Path, *, probe_existing: bool = False) -> str | None:
    """Why files could not be written in ``folder`` (made first where missing), or None: a
    file where a folder on its path should be, or a folder that refuses a new file (tried
    with a temporary file in the nearest existing folder above a missing one, removed at
    once: permission bits do not tell root, nor a read-only file system; an existing folder
    by its permission bits, or with ``probe_existing`` by such a file too, where a file of
    fxprune's there for a moment disturbs nothing: a latency cache's folder, not a run's).
    Creates nothing that stays."""
    if folder.is_dir() and not probe_existing:  # no file of ours in it, even for a moment:
        # another run may be listing it (a folder holding a file fxprune did not write is
        # refused)
        return None if os.access(folder, os.W_OK | os.X_OK) else f"{folder} cannot be written"
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the folders missing below it are made by the writer
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    return _refuses_a_new_file(existing)


def _refuses_a_new_file(folder: Path) -> str | None:
    """Why ``folder`` refuses a new file, tried with a temporary one removed at once; None."""
    import tempfile

    try:
        fd, tmp = tempfile.mkstemp(prefix=".fxprune-write-check.", dir=folder)
    except OSError as exc:
        return f"{folder} refuses a new file ({exc.strerror or exc})"
    os.close(fd)
    os.unlink(tmp)
    return None


def check_out_folder(out: Path, *, resume: bool, overwrite: bool,
                     tensorboard: bool = False, option: str = "--out",
                     called: str | None = None) -> None:
    """Refuse a folder the run did not create (one holding files but no run marker), a file
    in the folder's place, a place files cannot be written, and a finished run unless
    ``resume`` or ``overwrite``; with ``tensorboard`` (the run writes its logs), a file named
    ``tensorboard`` there. Creates nothing: it runs before any work. ``option``: the option
    that chose the folder, named in the way out; ``called``: what the messages that judge the
    folder's own state call it (default: ``option``): a benchmark's row folder is no ``--out``
    of its user's (review181 F6). The resume and TensorBoard messages name ``--out`` as the
    trainer's own."""
    named = f"{called or option} {out}"
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{named} is a file, not a folder; choose another {option}")
    # (a finished run resumed writes nothing: the trainer checks a resumed run that will
    # train, break65 #5)
    why = None if resume else unwritable_folder(out) or unwritable_run_file(out)
    if why:  # a bare "[Errno 20] Not a directory" named no --out (break62 #14)
        raise PermissionError(f"{named}: {why}; choose another {option}")
    if out.is_symlink() and not out.exists():  # it failed later as "[Errno 17] File exists"
        raise FileNotFoundError(f"{named} is a symbolic link to {os.readlink(out)}, which "
                                f"does not exist; create that folder, or choose another {option}")
    if out.is_dir():
        # a folder of a run file's name failed after prepare, half the old run removed (break54)
        odd = [name for name in RUN_FILES if (out / name).exists() and not (out / name).is_file()]
        if odd:
            raise FileExistsError(f"{named} holds {odd[0]}, which is not a file; fxprune "
                                  f"writes a file of that name: move it, or choose another {option}")
        board = out / "tensorboard"
        if tensorboard and board.exists() and not board.is_dir():  # (break73 F3: the old run
            # was removed, then SummaryWriter failed with a bare "[Errno 17] File exists")
            raise FileExistsError(f"--out {out} holds tensorboard, which is not a folder; "
                                  "fxprune writes TensorBoard logs there: move it, or --set "
                                  "log.tensorboard=false")
    ckpt = out / "checkpoint.pt"
    if resume:
        prev = out / "checkpoint.prev.pt"
        if not ckpt.is_file() and prev.is_file():  # interrupted between the two renames
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt} but {prev.name} holds "
                                    f"the epoch before it: move it to {ckpt.name} and --resume "
                                    "again")
        if not ckpt.is_file() and out.is_dir() and _user_entries(out) and not (
                out / RUN_MARKER).is_file():  # "run without --resume" was refused too (break52)
            raise FileNotFoundError(f"--resume: {out} holds no fxprune run (no checkpoint, and "
                                    f"files fxprune did not write: {_some_names(out)}); point "
                                    "--out at the run to continue, or at a new or empty folder "
                                    "to start one without --resume")
        if not ckpt.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}; run without --resume "
                                    "to start, or point --out at the run to continue")
        if not (out / RUN_MARKER).is_file():
            # (break148 F5: a run copied with `cp run/* new/`, which leaves the hidden marker
            # behind, was said not to be fxprune's, with no way out)
            raise FileExistsError(f"--resume: {out} has no {RUN_MARKER} marker, the hidden file "
                                  "a run keeps of the files it wrote (a copy made with `cp "
                                  "RUN/* NEW/` leaves it behind); copy the whole folder "
                                  "(`cp -r RUN NEW`) and --resume there, or point --out at "
                                  "the run itself")
        # (its checkpoints are what --resume reads, edited or not: not the user's files here)
        _refuse_foreign(out, "--resume", "continuing the run would replace or append to",
                        skip=("checkpoint.pt", "checkpoint.prev.pt"))
        return
    if out.is_dir() and _user_entries(out) and not (out / RUN_MARKER).is_file():
        raise FileExistsError(f"{named} already holds files fxprune did not write "
                              f"({_some_names(out)}); " + ("choose a new or empty folder"
                              if option == "--out" else f"move them, or choose another {option}"))
    if overwrite:
        _refuse_foreign(out, "--overwrite" if called is None else called,
                        "starting over would remove", option=option)
        if tensorboard:
            _refuse_foreign_events(out, "--overwrite")
        return
    prev = out / "checkpoint.prev.pt"
    if not ckpt.exists() and prev.exists():  # interrupted between the two renames (break35 #2)
        raise FileExistsError(f"{out} holds an interrupted run ({prev.name}, the last epoch it "
                              f"saved): move it to {ckpt.name} and pass --resume to continue, "
                              "--overwrite to start over, or another --out")
    if ckpt.exists():
        raise FileExistsError(f"{out} already holds a run ({ckpt}); pass --resume to "
                              "continue it, --overwrite to start over, or another --out")
    # a run's results, its checkpoints deleted to save space, are a run too (break35 #2)
    kept = [name for name in (*RUN_MODEL_FILES, "results.json") if (out / name).exists()]
    if kept:  # no checkpoint to resume from: --resume would refuse too (break38 #5)
        raise FileExistsError(f"{out} already holds a run ({out / kept[0]}) without its "
                              "checkpoints, which cannot be resumed; pass --overwrite to start "
                              "over, or another --out")
    # a run stopped in its first epoch: the fresh start removes its files (break54 #3)
    _refuse_foreign(out, f"--out {out}", "starting the run there would remove")
    if tensorboard:
        _refuse_foreign_events(out, f"--out {out}")


def _refuse_foreign_events(out: Path, who: str) -> None:
    """FileExistsError naming a TensorBoard event file in ``out/tensorboard`` the run did not
    write: a fresh start keeps it, and TensorBoard would show it as part of the new run."""
    foreign = _event_files(out)[1] if out.is_dir() else []
    if foreign:
        raise FileExistsError(
            f"{who}: {out / 'tensorboard' / foreign[0].name}"
            f"{f' (and {len(foreign) - 1} more)' if len(foreign) > 1 else ''} was not written "
            "by fxprune, and TensorBoard would show it as part of the new run's logs; move it "
            "out of the folder, choose another --out, or --set log.tensorboard=false")


def _refuse_foreign(out: Path, who: str, would: str, skip: tuple[str, ...] = (),
                    option: str = "--out") -> None:
    """FileExistsError naming every run file in ``out`` (but ``skip``) its marker does not
    record fxprune writing as it is now (a user's file of that name, or one changed since)."""
    foreign = [name for name in foreign_run_files(out) if name not in skip]
    if not foreign:
        return
    them = ", ".join(foreign)
    if who == "--resume" and (out / RUN_MARKER).is_file() and _marker_data(out) == {}:
        # its marker, not its files (break209 F8: an empty or cut marker, what a power loss
        # can leave, was "not written by fxprune" of every file the run wrote); a start over
        # keeps the refusal as it is: the files may be the user's
        raise FileExistsError(
            f"{who}: {out / RUN_MARKER}, the record of the files fxprune wrote there, is empty "
            f"or cut (a power loss or a full disk?), so {them} cannot be told from files of "
            f"yours: move them out of the folder (--resume then goes on from the checkpoint, "
            f"its logs begun anew), or choose another {option}")
    raise FileExistsError(
        f"{who}: {them} in {out} {'was' if len(foreign) == 1 else 'were'} not written by "
        f"fxprune (or changed since), and "
        f"{would} {'it' if len(foreign) == 1 else 'them'}; move {'it' if len(foreign) == 1 else 'them'} "
        f"out of the folder, or choose another {option}")


def _user_entries(folder: Path) -> list[Path]:
    """What ``folder`` holds but the marker's temporary files (:func:`atomic_write`'s
    ``.fxprune-run.<8 hex>.tmp``), which a kill while a run claimed the folder leaves behind
    beside no marker (break58 #9: the run's own folder was then refused as the user's)."""
    return [p for p in folder.iterdir() if not _MARKER_TMP.fullmatch(p.name)]


def _some_names(folder: Path) -> str:
    """The first three names in ``folder``, sorted, and "..." when there are more."""
    names = sorted(p.name for p in _user_entries(folder))
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


_MARKER_TEXT = ("This folder holds a fxprune train run; fxprune writes here only these files: "
                f"{', '.join(RUN_FILES)} and tensorboard/.\n")


_OLD_MARKER_OPENING = "This folder holds a fxprune train run"
_MARKER_TMP = re.compile(re.escape(f".{RUN_MARKER}.") + r"[0-9a-f]{8}\.tmp")
# the names atomic_write gives the temporary files of run files and of the marker
_TEMP_NAME = re.compile(r"\.(?:" + "|".join(re.escape(n) for n in (*RUN_FILES, RUN_MARKER))
                        + r")\.[0-9a-f]{8}\.tmp")
# An older fxprune recorded "pending" before a write, matching any file later found there
# (break58 #2: a user's file put there after a kill counted as fxprune's); it is still read so.
_OLD_PENDING = "pending"


def _marker_data(out: Path) -> dict | None:
    """The marker's record (``{"written": ..., "temps": ...}``); None for a marker of an older
    fxprune, which recorded nothing; ``{}`` for one that cannot be read."""
    try:
        text = (out / RUN_MARKER).read_text()
    except (OSError, UnicodeDecodeError):
        return {}
    opening, _, tail = text.partition("\n")
    if not tail.strip():
        return None if opening.startswith(_OLD_MARKER_OPENING) else {}
    try:
        data = json.loads(tail)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _marker_record(out: Path) -> tuple[dict | None, list[str]]:
    """What ``out``'s marker records, read once: ``(written, temps)``.

    ``written``: {file name: [size, mtime_ns, sha256], or a pending write's states} of the run
    files fxprune wrote in ``out``; None for a marker of an older fxprune, which recorded none.
    A marker that cannot be read records nothing: every file counts as the user's (break54 #1:
    a marker emptied by a kill read as an old one, and --overwrite removed a user's file).
    ``temps``: the temporary files' names :func:`atomic_write` recorded before creating them,
    beside run files, and has not yet renamed or removed: what a kill mid-write leaves."""
    data = _marker_data(out)
    if data is None:
        return None, []
    written, temps = data.get("written"), data.get("temps")
    return (written if isinstance(written, dict) else {},
            [t for t in temps if isinstance(t, str)] if isinstance(temps, list) else [])


def _written(out: Path) -> dict | None:
    """The marker's ``written`` record (:func:`_marker_record`)."""
    return _marker_record(out)[0]


def _temps(out: Path) -> list[str]:
    """The marker's ``temps`` record (:func:`_marker_record`)."""
    return _marker_record(out)[1]


def _write_marker(out: Path, written: dict, temps: list[str],
                  events: list[str] | None = None) -> None:
    """The marker, replaced whole (a temporary file renamed over it): rewritten in place, a
    kill between the truncation and the write left it empty (break54 #1). ``temps``: the
    temporary names to record; ``events``: the TensorBoard event files to record (None: those
    the marker records now, if it records any)."""
    if events is None:
        data = _marker_data(out)
        events = data.get("events") if isinstance(data, dict) else None
    atomic_write_text(out / RUN_MARKER, _MARKER_TEXT + json.dumps(
        {"written": written, **({"temps": sorted(set(temps))} if temps else {}),
         **({"events": sorted(set(events))} if isinstance(events, list) else {})}) + "\n")


_EVENT_FILES = "events.out.tfevents.*"  # what SummaryWriter names its files


def _event_files(out: Path) -> tuple[list[Path], list[Path]]:
    """TensorBoard event files in ``out/tensorboard``: ``(fxprune's, the others)``.

    The marker names the event files the run's writers created (break148 F10: a fresh start
    removed every event file there, a user's too). A marker of an earlier fxprune, which named
    none, adopts them all, as that fxprune did; one that cannot be read adopts none."""
    board = out / "tensorboard"
    found = sorted(p for p in board.glob(_EVENT_FILES) if p.is_file()) if board.is_dir() else []
    data = _marker_data(out)
    if data is None or ("written" in data and "events" not in data):
        return found, []
    events = data.get("events", [])  # (review153 F4: a damaged record names none)
    ours = {e for e in events if isinstance(e, str)} if isinstance(events, list) else set()
    return [p for p in found if p.name in ours], [p for p in found if p.name not in ours]


def _record_events(out: Path, names: list[str]) -> None:
    """Name ``names`` (in ``out/tensorboard``) in the marker as the run's event files."""
    written, temps = _marker_record(out)
    if written is not None:  # (an older fxprune's marker adopts every event file anyway)
        _write_marker(out, written, temps, names)


def _record_temp(path: Path, tmp: Path, *, add: bool) -> None:
    """Record (``add``) or forget the temporary file ``tmp`` of the run file ``path`` in the
    marker: a start removes exactly the recorded ones a kill left (break61 #7: it removed any
    file named like one, the user's too)."""
    out = path.parent
    if path.name not in RUN_FILES or not (out / RUN_MARKER).is_file():
        return
    written, temps = _marker_record(out)
    if written is None:  # an older fxprune's marker: a temporary name is no reason to rewrite it
        return
    if add == (tmp.name in temps):
        return
    _write_marker(out, written, [*temps, tmp.name] if add else [t for t in temps if t != tmp.name])


def file_record(path: str | os.PathLike) -> list:
    """[size in bytes, mtime in ns, sha256 of the content] of a file fxprune writes, as the
    run and deploy markers record it (:func:`matches_file_record` compares one)."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, file_sha256(path)]


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's content, hex (how fxprune tells a copied file from another)."""
    path = Path(path)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unchanged(recorded, path: Path) -> bool:
    """``path`` is as the marker recorded it: same size and time, or (a run copied without its
    times: ``cp -r``, ``scp -r``; break57 #12) same size and content. A marker of an earlier
    fxprune recorded no content: its entries match by size and time only. A write in progress
    when the run was killed (``{"before": entry, "after": entry}``, or ``"appending"`` for a
    log row) matches the file before it or after it (a log: one that starts with the file
    before it), not any file: a user's file put there later is the user's (break58 #2)."""
    if recorded == _OLD_PENDING:
        return True
    if isinstance(recorded, dict):
        before, after = recorded.get("before"), recorded.get("after")
        return ((before is not None and (_unchanged(before, path) or (
                    recorded.get("appending") and _extends(before, path))))
                or (after is not None and _unchanged(after, path)))
    return matches_file_record(recorded, path)


def matches_file_record(recorded, path: str | os.PathLike) -> bool:
    """``path`` is the file a :func:`file_record` entry describes: same size, and the same
    modification time or (a folder copied without its times: ``cp -r``, ``scp -r``) the same
    content. An entry of an earlier fxprune, ``[size, mtime]``, matches by time only."""
    if not isinstance(recorded, list) or len(recorded) < 2:
        return False
    st = os.stat(path)
    if recorded[0] != st.st_size:
        return False
    return recorded[1] == st.st_mtime_ns or (len(recorded) > 2 and recorded[2] == file_sha256(path))


def _extends(before, path: Path) -> bool:
    """``path`` starts with the content ``before`` recorded (a log a row was appended to)."""
    if not isinstance(before, list) or len(before) < 3 or path.stat().st_size < before[0]:
        return False
    digest, left = hashlib.sha256(), before[0]
    with path.open("rb") as f:
        while left:
            block = f.read(min(left, 1 << 20))
            if not block:
                return False
            digest.update(block)
            left -= len(block)
    return digest.hexdigest() == before[2]


def _record_written(path: Path, *, from_file: Path | None = None, appending: bool = False,
                    done_tmp: Path | None = None) -> None:
    """Record ``path`` in its folder's run marker: a run's starts remove or replace only files
    the marker says fxprune wrote, unchanged since (break52 #2: --overwrite removed a user's
    model_dense.pt, which an SMCP run never writes). Before a write, ``from_file`` (the file
    about to be renamed to ``path``) or ``appending`` (a row about to be appended) records the
    write as pending: a kill mid-write leaves ``path`` as it was or as it was to be, and both
    stay fxprune's; after it, ``path`` is recorded as it is, and ``done_tmp`` (its temporary
    file, renamed to it) forgotten in the same marker write."""
    out = path.parent
    if path.name not in RUN_FILES or not (out / RUN_MARKER).is_file():
        return
    pending = from_file is not None or appending
    if not pending and not path.is_file():
        return
    written, temps = _marker_record(out)
    if written is None:  # an older fxprune's marker: its run files, trusted then, are adopted
        written = {name: file_record(out / name) for name in RUN_FILES if (out / name).is_file()}
    if pending:
        recorded = written.get(path.name)
        before = None  # the file as it is, where fxprune wrote it (else a kill leaves it foreign)
        if path.is_file() and _unchanged(recorded, path):
            before = recorded if isinstance(recorded, list) else file_record(path)
        if appending:
            now = {"before": before, "appending": True}
        else:  # a run file kept under another name (checkpoint.pt as checkpoint.prev.pt) has
            # its record already: no second hash of a checkpoint at every save (review149 F10)
            known = written.get(from_file.name) if from_file.parent == out else None
            st = from_file.stat()
            now = {"before": before, "after": known if isinstance(known, list) and len(known) > 2
                   and known[:2] == [st.st_size, st.st_mtime_ns] else file_record(from_file)}
    else:
        entry = written.get(path.name)
        after = entry.get("after") if isinstance(entry, dict) else None
        st = path.stat()  # the rename keeps the file: no second hash of a just-hashed file
        now = (after if isinstance(after, list) and after[:2] == [st.st_size, st.st_mtime_ns]
               else file_record(path))
    done = done_tmp is not None and done_tmp.name in temps
    if written.get(path.name) != now or done:
        written[path.name] = now
        _write_marker(out, written, [t for t in temps if t != done_tmp.name] if done else temps)


def foreign_run_files(out: Path) -> list[str]:
    """Run file names in ``out`` that its marker does not record as written by fxprune (or that
    changed since); none for an older fxprune's marker."""
    written = _written(out)
    if written is None:
        return []
    return [name for name in RUN_FILES if (out / name).is_file()
            and not _unchanged(written.get(name), out / name)]


def claim_out_folder(out: Path, *, overwrite: bool = False) -> None:
    """Create ``out`` if need be, take its lock (:func:`lock_out_folder`) and write its marker.

    A folder that did not exist at :func:`check_out_folder` was not locked then: another
    train may have created it and finished a run there since, which this start's fresh logs
    would remove (break60 #2). It is checked again under the lock (``overwrite`` as given)."""
    unlocked = os.path.realpath(out) not in _LOCKS
    out.mkdir(parents=True, exist_ok=True)
    lock_out_folder(out)
    if unlocked and _user_entries(out):
        check_out_folder(out, resume=False, overwrite=overwrite)
    # a kill mid-write leaves its temporary file (checkpoint-sized): the recorded ones go, and
    # the marker's own (its name is the marker's, which no user file takes)
    written, temps = _marker_record(out)
    for leftover in [*(out / t for t in temps), *(p for p in out.iterdir()
                                                  if _MARKER_TMP.fullmatch(p.name))]:
        if (leftover.parent == out and leftover.is_file() and not leftover.is_symlink()
                and _TEMP_NAME.fullmatch(leftover.name)):
            leftover.unlink(missing_ok=True)
    if not (out / RUN_MARKER).exists():
        _write_marker(out, {}, [], [])
    elif temps and written is not None:
        _write_marker(out, written, [])


_LOCKS: dict[str, int] = {}  # run folder (real path) -> the open folder this process locks


def lock_out_folder(out: Path) -> None:
    """Hold an exclusive ``flock`` on the folder ``out`` until :func:`release_out_folder` or
    the process ends (a kill releases it): a second ``fxprune train`` with the same ``--out``
    is refused, where before both wrote the same checkpoint and logs (break58 #3). Taken again
    by the same process, it is a no-op; a folder that does not exist yet is locked when
    claimed. Where ``fcntl`` is missing (Windows) nothing is locked.

    Raises FileExistsError when another process holds the lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return
    key = os.path.realpath(out)
    if key in _LOCKS or not out.is_dir():
        return
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise FileExistsError(f"--out {out} is in use: another fxprune run is writing there "
                              "(it holds the folder's lock; after a kill, its data-loader "
                              "workers hold it for a few seconds more); wait for it to end, "
                              "or choose another --out") from None
    _LOCKS[key] = fd


def release_out_folder(out: Path) -> None:
    """Let go of :func:`lock_out_folder`'s lock on ``out`` (nothing when not held)."""
    fd = _LOCKS.pop(os.path.realpath(out), None)
    if fd is not None:
        os.close(fd)  # closing the last descriptor of the open folder releases its flock


def _interrupt(signum, frame):
    raise KeyboardInterrupt


class _StreamOutlivingReader:
    """A text stream (``sys.stdout``, ``sys.stderr``) whose writes survive the reader going
    away: on the first EPIPE its file descriptor is pointed at ``os.devnull``, so the rest is
    dropped, not raised. Every other attribute is the stream's own."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._drop_the_rest()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._drop_the_rest()

    def _drop_the_rest(self) -> None:
        try:
            fd = self._stream.fileno()
        except (OSError, ValueError, AttributeError):  # a stream with no descriptor
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)
        try:
            self._stream.flush()  # what the stream still buffers, now into devnull
        except OSError:
            pass

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def outlive_reader():
    """Within the block, a reader of stdout or stderr that goes away (``fxprune train ... |
    head``) no longer stops the command: the rest of its console output is dropped and the
    work goes on to its end, its files written. A training run's output is its run folder,
    so a log reader that leaves must not cost an epoch in progress (break158 F1: it stopped
    with "error: Broken pipe" before the epoch's checkpoint). The streams before are put
    back on leaving."""
    import sys

    before = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (_StreamOutlivingReader(s) if s is not None else s for s in before)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = before


@contextlib.contextmanager
def stop_on_sigterm():
    """Within the block, SIGTERM (``kill``, ``timeout``, a scheduler) stops the command as
    Ctrl-C does: a KeyboardInterrupt its ``run`` catches, which leaves the files consistent
    and says so in one line (``fxprune train``, ``fxprune deploy``). The handler before is put
    back on leaving: ``fxprune.cli.main`` called from a program (a notebook, a test runner)
    left SIGTERM raising KeyboardInterrupt in whatever that program ran next (review146 F5).
    Set from the main thread only, where Python allows signal handlers."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:  # (None: a handler not set from Python, which cannot be set back from it)
        signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)


def check_replaceable(path: str | os.PathLike) -> None:
    """Refuse to replace ``path`` where a plain ``open(path, "w")`` would not write it: a
    read-only file (PermissionError), or a symbolic link, which a rename would swap for a new
    file, the file it points to unchanged (FileExistsError). :func:`atomic_write`'s rename
    needs write permission on the folder only, so a read-only table of another user was
    replaced (break164 F1). Nothing is raised for a path that does not exist."""
    path = Path(path)
    if path.is_symlink():
        raise FileExistsError(f"{path} is a symbolic link (to {os.readlink(path)}): writing "
                              "would replace the link with a new file, not write the file it "
                              "points to; pass that file's own path, or remove the link")
    if path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(f"{path} is read-only for this user, so it is not replaced; "
                              "choose another path, or make it writable if it is yours to "
                              "replace")


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp)`` on a fresh temporary file beside ``path``, then rename it over
    ``path``: a crash mid-write leaves no truncated ``path`` behind, and the temporary name is
    new (created with ``O_EXCL``), so no file of the user's is replaced on the way (the partial
    file is removed on failure). The file gets the umask's permissions, as a plain ``open``
    would (``mkstemp``'s would be owner-only)."""
    import uuid

    path = Path(path)  # as given: callers expand ~ where they take paths from users
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; pass a file path")
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:  # the name's first 100 characters: a long name stays within NAME_MAX
        tmp = path.with_name(f".{path.name[:100]}.{uuid.uuid4().hex[:8]}.tmp")
        if tmp.exists():
            continue
        # recorded before it exists: a kill at any point leaves no unrecorded temporary file
        # of a run file (one named in the record that never came to be is no harm)
        _record_temp(path, tmp, add=True)
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:  # another file took the name since: not ours to remove
            _record_temp(path, tmp, add=False)
            continue
    try:
        write(tmp)
        _record_written(path, from_file=Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        _record_temp(path, tmp, add=False)
        raise
    _record_written(path, done_tmp=tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def torch_save_to(obj: Any, tmp: str | os.PathLike) -> None:
    """``torch.save(obj)`` into a new file ``tmp``, through a file object: to a path, the zip's
    root folder was the file's random name, so two identical runs wrote different bytes
    (break188 F7). A disk that fills mid-file raises the OSError naming it (ENOSPC): torch's
    zip writer raised its own "unexpected pos" RuntimeError over it (review149 F3, break206
    F2: only a write that failed at the end, as into /dev/full, showed the OSError). The file
    is synced to the disk before it returns."""
    with open(tmp, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as exc:
            cause = exc.__context__ or exc.__cause__
            while cause is not None and not isinstance(cause, OSError):
                cause = cause.__context__ or cause.__cause__
            if cause is None:
                raise
            raise cause from None
        # on the disk before the rename that makes it the file: after a power loss the name
        # holds the new file or the old one, never an empty one (break206 F6)
        f.flush()
        os.fsync(f.fileno())


def atomic_torch_save(obj: Any, path: Path, *, keep_previous: bool = False) -> None:
    """``torch.save`` through :func:`atomic_write`. ``keep_previous`` keeps an existing
    ``path`` as ``*.prev.pt`` first: a second name (a hard link) for it, so ``path`` itself is
    there at every moment, the old file until the new one replaces it in one rename. Moved
    away before, it was missing while the new file was hashed and recorded (break148 F1: 0.4 s
    an epoch at 100 MB; a kill then left no checkpoint.pt for --resume). Where the file
    system has no hard links it is moved, as before."""
    previous = path.with_name(path.stem + ".prev.pt")

    def write(tmp):
        torch_save_to(obj, tmp)
        if keep_previous and path.exists():
            _record_written(previous, from_file=path)
            previous.unlink(missing_ok=True)
            try:
                os.link(path, previous)
            except OSError:  # no hard links here (some network or FAT file systems)
                os.replace(path, previous)

    atomic_write(path, write)
    if keep_previous:
        _record_written(previous)  # (linked or renamed: atomic_write recorded path only)


def save_checkpoint(checkpoint: dict, path: Path) -> None:
    """Write to a temporary file, keep the previous checkpoint as ``*.prev.pt``, then rename:
    a crash mid-write loses at most the epoch being saved."""
    atomic_torch_save(checkpoint, path, keep_previous=True)


def move_tensors(obj, device):
    """``obj`` with every tensor in it (nested dicts, lists, tuples) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: move_tensors(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_tensors(v, device) for v in obj)
    return obj


def _layout_problem(ckpt: dict) -> str | None:
    """What in a checkpoint's nested layout the resume would trip on (None: nothing): the
    entries read without a default, each of the kind written (review126 #3: a hand-edited
    one raised KeyError/TypeError mid-setup, after the model was prepared)."""
    config, rng = ckpt["config"], ckpt["rng"]
    if not isinstance(config, dict):
        return f"config is a {type(config).__name__}, not the recipe's mapping"
    for section in ("optim", "prune"):
        if not isinstance(config.get(section), dict):
            return f"config lacks its {section!r} section"
    if type(config["optim"].get("epochs")) is not int:
        return "config's optim.epochs is not an integer"
    if not isinstance(ckpt["elapsed_s"], (int, float)) or isinstance(ckpt["elapsed_s"], bool):
        return f"elapsed_s is {ckpt['elapsed_s']!r}, not a number of seconds"
    layout = {"numpy": ("kind", "keys", "pos", "has_gauss", "cached"),
              "python": ("version", "words", "gauss")}
    if not isinstance(rng, dict) or not isinstance(rng.get("torch"), torch.Tensor):
        return "rng lacks the torch generator's state"
    for part, keys in layout.items():
        if not isinstance(rng.get(part), dict) or not set(keys) <= set(rng[part]):
            return f"rng lacks {part}'s generator state (entries {', '.join(keys)})"
    return None


def _edited_since_written(path: Path) -> bool:
    """``path`` (a run's checkpoint.pt) is not a file the folder's marker records the run
    writing: neither its checkpoint.pt nor its checkpoint.prev.pt, which fxprune's own advice
    moves into place (review149 F4). False where no marker records files."""
    written = _written(path.parent) if (path.parent / RUN_MARKER).is_file() else None
    if not written or path.name not in RUN_FILES:
        return False
    prev = path.with_name(path.stem + ".prev.pt")
    return not any(_unchanged(written.get(name), path) for name in (path.name, prev.name)
                   if written.get(name) is not None)


def zip_damage(path: Path) -> str | None:
    """What fails in the zip ``torch.save`` wrote at ``path`` (None: nothing, or not a zip,
    which ``torch.load`` reports). Each record is read whole, which checks its CRC-32: torch.load
    checks none, and a flipped bit was resumed without a word and shipped in model_pruned.pt
    (break148 F2). A record stored with CRC 0 (``torch.serialization.set_crc32_options(False)``)
    is not checked; a zip index that does not parse is damage too (review149 F1)."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC == 0 and info.file_size:  # written without CRCs (review149 F2)
                    continue
                try:
                    with archive.open(info) as record:
                        while record.read(1 << 22):
                            pass
                except Exception as exc:  # noqa: BLE001 - a record that does not read whole
                    return (f"its record {info.filename} fails the zip's checksum"
                            if "CRC" in str(exc) else
                            f"its record {info.filename} does not read ({first_line(exc) or type(exc).__name__})")
    except zipfile.BadZipFile as exc:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
        return f"its zip index does not read ({first_line(exc) or type(exc).__name__})" if is_zip else None
    except OSError:
        return None  # (unreadable: torch.load says so)
    except Exception as exc:  # noqa: BLE001 - a damaged index fails in many ways
        return f"its zip index does not read ({first_line(exc) or type(exc).__name__})"
    return None


def start_over(checkpoint: Path) -> str:
    """The way to start over in the folder of an unusable ``checkpoint``: ``--overwrite``
    replaces fxprune's own files only, so a checkpoint changed since fxprune wrote it (cut
    short, edited) is to be moved out first (break158 F4: --overwrite refused the advice)."""
    if checkpoint.name in foreign_run_files(checkpoint.parent):
        return (f"move {checkpoint.name} out of the folder (it changed since fxprune wrote it), "
                "then start over with --overwrite")
    return "start over with --overwrite"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def load_checkpoint(path: Path, device) -> dict:
    """A checkpoint written by :func:`save_checkpoint`, read with ``weights_only=True``
    (tensors and plain data only: loading it runs no code), its tensors on ``device`` but the
    random generators' states, which stay CPU tensors (what :func:`set_rng_state` takes).
    Raises :class:`CheckpointError` (one line, with the way out) for a file that is not one,
    damaged, of another format, or edited into a layout the resume cannot read."""
    prev = path.with_name(path.stem + ".prev.pt")
    # (a kill between keeping the old file as prev and renaming the new one in leaves both
    # names on one file: then prev holds no other epoch; review149 F10)
    way_out = (f"{prev} holds the epoch before it: move it to {path.name} and --resume again, "
               f"or {start_over(path)}" if prev.is_file() and not _same_file(prev, path)
               else f"{start_over(path)}, or use another --out")
    damage = zip_damage(path)
    if damage is not None:
        raise CheckpointError(f"--resume: checkpoint {path} is damaged: {damage}; {way_out}")
    try:
        # on the CPU first: the RNG states must stay there (review126 #1: mapped to the GPU,
        # torch.set_rng_state refused them and a CUDA run could not resume)
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read means the file is unusable
        why = first_line(exc) or type(exc).__name__
        with open(path, "rb") as f:
            head = f.read(4)
        if path.stat().st_size == 0:
            why = "the file is empty"
        elif not (head == b"PK\x03\x04" or head[:1] == b"\x80"):  # torch.save's zip, or a pickle
            # (torch's weights-only loader says "weights only" of any file: break98 F3)
            why = "not a file torch.save wrote: neither a zip nor a pickle"
        elif isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower():
            raise CheckpointError(
                f"--resume: checkpoint {path} holds Python objects beyond tensors and plain data "
                f"(written by fxprune before 0.1's checkpoint format 2, or by another program), "
                f"and loading them would run code the file carries; resume it with the fxprune "
                f"that wrote it, or {way_out}") from None
        raise CheckpointError(f"--resume: checkpoint {path} is damaged or not a fxprune "
                              f"checkpoint ({why[:200]}); {way_out}") from None
    needed = {"format", "epoch", "step", "elapsed_s", "config", "model", "optimizer", "scheduler",
              "rng"}
    if not isinstance(ckpt, dict) or not needed <= set(ckpt):
        raise CheckpointError(f"--resume: {path} is not a fxprune train checkpoint (it lacks "
                              f"{sorted(needed - set(ckpt) if isinstance(ckpt, dict) else needed)}"
                              f"); {way_out}")
    if ckpt["format"] != CHECKPOINT_FORMAT:  # a newer fxprune's would be half understood
        raise CheckpointError(f"--resume: {path} is checkpoint format {ckpt['format']!r}, and "
                              f"this fxprune reads format {CHECKPOINT_FORMAT}; resume it with "
                              f"the fxprune that wrote it, or {way_out}")
    # checkpoints may be edited by hand (README): a count that is not one trained a run
    # labelled "epoch -2/12" on a schedule run past its end, or raised deep in the loop (break103 F1)
    for key in ("epoch", "step"):
        if type(ckpt[key]) is not int or ckpt[key] < 0:
            raise CheckpointError(f"--resume: {path} has {key} {ckpt[key]!r}, not a count (an "
                                  f"integer >= 0): the file was edited or damaged; {way_out}")
    if ckpt["step"] < ckpt["epoch"]:  # every epoch runs at least one step
        raise CheckpointError(f"--resume: {path} is at step {ckpt['step']} of epoch "
                              f"{ckpt['epoch']}, fewer steps than epochs: the file was edited or "
                              f"damaged; {way_out}")
    problem = _layout_problem(ckpt)
    if problem is not None:
        raise CheckpointError(f"--resume: {path} cannot be resumed: its {problem} (the file was "
                              f"edited or damaged); {way_out}")
    if _edited_since_written(path):  # (edits are allowed: the README's)
        warnings.warn(f"--resume: {path} is not the file this run wrote (edited since, or "
                      "damaged); resuming from it as it is", RuntimeWarning, stacklevel=2)
    if torch.device(device).type != "cpu":
        ckpt = {k: v if k == "rng" else move_tensors(v, device) for k, v in ckpt.items()}
    return ckpt



# ----------------------------------------------------------------------------- RNG states

def rng_state(device: torch.device | str | None = None) -> dict:
    """The CPU RNGs' states (torch, NumPy, Python) and, for a CUDA ``device``, its generator's,
    as tensors and plain data (loadable with ``weights_only=True``).

    Only the training device's generator: every visible GPU's (``get_rng_state_all``) made a
    checkpoint written where more GPUs were visible fail to resume with an IndexError
    (review175 F2)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, words, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
             "python": {"version": version, "words": list(words), "gauss": gauss}}
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | str | None = None) -> None:
    """Restore what :func:`rng_state` saved; the CUDA generator's state goes to ``device`` (under
    torchrun each process's own GPU: every process starts from the same seed, so rank 0's state
    is each one's). A checkpoint from before, which saved every visible GPU's, gives the state
    of the GPU at ``device``'s index where it has one."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["words"]), p["gauss"]))
    device = torch.device(device) if device is not None else None
    if device is None or device.type != "cuda":
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    saved = state.get("cuda_device")
    if saved is None and index < len(state.get("cuda") or ()):
        saved = state["cuda"][index]
    if saved is not None:
        torch.cuda.set_rng_state(saved, device)



def config_changes(old: dict, new: dict, defaults: dict | None = None,
                   used: dict | None = None, new_defaults: dict | None = None) -> list[str]:
    """Flattened keys whose values differ; a key ``old`` lacks (a checkpoint written before the
    key existed, or a method argument left to its default) counts as its value in ``used``
    (flattened keys: what the run recorded it used), else in ``defaults``; a key ``new`` lacks
    counts as its value in ``new_defaults`` (what the resumed run builds with: the method's
    default, break76 #4: a default written out at the start was refused when left out)."""
    a, b = dotted_keys(old), dotted_keys(new)
    d = {**dotted_keys(defaults or {}), **(used or {})}
    nd = new_defaults or {}
    return sorted(k for k in set(a) | set(b) if a.get(k, d.get(k)) != b.get(k, nd.get(k)))


def save_module(module: nn.Module, path: Path,
                input_shape: tuple[int, ...] | None = INPUT_SHAPE) -> None:
    """Save a copy of ``module`` in eval mode with NCHW CPU weights (so the file loads
    anywhere; the training layout is not its concern) and ``input_shape`` as
    ``fxprune_input_shape`` (None: none recorded). ``module`` itself is left as it was
    (break35 #5)."""
    saved = copy.deepcopy(module).to("cpu", memory_format=torch.contiguous_format).eval()
    if input_shape is not None:
        record_input_shape(saved, input_shape)
    if is_finalized(module):  # (the copy kept it in meta, which the file does not keep)
        mark_finalized(saved)

    atomic_write(path, lambda tmp: torch_save_to(saved, tmp))


# ----------------------------------------------------------------------------- logs

def cost_columns(cost: Any) -> dict[str, Any]:
    """A pruner's ``cost()`` as CSV columns: a number is ``cost``, a mapping ``cost.KEY``."""
    if cost is None:
        return {}
    if isinstance(cost, dict):
        return {f"cost.{k}": _scalar(v) for k, v in cost.items()}
    return {"cost": _scalar(cost)}


def _scalar(v: Any) -> Any:
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    if isinstance(v, (np.generic,)):
        return v.item()
    return v


class CsvLog:
    """Rows appended to a CSV file whose header grows when new columns appear."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []
        self._cut = False  # the last row lacks its line end: cut mid-write
        if path.exists():
            with path.open(newline="") as f:
                text = f.read()
            self.rows = list(csv.DictReader(io.StringIO(text, newline="")))
            # a full disk (or quota) ends an append wherever it stops: a row cut in its step
            # number read as an earlier step, and the next row was glued onto it (break148
            # F3: step 36 logged as 336). A row without its line end is not a row.
            self._cut = bool(text) and not text.endswith("\n")
            if self._cut and self.rows:
                self.rows.pop()

    def truncate(self, key: str, last: int) -> None:
        """Drop rows written after the checkpoint being resumed (``key`` > ``last``), and a
        last row cut mid-write."""
        kept = [r for r in self.rows if int(float(r[key])) <= last]
        if len(kept) != len(self.rows) or self._cut:
            self.rows, self._cut = kept, False
            self._rewrite()

    def append(self, row: dict) -> None:
        header = self._header()
        self.rows.append(row)
        # a file with other hard links (a run copied with cp -al) is written anew, which
        # breaks the link: appended, the other run's log grew too (break206 F4)
        if set(row) - set(header) or not self.path.exists() or self.path.stat().st_nlink > 1:
            self._rewrite()
        else:
            _record_written(self.path, appending=True)
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=header).writerow(row)
            _record_written(self.path)

    def _header(self) -> list[str]:
        header: list[str] = []
        for r in self.rows:
            header += [k for k in r if k not in header]
        return header

    def _rewrite(self) -> None:
        def write(tmp):  # a fresh name: a fixed metrics.tmp replaced a user's file of that name
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self._header())
                writer.writeheader()
                writer.writerows(self.rows)

        atomic_write(self.path, write)


def tensorboard_writer(setting: Any, out: Path | None):
    """A function making the SummaryWriter for folder ``out`` (None: no TensorBoard)."""
    wanted = setting is True or (setting == "auto"
                                 and importlib.util.find_spec("tensorboard") is not None)
    if not wanted:
        return None
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("log.tensorboard is true but tensorboard is not installed: "
                          "pip install tensorboard, or --set log.tensorboard=false")
    from torch.utils.tensorboard import SummaryWriter

    return lambda out, purge_step=None: SummaryWriter(log_dir=str(out / "tensorboard"),
                                                      purge_step=purge_step)



class RunLogs:
    """``metrics.csv`` (a row per epoch), ``steps.csv`` (a row every ``log.every_steps``
    optimizer steps) and TensorBoard of a run in folder ``out``.

    Built on every process (so a missing tensorboard fails everywhere, before any work); only
    where ``main`` is true does it write, the other processes' calls do nothing.
    """

    def __init__(self, out: Path, tensorboard: Any, *, main: bool = True):
        self.out, self.main = out, main
        self._make_writer = tensorboard_writer(tensorboard, None)  # checks before any write
        self.writer = None
        self.metrics: CsvLog | None = None
        self.steps: CsvLog | None = None

    def open(self, cfg: dict, resumed_at: tuple[int, int] | None, *, overwrite: bool = False) -> None:
        """Claim the folder (``overwrite``: the start's --overwrite, see
        :func:`claim_out_folder`), write ``config.yaml``, and continue the logs of a run resumed
        at ``(epoch, step)`` (rows written after its checkpoint dropped) or start them afresh."""
        if not self.main:
            return
        claim_out_folder(self.out, overwrite=overwrite)
        # (break170 F8, review172 F11: re-created from the resumed epoch on, without a word;
        # every epoch writes a row to each)
        gone = [name for name in ("metrics.csv", "steps.csv") if not (self.out / name).is_file()]
        if resumed_at is not None and resumed_at[0] >= 1 and gone:
            warnings.warn(f"--resume: {' and '.join(str(self.out / n) for n in gone)} "
                          f"{'is' if len(gone) == 1 else 'are'} gone (the checkpoint's "
                          f"{resumed_at[0]} epoch(s) had written their rows there); "
                          f"{'it starts' if len(gone) == 1 else 'they start'} again at epoch "
                          f"{resumed_at[0] + 1}", RuntimeWarning, stacklevel=3)
        self.metrics, self.steps = CsvLog(self.out / "metrics.csv"), CsvLog(self.out / "steps.csv")
        if resumed_at is not None:
            self.metrics.truncate("epoch", resumed_at[0])
            self.steps.truncate("step", resumed_at[1])
        else:
            for log in (self.metrics, self.steps):
                log.rows = []
            # a fresh start (--overwrite): the last run's files go, so its checkpoint is not
            # kept as this run's checkpoint.prev.pt, nor its model/results read as this run's.
            # checkpoint.prev.pt first: a kill after checkpoint.pt went left the folder looking
            # like a run interrupted between its renames, and the advice to move prev back and
            # --resume retrained the old run's last epoch (break61 #4)
            for name in sorted(RUN_FILES, key=lambda n: (n != "checkpoint.prev.pt",
                                                         n != "checkpoint.pt")):
                (self.out / name).unlink(missing_ok=True)
        atomic_write_text(self.out / "config.yaml", dump_yaml(cfg))
        if self._make_writer is not None:
            # TensorBoard reads every event file of the folder as one run (break73 F2): a fresh
            # start removes the replaced run's, and a resumed one drops the steps logged after
            # its checkpoint (as steps.csv's rows), which the interrupted run had written
            ours = _event_files(self.out)[0]
            if resumed_at is None:  # only the files the marker names (a user's stay)
                for old in ours:
                    old.unlink(missing_ok=True)
                ours = []
            board = self.out / "tensorboard"
            before = set(board.glob(_EVENT_FILES))
            self.writer = self._make_writer(
                self.out, purge_step=resumed_at[1] + 1 if resumed_at is not None else None)
            _record_events(self.out, [p.name for p in ours] + [
                p.name for p in board.glob(_EVENT_FILES) if p not in before])

    def step_row(self, row: dict) -> None:
        if not self.main:
            return
        self.steps.append(row)
        if self.writer is not None:
            self.writer.add_scalar("train/loss_step", row["loss"], row["step"])

    def epoch_row(self, row: dict) -> None:
        if not self.main:
            return
        self.metrics.append(row)
        if self.writer is not None:
            # at the optimizer step the epoch ended on, as train/loss_step: a resume's purge
            # (steps after its checkpoint) then drops an epoch logged but not checkpointed too
            # (break76: killed between the two, the epoch showed twice)
            for k, v in row.items():
                if k not in ("epoch", "step") and isinstance(v, (int, float)):
                    self.writer.add_scalar(f"epoch/{k}", v, row.get("step", row["epoch"]))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def write_results(out: Path, results: dict) -> None:
    """``OUT/results.json``: the run's summary (what ``fxprune train`` prints)."""
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")


def format_results(results: dict) -> str:
    lines = [f"{'':22}{'dense':>14}{'final':>14}{'final/dense':>13}"]
    lines.append(f"{'params':22}{results['dense_params']:>14,}{results['params']:>14,}"
                 f"{results['params_ratio']:>13.3f}")
    lines.append(f"{'FLOPs (batch 1)':22}{results['dense_flops']:>14,}{results['flops']:>14,}"
                 f"{results['flops_ratio']:>13.3f}")
    lines.append(f"{'test accuracy':22}{'':>14}{results['accuracy']:>14.4f}")
    if "accuracy_masked" in results:
        lines.append(f"{'  masked (before fin.)':22}{'':>14}{results['accuracy_masked']:>14.4f}"
                     f"   ({results['finalize_mismatched_samples']} samples differ)")
        for k, v in results["pruner_cost"].items():
            shown = (f"{v:,}" if isinstance(v, int) and not isinstance(v, bool)
                     else f"{v:.4g}" if isinstance(v, float) else str(v))
            priced = f"   ({results['cost_model']} of dense)" if results.get("cost_model") else ""
            lines.append(f"{'  pruner ' + k:22}{'':>14}{shown:>14}{priced}")
    lines.append(f"method {results['method']}, {results['epochs']} epochs, "
                 f"{results['train_time_s']} s training; model: {results['model']}")
    if results.get("cost_timed_under_load"):
        lines.append(f"the latency table that priced this run had {results['cost_timed_under_load']} "
                     "timings taken under load (results.json: cost_timed_under_load)")
    if results.get("images_per_s") is not None:
        counts = results.get("process_counts") or []
        on = (" then ".join(str(c["world_size"]) for c in counts) + " processes (a resume "
              "changed the count; results.json: process_counts)" if len(counts) > 1
              else f"{results.get('world_size', 1)} process(es)")
        lines.append(f"throughput {results['images_per_s']:.1f} training images/s on {on}")
    return "\n".join(lines)

