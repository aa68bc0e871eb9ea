"""Helpers shared by command modules (argument types, output formatting)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_force(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="replace an existing output")


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def new_parser(sub, name: str, *, help: str, description: str, examples: str) -> argparse.ArgumentParser:
    """A sub-command parser with the house layout: help, description and an ``examples:`` epilog."""
    return sub.add_parser(name, help=help, description=description, epilog="examples:\n" + examples,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
