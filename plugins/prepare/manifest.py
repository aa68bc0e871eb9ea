"""``manifest.jsonl``: one line per source and per clip that ``prepare`` made or rejected.

Lines are JSON objects with a ``type``:

- ``"source"``: ``source`` (path relative to the raw folder), ``fingerprint``,
  ``settings`` (key of the prepare settings), ``status`` ("ok" | "rejected" | "too_short"
  | "no_motion" | "truncated" | "error"), ``reason``, ``probe`` (container, codec, fps, frame count,
  duration, size, rotation), ``clips`` (accepted), ``rejected``, ``notes``.
- ``"clip"``: ``clip`` (path relative to the output folder, None when rejected and not
  kept), ``id`` (content hash), ``source``, ``start_time``, ``end_time``, ``frames``,
  ``fps``, ``width``, ``height``, ``orbit`` (:meth:`OrbitMeasurement.to_dict`),
  ``verdict`` ("accept" | "reject"), ``reasons``, ``caption`` (what musubi will read); where the
  source video has its own caption file (``clip_0001.mp4`` + ``clip_0001.txt``), ``source_caption``
  (that file, relative to the raw folder) and ``carried_caption`` (its text, which the clip's
  ``.txt`` gets); ``caption`` adds ``generated_caption`` (what it last wrote).

The file is rewritten atomically after every source, so an interrupted run keeps what it
finished and a re-run resumes from there.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Iterable, List

from circle_rotate.kernel.atomic import write_text
from circle_rotate.kernel.errors import UserError

MANIFEST_NAME = "manifest.jsonl"
_CHUNK = 1 << 20


def fingerprint(path: Path) -> str:
    """A content fingerprint of a (possibly huge) file: its size and three 1 MiB samples
    (start, middle, end), BLAKE2b. Edits, re-exports and truncation change it; reading
    three MiB keeps re-runs over many GB of footage instant."""
    size = path.stat().st_size
    h = hashlib.blake2b(digest_size=16)
    h.update(str(size).encode())
    with open(path, "rb") as fh:
        for offset in sorted({0, max(0, size // 2 - _CHUNK // 2), max(0, size - _CHUNK)}):
            fh.seek(offset)
            h.update(fh.read(_CHUNK))
    return h.hexdigest()


def stable_hash(obj: object, length: int = 12) -> str:
    """Short hash of a JSON-serialisable value (settings keys, clip ids)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()[:length]


def read_manifest(path: Path) -> List[dict]:
    """All records of a manifest (an empty list when it does not exist).

    Raises:
        UserError: a line is not JSON (naming the line).
    """
    if not path.exists():
        return []
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserError(f"line {n} is not JSON ({exc.msg})", path=path,
                            fix="delete the broken line (or the manifest, to prepare everything again)") from None
    return records


def write_manifest(path: Path, records: Iterable[dict]) -> Path:
    """Write records as JSON lines, atomically."""
    return write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def by_source(records: Iterable[dict]) -> Dict[str, List[dict]]:
    """Group records by their ``source``, keeping order."""
    out: Dict[str, List[dict]] = {}
    for r in records:
        out.setdefault(r.get("source", ""), []).append(r)
    return out


def accepted_clips(records: Iterable[dict]) -> List[dict]:
    """Clip records with verdict "accept" and a clip file."""
    return [r for r in records if r.get("type") == "clip" and r.get("verdict") == "accept" and r.get("clip")]


def clip_path(out_dir: Path, record: dict) -> Path:
    """Absolute path of a clip record's file."""
    return Path(out_dir) / Path(*record["clip"].split("/"))


def relative_posix(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` with forward slashes (as manifests and TOMLs store them)."""
    return Path(os.path.relpath(path, base)).as_posix()


def clip_stem(rel: str) -> str:
    """The start of the clip file names of source ``rel`` (``<stem>_<index>_<id>.mp4``)."""
    stem = Path(rel).stem
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:60] or "clip"
