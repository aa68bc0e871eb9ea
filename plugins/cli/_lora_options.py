"""Options shared by the LoRA and merge commands (inspect, convert, resize, combine, merge, merge-pair)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Tuple

from circle_rotate.cli._common import add_force
from circle_rotate.kernel.errors import UserError
from circle_rotate.tools.option_values import parse_lora_spec, parse_strength


def lora_arg(text: str) -> Tuple[Path, float]:
    """argparse type for ``FILE[:STRENGTH]``."""
    try:
        return parse_lora_spec(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def strength_arg(flag: str) -> Callable[[str], float]:
    """argparse type for a strength option: a finite number."""
    def parse(text: str) -> float:
        try:
            return parse_strength(text, key=flag)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def add_output_options(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int], *,
                       alpha: bool = True, json_help: str = "machine-readable output", force: bool = True) -> None:
    """``--alpha-if-missing``, ``--json`` and ``--force``, then bind ``run``."""
    if alpha:
        parser.add_argument("--alpha-if-missing", metavar="rank|N", default=None,
                            help="alpha to assume for a musubi/sd-scripts LoRA saved without alpha "
                                 "('rank' = scale 1); without it such a file is refused")
    parser.add_argument("--json", action="store_true", help=json_help)
    if force:
        add_force(parser)
    parser.set_defaults(func=run)
