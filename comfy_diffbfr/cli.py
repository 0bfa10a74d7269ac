"""`python -m comfy_diffbfr COMMAND ...`: one module per command in `comfy_diffbfr.commands`.

Each command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
They are imported only when chosen, so a missing optional dependency of one command never
breaks the others.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys

from .errors import DiffBFRError
from .host.interrupt import Terminated, sigterm_as_exception

COMMANDS = ("restore", "faces", "inspect", "run", "degrade", "train", "eval")


def _command_module(name: str):
    return importlib.import_module(f"{__package__}.commands.{name}")


def _chosen(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m comfy_diffbfr", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = _chosen(argv)
    for name in COMMANDS:
        if name == chosen:
            module = _command_module(name)
            module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.HELP))
        else:
            sub.add_parser(name, help=f"see 'python -m comfy_diffbfr {name} --help'", add_help=False)
    return parser


def entry() -> int:
    """The process's entry point (``python -m comfy_diffbfr``, the ``comfy-diffbfr`` script): ``main``
    after the chosen command's imports ran without the cyclic garbage collector. Importing torch
    makes a few hundred thousand objects that live as long as the process; the collector would
    scan them over and over while they are made, and once more at exit (about 0.9 s of a 5 s
    ``restore`` here). Frozen, it leaves them alone; it still collects what the command makes."""
    argv = sys.argv[1:]
    chosen = _chosen(argv)
    if chosen in COMMANDS:
        gc.disable()
        try:
            _command_module(chosen)
        finally:
            gc.freeze()
            gc.enable()
    status = main(argv)
    gc.freeze()  # what the command made is freed by reference counting at exit, without a last scan
    return status


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 done; 1..125 that many input files failed (each reported, the others done);
    2 an error that stopped the run (bad arguments, missing weights, no input files); 130 Ctrl-C;
    143 SIGTERM; 141 stdout closed. An interrupted run leaves no partial file."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        with sigterm_as_exception():
            return int(_command_module(args.command).run(args) or 0)
    except DiffBFRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143  # 128 + SIGTERM
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`... | head`): stop quietly, like other command-line tools.
        _discard_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a tool stopped by a closed pipe


def _discard_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (e.g. captured in a test): nothing to flush
        pass
