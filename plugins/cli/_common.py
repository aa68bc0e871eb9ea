"""Helpers shared by command modules (argument types, output formatting)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from circle_rotate.kernel.errors import UserError


def add_force(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="replace an existing output")


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def new_parser(sub, name: str, *, help: str, description: str, examples: str) -> argparse.ArgumentParser:
    """A sub-command parser with the house layout: help, description and an ``examples:`` epilog."""
    return sub.add_parser(name, help=help, description=description, epilog="examples:\n" + examples,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def add_out(parser: argparse.ArgumentParser, *, help: str, required: bool = False, default=None,
            metavar: str = "PATH") -> None:
    """``-o/--out``: the file or folder the command writes (the one spelling every command uses)."""
    parser.add_argument("-o", "--out", type=Path, required=required, default=default, metavar=metavar, help=help)


class _Deprecated(argparse.Action):
    """An old spelling, still accepted for one release: prints one line naming the new one."""

    def __init__(self, option_strings, dest, *, new: str, nargs=None, const=None, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, nargs=nargs, const=const, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        deprecation(parser.prog, option_string or self.dest, self.new)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def deprecation(prog: str, old: str, new: str) -> None:
    print(f"{prog}: note: {old} is deprecated and goes in the next release; use {new}", file=sys.stderr)


def add_alias(parser: argparse.ArgumentParser, *flags: str, dest: str, new: str, switch: bool = False,
              **kwargs) -> None:
    """Hidden old spelling ``flags`` of the option stored in ``dest`` (``switch``: it takes no value)."""
    if switch:
        kwargs.update(nargs=0, const=True)
    parser.add_argument(*flags, dest=dest, action=_Deprecated, new=new, help=argparse.SUPPRESS,
                        default=argparse.SUPPRESS, **kwargs)


def add_legacy_out(parser: argparse.ArgumentParser) -> None:
    """The old positional OUT (``convert SRC OUT``), hidden; :func:`out_path` reads it with a deprecation line."""
    parser.add_argument("legacy_out", nargs="?", type=Path, default=None, help=argparse.SUPPRESS)


def out_path(args: argparse.Namespace, prog: str) -> Optional[Path]:
    """``-o/--out``, or the old positional OUT (with its deprecation line); never both."""
    legacy = getattr(args, "legacy_out", None)
    if legacy is None:
        return args.out
    if args.out is not None:
        raise UserError(f"the output is given twice: -o {args.out} and {legacy}", fix=f"keep only -o {args.out}")
    deprecation(prog, "the positional OUT", f"-o {legacy}")
    return legacy
