"""Progress bars that the whole CLI can silence with ``--quiet``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Iterable, Optional, TypeVar

if TYPE_CHECKING:  # imported by the first bar: the CLI's start-up (set_quiet) should not pay for it
    from tqdm.auto import tqdm

T = TypeVar("T")

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Turn every progress bar of this process off (``--quiet``) or back on."""
    global _quiet
    _quiet = bool(quiet)


def progress(iterable: Optional[Iterable[T]] = None, *, total: Optional[int] = None, desc: str = "", unit: str = "it",
             **kwargs) -> tqdm:
    """A tqdm bar on stderr, disabled under ``--quiet`` (and left out of pipes' stdout)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=_quiet, file=sys.stderr, dynamic_ncols=True,
                leave=False, **kwargs)
