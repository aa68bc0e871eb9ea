"""Input files checked before they are read: present, and a regular file (not a folder or device).

Every reader that takes a user's path calls :func:`require_file`, so "a folder given as a file"
is said as such instead of "file not found".
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Union

from circle_rotate.kernel.errors import NotARegularFileError, UserError

PathLike = Union[str, os.PathLike]


def require_file(path: PathLike, *, what: str = "file", fix: str = "check the path") -> Path:
    """``path`` as a :class:`Path` when it is a regular file (or a link to one).

    Raises:
        NotARegularFileError: a folder, device or pipe.
        UserError: nothing there.
    """
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except OSError:
        raise UserError(f"{what} not found", path=p, fix=fix) from None
    if stat.S_ISDIR(mode):
        raise NotARegularFileError(p, kind="folder", fix=f"give the {what} itself, not its folder")
    if not stat.S_ISREG(mode):
        raise NotARegularFileError(p, kind="special file", fix=f"give a regular {what}")
    return p


def read_text_file(path: PathLike, *, what: str = "file", fix: str = "check the path") -> str:
    """The UTF-8 text of ``path``; a binary or non-UTF-8 file is one :class:`UserError` naming it."""
    p = require_file(path, what=what, fix=fix)
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} is not UTF-8 text (byte {exc.start}); is it a binary file?", path=p,
                        fix=f"give a text {what} saved as UTF-8") from None
    if "\x00" in text:
        raise UserError(f"{what} is not text (it holds NUL bytes); is it a binary file?", path=p,
                        fix=f"give a text {what}")
    return text
