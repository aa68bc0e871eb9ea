"""The one exception type for problems the user can fix.

The CLI prints a :class:`UserError` on one line and exits 2; any other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence


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
        self.problem = text  # the line without its fix
        if fix and "; fix: " in text:  # an inner error's fix is already there: one "fix:" per line
            text = f"{text}, or {' '.join(fix.split())}"
        elif fix:
            text = f"{text}; fix: {' '.join(fix.split())}"
        self.message = text
        super().__init__(text)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        # Exception pickles as cls(*self.args), which breaks every subclass with keyword-only
        # arguments; a worker process's error would then kill the pool (BrokenProcessPool).
        # Rebuild from the finished fields instead, without calling __init__ again.
        return (_rebuild_user_error, (type(self), self.message, dict(self.__dict__)))


def _rebuild_user_error(cls: type, message: str, state: dict) -> "UserError":
    """Unpickle any :class:`UserError` subclass with its message, path, fix and own fields."""
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


def listed(items: Sequence[str], show: int = 5) -> str:
    """The first ``show`` of ``items`` for a one-line message, then how many more there are."""
    return ", ".join(items[:show]) + (f" and {len(items) - show} more" if len(items) > show else "")


# Typed user errors: tests and callers match on the type and its fields, never on message text.


class InputOverwriteError(UserError):
    """The output would replace a file the command reads (``--force`` or not)."""

    def __init__(self, path: os.PathLike | str, *, source: Optional[os.PathLike | str] = None):
        self.source = os.fspath(source) if source is not None else None
        same = f" ({self.source})" if self.source and os.fspath(path) != self.source else ""
        super().__init__(f"output is a file this command reads{same}; --force never replaces an input",
                         path=path, fix="choose another output path")


class NotARegularFileError(UserError):
    """A path that must be a regular file (an input, or an output to replace) is something else."""

    def __init__(self, path: os.PathLike | str, *, kind: str, fix: str = "give a regular file"):
        self.kind = kind
        super().__init__(f"is a {kind}, not a regular file", path=path, fix=fix)


class UnwritableOutputError(UserError):
    """The output cannot be created where it was asked for (a parent is a file, a read-only or virtual file system)."""

    def __init__(self, path: os.PathLike | str, *, reason: str, fix: str = "make it writable, or write elsewhere"):
        self.reason = reason
        super().__init__(f"cannot write here: {reason}", path=path, fix=fix)


class DiskFullError(UserError):
    """The disk ran out of space (or the file-size limit was hit) while writing ``path``."""

    def __init__(self, path: os.PathLike | str, *, device: str, need_gb: Optional[float] = None):
        self.device = device
        self.need_gb = need_gb
        free = f"free {max(need_gb, 0.001):.3g} GB" if need_gb else "free space"
        super().__init__(f"no space left on {device} writing {os.fspath(path)}", fix=f"{free}, or write to another disk")


class ConfigValueError(UserError):
    """A setting (TOML key or command-line option) has a value that cannot work."""

    def __init__(self, key: str, value: object, reason: str, *, path: Optional[os.PathLike | str] = None,
                 fix: Optional[str] = None):
        self.key = key
        self.value = value
        super().__init__(f"{key} = {value!r}: {reason}", path=path, fix=fix)


class BadStrengthError(ConfigValueError):
    """A LoRA strength or alpha that is not a finite number, or too large for the output dtype."""

    def __init__(self, key: str, value: object, reason: str = "must be a finite number", *,
                 fix: str = "give a finite number, e.g. 0.8"):
        super().__init__(key, value, reason, fix=fix)


class NonFiniteError(UserError):
    """A tensor holds NaN or inf values; ``key`` names the first one found."""

    def __init__(self, path: os.PathLike | str, *, key: str, count: int = 1,
                 fix: str = "re-save or re-train it; a diverged training run writes NaN/inf"):
        self.key = key
        self.count = count
        more = f" (and {count - 1} more tensor(s))" if count > 1 else ""
        super().__init__(f"tensor '{key}'{more} holds NaN or inf values", path=path, fix=fix)


class ManifestMismatchError(UserError):
    """A prepared folder's clips on disk and its manifest lines disagree."""

    def __init__(self, path: os.PathLike | str, *, unlisted: tuple = (), missing: tuple = ()):
        self.unlisted = tuple(unlisted)
        self.missing = tuple(missing)
        parts = []
        if self.unlisted:
            parts.append(f"{len(self.unlisted)} clip(s) on disk not in the manifest (first: {self.unlisted[0]})")
        if self.missing:
            parts.append(f"{len(self.missing)} manifest clip(s) missing on disk (first: {self.missing[0]})")
        super().__init__("manifest and videos/ disagree: " + ", ".join(parts), path=path,
                         fix="run circle-rotate prepare RAW -o OUT --repair")
