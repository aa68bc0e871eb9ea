"""Progress bars that the whole CLI can silence with ``--quiet``."""

from __future__ import annotations

import sys
from typing import Iterable, Optional, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Turn every progress bar of this process off (``--quiet``) or back on."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    return _quiet


def progress(iterable: Optional[Iterable[T]] = None, *, total: Optional[int] = None, desc: str = "", unit: str = "it",
             **kwargs) -> tqdm:
    """A tqdm bar on stderr, disabled under ``--quiet`` (and left out of pipes' stdout)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=_quiet, file=sys.stderr, dynamic_ncols=True,
                leave=False, **kwargs)
