"""The one exception type for problems the user can fix.

The CLI prints a :class:`UserError` on one line and exits 2; any other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations

import os
from typing import Optional


class UserError(Exception):
    """A problem with the user's input: a file, key, frame or setting, and how to fix it.

    Args:
        message: what is wrong, naming the file/key/frame.
        fix: what to do about it (appended as "; fix: ...").
        path: the file concerned; prefixed to the message when it is not already in it.

    Example:
        >>> raise UserError("key 'blocks.3.lora_up' has no lora_down", path="x.safetensors",
        ...                 fix="re-save it with musubi-tuner")
    """

    exit_code = 2

    def __init__(self, message: str, *, fix: Optional[str] = None, path: Optional[os.PathLike | str] = None):
        self.path = os.fspath(path) if path is not None else None
        self.fix = fix
        text = " ".join(message.split())  # one line, whatever the caller built
        if self.path and self.path not in text:
            text = f"{self.path}: {text}"
        if fix:
            text = f"{text}; fix: {' '.join(fix.split())}"
        self.message = text
        super().__init__(text)

    def __str__(self) -> str:
        return self.message
