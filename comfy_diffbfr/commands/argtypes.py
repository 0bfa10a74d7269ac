"""argparse ``type=`` functions shared by the commands: a bad value is refused by argparse, whose
message names the flag the user typed (``argument --color-strength: must be a finite number in
[0, 1], got 'nan'``) and exits with status 2 before anything runs."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from ..params import Range


def number(allowed: Range) -> Callable[[str], int | float]:
    """One number in ``allowed`` (a whole number when ``allowed.whole``)."""

    def parse(text: str) -> int | float:
        value, problem = allowed.problem(text)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = "whole number" if allowed.whole else "number"
    return parse


def number_list(allowed: Range) -> Callable[[str], list]:
    """``N[,N...]``: one or more numbers in ``allowed``."""

    def parse(text: str) -> list:
        items = [item for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"takes a number or a comma list of numbers, got {text!r}")
        values = []
        for item in items:
            value, problem = allowed.problem(item)
            if problem is not None:
                raise argparse.ArgumentTypeError(f"each value {problem}")
            values.append(value)
        return values

    parse.__name__ = "number list"
    return parse


def output_folder(text: str) -> Path:
    """A folder to write into; "" (an unset shell variable, say) is refused rather than taken as '.'."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give a folder ('.' for the current one)")
    return Path(text)


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing files of the same name (never an input file); default: write "
                             "<stem>_00001.png etc. beside them")
