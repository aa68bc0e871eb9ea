"""A source video's own caption, carried to the clips cut from it.

Datasets laid out for musubi-tuner keep each video's caption beside it: ``clip_0001.mp4`` + ``clip_0001.txt``, paired as musubi pairs them (same
folder, ``os.path.splitext(video)[0] + caption_extension``, ``.txt`` by default). ``prepare``
reads that file with :func:`~circle_rotate.prepare.caption.read_caption_file` (so a BOM or a
file not in UTF-8 is judged as ``caption`` judges it) and gives its text to every clip of the
video: the clip's ``.txt`` and its manifest line, whose ``source_caption`` names the file and
``carried_caption`` holds the text. ``caption`` keeps such a caption unless ``--force``.

A clip caption file is only written where it is missing or blank, or still holds text the
tools wrote (the source's earlier text, or ``caption``'s own before the source had a caption
file); anything else is a hand edit and stays.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from circle_rotate.kernel.atomic import write_text
from circle_rotate.kernel.errors import UserError, listed
from circle_rotate.prepare.caption import (CARRIED, GENERATED, SOURCE_CAPTION, CaptionFile, caption_for,
                                           read_caption_file)
from circle_rotate.prepare.manifest import accepted_clips, clip_path, relative_posix

logger = logging.getLogger(__name__)

#: musubi-tuner's default ``caption_extension``: the caption file a source video may have beside it.
SOURCE_CAPTION_EXT = ".txt"
#: The caption files ``prepare`` writes beside its clips (what ``config`` configures by default).
CLIP_CAPTION_EXT = ".txt"


@dataclass(frozen=True)
class SourceCaption:
    """A source video's caption file: ``file`` relative to the raw folder (as the manifest names
    sources), ``text`` as musubi reads it (stripped, without a byte-order mark)."""

    file: str
    text: str


def caption_file_of(video: Path) -> Path:
    """The caption file musubi pairs with ``video`` (``splitext(video)[0] + ".txt"``)."""
    return video.with_name(video.stem + SOURCE_CAPTION_EXT)


def read_source_captions(pairs: Sequence[Tuple[Path, Path]], *, raw: Path) -> Dict[Path, SourceCaption]:
    """The captions of the sources in ``pairs`` ((video, caption file)), keyed by video.

    A blank caption file is no caption (the clips get the generated one).

    Raises:
        UserError: a caption file musubi could not decode (UTF-16, another code page) or cannot
            be read, all of them named in one line, before anything is written.
    """
    found: Dict[Path, SourceCaption] = {}
    bad: List[Tuple[str, str]] = []
    read: Dict[Path, CaptionFile] = {}  # one file may caption several videos (clip.mp4 and clip.mov)
    for video, path in pairs:
        name = path.name if raw.is_file() else relative_posix(path, raw)
        if path in read:
            caption = read[path]
        else:
            caption = read[path] = read_caption_file(path)
            if caption.not_utf8 is not None:
                bad.append((str(path), caption.not_utf8))
        if caption.not_utf8 is None and caption.text is not None:
            found[video] = SourceCaption(name, caption.text)
    if bad:
        which = listed([f"{p} ({why})" for p, why in bad])
        raise UserError(f"{len(bad)} source caption file(s) not in UTF-8, the encoding musubi reads captions in: "
                        f"{which}", path=bad[0][0] if len(bad) == 1 else None,
                        fix="save them as UTF-8 (prepare carries each to the clips of the video beside it); "
                            "nothing was written")
    return found


def carry(records: Sequence[dict], caption: Optional[SourceCaption]) -> List[dict]:
    """``records`` (one source's) with ``caption`` given to every clip line: ``source_caption``,
    ``carried_caption`` and ``caption``; without one, the fields of an earlier carried caption dropped."""
    out = []
    for rec in records:
        if rec.get("type") == "clip":
            rec = dict(rec)
            if caption is not None:
                rec.update({SOURCE_CAPTION: caption.file, CARRIED: caption.text, "caption": caption.text})
            elif CARRIED in rec:
                rec.pop(SOURCE_CAPTION, None)
                rec.pop(CARRIED)
        out.append(rec)
    return out


@dataclass(frozen=True)
class CaptionWrite:
    """One clip caption file to write (``text``) or to remove (``text`` None: prepare's own copy
    of a source caption that is gone)."""

    path: Path
    text: Optional[str]


def _action(found: CaptionFile, *, new: Optional[str], before: dict) -> str:
    """"write", "remove", "keep" (a hand edit, or a caption --force chose) or "unchanged"."""
    carried, generated = before.get(CARRIED), before.get(GENERATED)
    if new is None:
        return "remove" if carried is not None and found.text == carried and not found.bom else "unchanged"
    if found.not_utf8 is not None:
        return "keep"  # not ours; caption names it
    if found.text is None:
        return "write"
    if found.text == new:
        return "write" if found.bom else "unchanged"
    if found.text == carried:  # the source's earlier text
        return "write"
    if found.text == generated and carried != new:  # caption's text, and the source's is new since
        return "write"
    return "keep"


def judge_clip_captions(out: Path, records: Sequence[dict], before: Sequence[dict]) -> Tuple[List[CaptionWrite], List[str]]:
    """The clip caption files to write for one source's (carried) ``records``, and those kept as
    the user left them; ``before`` are the source's lines at the start of the run. Records whose
    file is kept or removed get the ``caption`` musubi will read. Reads, never writes."""
    prior = {r["clip"]: r for r in before if r.get("type") == "clip" and r.get("clip")}
    writes: List[CaptionWrite] = []
    kept: List[str] = []
    for rec in accepted_clips(records):
        old = prior.get(rec["clip"], {})
        if rec.get(CARRIED) is None and old.get(CARRIED) is None:
            continue
        if GENERATED in old and GENERATED not in rec:  # a re-made clip: what caption wrote for it still counts as its own
            rec[GENERATED] = old[GENERATED]
        target = clip_path(out, rec).with_suffix(CLIP_CAPTION_EXT)
        found = read_caption_file(target)
        action = _action(found, new=rec.get(CARRIED), before=old)
        if action == "write":
            writes.append(CaptionWrite(target, rec[CARRIED]))
        elif action == "remove":
            writes.append(CaptionWrite(target, None))
            rec["caption"] = caption_for(rec)
        elif action == "keep":
            kept.append(relative_posix(target, out))
            if found.text is not None:
                rec["caption"] = found.text
    return writes, kept


def apply_caption_writes(writes: Sequence[CaptionWrite]) -> None:
    """Write (atomically, UTF-8 without BOM, as ``caption`` does) or remove the judged files."""
    for w in writes:
        if w.text is None:
            w.path.unlink(missing_ok=True)
        else:
            write_text(w.path, w.text + "\n")
