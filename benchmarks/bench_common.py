"""Helpers shared by the benchmark scripts (not part of the fxprune package)."""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import warnings
from pathlib import Path

import fxprune

RESULTS = Path(__file__).resolve().parent / "results"


def at_least(minimum: int):
    """An argparse ``type`` for a whole number ``>= minimum``: a count of epochs, threads,
    timed rounds (break167 F4-F8: ``--epochs -1`` trained nothing and exited 0, ``--batch 0``
    timed an empty batch for minutes, ``--threads 0`` was a traceback)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"whole number >= {minimum}"
    return parse


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):  # NaN passes any range check; inf is no rate or fraction
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    return value


def fraction_kept(text: str) -> float:
    """An argparse ``type`` for a target: the fraction of the dense cost to keep, in (0, 1]
    (break180 F1-F3: ``--target 2`` or ``0`` was found after the latency table or the dense
    rows had been timed or trained, as error rows with exit 0 or a traceback)."""
    value = _number(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"the fraction of the dense cost to keep, in (0, 1]; got {value:g}")
    return value


def positive(text: str) -> float:
    """An argparse ``type`` for a number > 0, such as a learning rate (break180 F3: ``--lr -1``
    was torch's traceback)."""
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value:g}")
    return value


def non_negative(text: str) -> float:
    """An argparse ``type`` for a number >= 0, such as SMCP's hysteresis (break182 F3:
    ``--hysteresis -1`` trained four rows, then was a traceback)."""
    value = _number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value:g}")
    return value


def run_script(main, resume: str = "",
               left: str = "no results file was written or changed") -> int:
    """Run a benchmark's ``main()`` as its ``__main__`` does: Ctrl-C is one line and status 130,
    not a traceback (break167 F9), saying what the results file holds (``left``: for a script
    that writes at the end, that it was left as it was) and how to resume (``resume``) where
    the script can."""
    try:
        return main()
    except KeyboardInterrupt:
        name = Path(sys.argv[0]).name
        print(f"{name}: interrupted; {left}" + (f"; {resume}" if resume else ""), file=sys.stderr)
        return 130


def changed_options(parser, args, ignore=()) -> list[str]:
    """The options of ``args`` that differ from ``parser``'s defaults, as ``--flag`` strings,
    leaving out ``--out``, ``--smoke`` and the ``ignore`` dests (options that do not change the
    figures: caches, progress bars, parallel jobs, run folders)."""
    skip = {"out", "smoke", *ignore}
    return [f"--{dest.replace('_', '-')}" for dest, value in vars(args).items()
            if dest not in skip and value != parser.get_default(dest)]


def given_options(parser, argv) -> set[str]:
    """The dests of the options typed on the command line ``argv`` (``None``: ``sys.argv``), in
    any spelling argparse takes (``--iters 3``, ``--iters=3``, an unambiguous prefix), so that a
    smoke mode's smaller defaults leave them as given (break56 #14: ``--iters=3`` was read as
    not given)."""
    import copy

    quiet = copy.deepcopy(parser)
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    return set(vars(quiet.parse_args(list(argv) if argv is not None else sys.argv[1:])))


def apply_smoke_defaults(parser, argv, args, smaller: dict) -> None:
    """Set ``args``' dests in ``smaller`` ({dest: value}) to a smoke run's value, unless the
    option was typed (:func:`given_options`): what was given stays."""
    given = given_options(parser, argv)
    for dest, value in smaller.items():
        if dest not in given:
            setattr(args, dest, value)


def results_stem(name: str, out=None, smoke: bool = False, changed=(), *, keys=(),
                 meta_keys=(), files=(".json", ".md")) -> Path:
    """Where a benchmark writes its ``.json`` and ``.md``: ``out`` when given (a ``.json`` or
    ``.md`` ending dropped), else ``benchmarks/results/NAME``, or ``NAME_smoke`` for a smoke
    run, so that a smoke run's figures never replace the published ones (git ignores
    ``*_smoke.*`` there). A run with ``changed`` options (:func:`changed_options`: another
    protocol than the published one) needs ``out`` when ``NAME.json`` is there, so that a shrunk
    run does not replace the published figures either.

    The files the benchmark writes (``files``: the endings) may replace only the benchmark's own
    earlier results: an existing ``STEM.json`` must be a JSON object with the top-level ``keys``
    (and ``meta_keys`` in its ``"meta"``) that this benchmark's results file has, and a
    ``STEM.md`` is replaced only beside such a ``STEM.json``; anything else (a user's file at the
    path typed for ``--out``) is refused. Exits with a one-line message for such a file, a
    shrunk run without ``out``, an empty ``out`` or a folder."""
    stem = _stem(name, out, smoke, changed)
    _refuse_other_files(stem, keys, meta_keys, files)
    refuse_unwritable(stem, files)
    return stem


def refuse_unwritable(stem: Path, files=(".json", ".md"), option: str = "--out") -> None:
    """Exit (one line) before any work if the results cannot be written at ``stem`` (``option``:
    the command-line option that chose it): the scripts write at the end, and a read-only folder
    was found after hours (break167 F3). The folder is checked as ``fxprune train`` checks its
    own (:func:`fxprune.run_io.unwritable_folder`: a missing one by a file tried in its nearest
    existing parent), each results file as :func:`fxprune.run_io.check_replaceable` does."""
    from fxprune.run_io import check_replaceable, unwritable_folder

    why = unwritable_folder(stem.parent)
    try:
        for ending in () if why else files:
            check_replaceable(f"{stem}{ending}")
    except OSError as exc:
        why = str(exc)
    if why:
        usage_error(f"cannot write at {stem} ({why}); choose another {option}")


def refuse_unusable_run_folder(out: Path, what: str) -> None:
    """Exit (one line) before any training if the run folder ``out`` (a row's, under
    ``--runs-dir``; ``what`` names the row) cannot take the row's run: it holds files fxprune
    did not write, or is no folder (the check ``fxprune train --overwrite`` makes there).
    (break180 F6: a traceback once the row's turn came, after the rows before it had trained,
    and naming ``--out``, an option the user never typed.)"""
    from fxprune.run_io import check_out_folder

    try:  # (review181 F6: run_io's --out messages were rewritten by a regex)
        check_out_folder(Path(out), resume=False, overwrite=True, option="--runs-dir",
                         called=f"{what}: its run folder")
    except OSError as exc:
        usage_error(str(exc))


def _stem(name: str, out, smoke: bool, changed) -> Path:
    if out is None:
        stem = RESULTS / (f"{name}_smoke" if smoke else name)
        if changed and not smoke and Path(f"{stem}.json").exists():
            verb = "changes" if len(changed) == 1 else "change"
            usage_error(f"{' '.join(changed)} {verb} the published protocol, and this run would "
                         f"replace benchmarks/results/{name}.json; give --out PATH "
                         f"(e.g. --out /tmp/{name}; --out benchmarks/results/{name} replaces it)")
        return stem
    stem = Path(out)
    if not str(out).strip():
        usage_error(f"--out is empty; give a path without extension, e.g. /tmp/{name} "
                     f"(writes /tmp/{name}.json and .md)")
    if stem.is_dir() or str(out).endswith(("/", os.sep)):
        usage_error(f"--out {out} is a folder; give a path without extension inside it, "
                     f"e.g. {stem / name}")
    return stem.with_suffix("") if stem.suffix in (".json", ".md") else stem


def _refuse_other_files(stem: Path, keys, meta_keys, files) -> None:
    """Exit (one line) if a file ``stem`` + ``files`` exists that this benchmark did not write
    (see :func:`results_stem`)."""
    results = Path(f"{stem}.json")
    if results.exists():
        if not _is_results_file(results, keys, meta_keys):
            usage_error(f"{results} exists and is not this benchmark's results file; it would "
                         "be replaced: choose another --out (or move the file away)")
        return
    for ending in files:
        other = Path(f"{stem}{ending}")
        if ending != ".json" and other.exists():
            usage_error(f"{other} exists beside no {results.name} of this benchmark; it would "
                         "be replaced: choose another --out (or move the file away)")


def _is_results_file(path: Path, keys, meta_keys) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if not isinstance(data, dict) or not all(k in data for k in keys):
        return False
    return not meta_keys or (isinstance(data.get("meta"), dict)
                             and all(k in data["meta"] for k in meta_keys))


def first_line_of(path) -> str | None:
    """``path``'s first line (a file a benchmark recognises as its own by it), None where it
    cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().rstrip("\n")
    except OSError:
        return None


class UsageError(SystemExit):
    """Status 2, its message (already printed) as its text: ``pytest.raises(match=)`` and a
    caller of ``main()`` read what the user read."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def usage_error(message: str):
    """Exit as argparse does on a bad argument, without its usage line: ``SCRIPT: error:
    message``, one line on stderr, status 2 (the form of argparse's own last line, which the
    same script's other refusals print: review183 R8; break187 F4: others exited 1 with a
    bare message)."""
    print(f"{os.path.basename(sys.argv[0]) or 'benchmark'}: error: {message}", file=sys.stderr)
    raise UsageError(message)


def device_problem(exc: Exception) -> str:
    """Why ``torch_backend.resolve_device`` refused a device, without the way out it gives
    deploy's users: their ``--backend``, an option the benchmarks lack (break80 F10, break83
    F5)."""
    return str(exc).split("; use device")[0].replace("the torch backend was asked for", "asked for")


@contextlib.contextmanager
def timing_setup_warnings_off():
    """Within the block, the library's warnings about the timing set-up itself are not shown:
    the benchmarks mask half the channels before building a pruner (the mid-ramp worst case),
    and bench_gpu steps two pruners on one model in turn, which SMCP rightly takes for a
    resumed run or a stray second pruner in a training loop (break167 F14: a user reproducing
    the figures saw four warnings they could not act on)."""
    with warnings.catch_warnings():
        for said in (r"the model's masks already pruned \d+ channels",
                     r"a \w+ pruner was built on this model after this one"):
            warnings.filterwarnings("ignore", message=r"\w+\.step\(\) at step \d+: " + said,
                                    category=RuntimeWarning)
        yield


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
