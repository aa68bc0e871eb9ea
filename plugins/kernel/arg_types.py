"""argparse types the commands and the benchmarks share: a bad number is a usage error naming the
option, never a traceback from deep inside the run."""

from __future__ import annotations

import argparse
from typing import Callable


def whole_number(minimum: int = 1) -> Callable[[str], int]:
    """An int of at least ``minimum`` (``--repeat 0`` would end in a median of nothing)."""

    def parse(text: str) -> int:
        value = int(text) if text.isdigit() else None  # digits only, as train's --nodes always took them
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of at least {minimum}")
        return value

    parse.__name__ = f"whole number of at least {minimum}"
    return parse


def positive_number(text: str) -> float:
    """A float above 0 (a share, a scale, a relative size)."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"'{text}' is not a number above 0, e.g. 0.05")
    return value


def frame_size(text: str) -> tuple:
    """'832x480' -> (832, 480); both sides at least 1 pixel."""
    try:
        w, h = (int(v) for v in text.lower().replace("*", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 832x480, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"{text!r} has a side under 1 pixel; give WIDTHxHEIGHT such as 832x480")
    return w, h
