"""The ``fxprune`` command: ``demo``, ``train CONFIG``, ``deploy MODEL``, ``plot INPUT...``, ``methods``.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; they are imported only when chosen, so ``fxprune deploy --help`` does
not pay for loading training code and vice versa.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import sys
import warnings

SUBCOMMANDS = {
    "demo": ("fxprune.demo", "prune half of every channel group of a torchvision model and report"),
    "train": ("fxprune.train", "train a YAML recipe dense or with a pruning method, then finalize"),
    "deploy": ("fxprune.deploy.cli", "export ONNX, build/time an engine, compare with a dense model"),
    "plot": ("fxprune.plot", "draw accuracy against measured latency or FLOPs for runs and benchmarks"),
    "methods": ("fxprune.methods.cli", "list the pruning methods (prune.method) and their arguments"),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fxprune")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


_PACKAGE_DIRS = tuple(os.path.dirname(importlib.util.find_spec(name).origin) + os.sep
                      for name in ("fxprune", "fxprune.deploy", "fxprune.passes"))


@contextlib.contextmanager
def _plain_warnings():
    """fxprune's own warnings as ``warning: MESSAGE``: on the command line, the library line a
    warning is attributed to (a registry building the method, say) tells the user nothing."""
    default = warnings.formatwarning

    def formatwarning(message, category, filename, lineno, line=None):
        if os.path.abspath(filename).startswith(_PACKAGE_DIRS):
            return f"warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = formatwarning
    try:
        yield
    finally:
        warnings.formatwarning = default


@contextlib.contextmanager
def _ctrl_c_after_loading():
    """Ctrl-C while a command's modules load (torch: seconds) takes effect once they have
    loaded: a KeyboardInterrupt raised inside a C++ extension's initialisation aborted the
    process (pybind11's terminate, status -6). A SIGINT the process ignores stays ignored."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    before = signal.getsignal(signal.SIGINT)
    if before is signal.SIG_IGN or before is None:
        yield
        return
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
    if received:
        raise KeyboardInterrupt


def done_with_signals() -> None:
    """The command has finished and written what it writes: Ctrl-C or SIGTERM in the seconds
    the interpreter takes to exit (garbage collection, torch's libraries) no longer changes its
    status (break170 F4: a finished run died by the signal, -2 or -15, or printed a
    traceback from an exit handler)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)


#: set by :func:`program`: the process ends with the command, so a command that has said how
#: it ends may leave SIGINT and SIGTERM ignored (``fxprune train``'s error lines: review177 F4)
AS_PROGRAM = False


def program() -> int:
    """The ``fxprune`` command (its console script, ``python -m fxprune``): :func:`main`, after
    which signals no longer change its status. A Python caller of :func:`main` keeps its
    handlers (review172 F2)."""
    global AS_PROGRAM
    AS_PROGRAM = True
    rc = main()
    done_with_signals()
    return rc


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _main(argv)
    except KeyboardInterrupt:
        # Ctrl-C before a command's own handler runs (loading torch takes seconds): one line
        # and 130, not a traceback and death by SIGINT (-2 to a Python caller; break162 F3)
        chosen = next((a for a in argv if not a.startswith("-")), None)
        who = f"fxprune {chosen}" if chosen in SUBCOMMANDS else "fxprune"
        print(f"{who}: interrupted while starting; nothing was done", file=sys.stderr)
        return 130


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fxprune",  # the docstring's first line, no rST marks
                                     description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--version", action="version", version=f"fxprune {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parsers = {}
    for name, (module, help_text) in SUBCOMMANDS.items():
        parsers[name] = p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            with _ctrl_c_after_loading():
                importlib.import_module(module).add_arguments(p)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # with the subcommand's usage, not the top level's (break98 F7)
        parsers.get(args.command, parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:  # a usage error as any other: usage and one line on stderr, 2
        # (break187 F8: the help on stdout, nothing on stderr; `fxprune --help` prints it)
        parser.print_usage(sys.stderr)
        print(f"fxprune: error: a command is required ({', '.join(SUBCOMMANDS)}); fxprune "
              "--help describes them", file=sys.stderr)
        return 2
    try:
        with _plain_warnings():
            rc = int(importlib.import_module(SUBCOMMANDS[args.command][0]).run(args) or 0)
        sys.stdout.flush()  # a closed pipe raises here, not in the interpreter's last flush
        return rc
    except BrokenPipeError:
        # the reader stopped (`fxprune methods | head`): stop quietly, as Unix tools do; stdout
        # goes to devnull so the interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:  # a command without its own handler (train's says what is saved)
        print(f"fxprune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(program())
