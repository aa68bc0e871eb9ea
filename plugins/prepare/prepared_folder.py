"""A folder ``prepare`` wrote, read consistently: clip files on disk against manifest lines.

Every reader of a prepared folder (``caption``, ``config``, ``check-config``, a ``prepare``
re-run) calls :func:`check_prepared` first, so a deleted manifest line or a clip file removed
by hand is named in one line (with ``prepare --repair``) instead of silently training on, or
counting, a different set of clips. :func:`prepared_inputs` lists what the folder's readers
read, for the output guard (:func:`circle_rotate.kernel.atomic.check_output_path`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

from circle_rotate.kernel.errors import ManifestMismatchError
from circle_rotate.kernel.video_io import video_files_under
from circle_rotate.prepare.manifest import MANIFEST_NAME, clip_path, clip_stem, read_manifest, relative_posix

#: Where prepare puts clips: accepted ones (musubi trains on these) and rejected ones (--keep-rejected).
CLIP_FOLDERS = ("videos", "rejected")
#: What prepare writes at the top of the folder, besides the manifest.
SUMMARY_FILES = ("prepare_summary.json", "prepare_summary.png")


@dataclass(frozen=True)
class FolderDiff:
    """How a prepared folder's clips on disk and its manifest disagree (paths relative, posix)."""

    unlisted: Tuple[str, ...]  # clip files no manifest line names
    missing: Tuple[str, ...]  # manifest clips whose file is gone, or sources short of clip lines

    def __bool__(self) -> bool:
        return bool(self.unlisted or self.missing)

    def sources(self, records: List[dict]) -> set:
        """Sources (manifest ``source`` values) the difference touches."""
        named = {r.get("clip"): r.get("source") for r in records if r.get("type") == "clip"}
        out = {named[m] for m in self.missing if m in named} | {m.split(" ", 1)[0] for m in self.missing if m not in named}
        stems = {clip_stem(r["source"]): r["source"] for r in records if r.get("type") == "source" and r.get("source")}
        for clip in self.unlisted:
            stem = Path(clip).stem.rsplit("_", 2)[0]  # clips are named <source stem>_<index>_<id>
            if stem in stems:
                out.add(stems[stem])
        return out


def clip_files(folder: Path) -> List[Path]:
    """The video files under the clip folders of ``folder`` (hidden ones passed over, as
    :func:`~circle_rotate.kernel.video_io.video_files_under` has it)."""
    found = []
    for name in CLIP_FOLDERS:
        d = Path(folder) / name
        if d.is_dir():
            found += video_files_under(d)
    return found


def folder_diff(folder: Path, records: List[dict]) -> FolderDiff:
    """Compare the clip files of ``folder`` with the clip lines of its manifest ``records``."""
    folder = Path(folder)
    listed = {r["clip"] for r in records if r.get("type") == "clip" and r.get("clip")}
    on_disk = {relative_posix(p, folder) for p in clip_files(folder)}
    missing = [c for c in sorted(listed) if not clip_path(folder, {"clip": c}).exists()]
    lines: Dict[str, int] = {}
    for r in records:
        if r.get("type") == "clip":
            lines[r.get("source", "")] = lines.get(r.get("source", ""), 0) + 1
    for head in (r for r in records if r.get("type") == "source"):
        want = int(head.get("clips") or 0) + int(head.get("rejected") or 0)
        have = lines.get(head.get("source", ""), 0)
        if have < want:
            missing.append(f"{head.get('source')} ({want - have} clip line(s) of {want})")
    return FolderDiff(tuple(sorted(on_disk - listed)), tuple(missing))


def check_prepared(folder: Path) -> List[dict]:
    """The manifest records of a prepared folder, once its clips and lines agree.

    Raises:
        ManifestMismatchError: a clip on disk has no line, or a line's clip (or a source's line) is missing.
        UserError: a broken manifest line.
    """
    manifest = Path(folder) / MANIFEST_NAME
    records = read_manifest(manifest)
    diff = folder_diff(Path(folder), records)
    if diff:
        raise ManifestMismatchError(manifest, unlisted=diff.unlisted, missing=diff.missing)
    return records


def prepared_inputs(folder: Path) -> List[Path]:
    """Every file a reader of the prepared ``folder`` reads: manifest, summary, clips and the files beside them."""
    folder = Path(folder)
    files = [folder / MANIFEST_NAME, *(folder / n for n in SUMMARY_FILES)]
    for name in CLIP_FOLDERS:
        d = folder / name
        if d.is_dir():
            files += [p for p in sorted(d.rglob("*")) if p.is_file()]
    return [p for p in files if p.exists()]
