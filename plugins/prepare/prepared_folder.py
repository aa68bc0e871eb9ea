"""A folder ``prepare`` wrote, read consistently: clip files on disk against manifest lines.

Every reader of a prepared folder (``caption``, ``config``, ``check-config``, a ``prepare``
re-run) calls :func:`check_prepared` first, so a deleted manifest line or a clip file removed
by hand is named in one line (with ``prepare --repair``) instead of silently training on, or
counting, a different set of clips. :func:`prepared_inputs` lists what the folder's readers
read, for the output guard (:func:`circle_rotate.kernel.atomic.check_output_path`).

A run that is killed outright (SIGKILL, a power cut) cannot tidy up as Ctrl-C does: clips it
finished for sources whose lines it never wrote are left behind. Every clip a run writes, and
every old clip it is about to drop, is first named in the folder's journal
(:data:`JOURNAL_NAME`), which only a finished run removes; the next run removes the clips the
journal names and no line does (:func:`left_by_killed_run`), so the same command resumes
without ``--repair``, and files a user put there are still never touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ContextManager, Dict, List, Tuple

from circle_rotate.kernel.atomic import exclusive_folder, held_elsewhere
from circle_rotate.kernel.errors import ManifestMismatchError, UserError
from circle_rotate.kernel.video_io import video_files_under
from circle_rotate.prepare.manifest import MANIFEST_NAME, clip_path, clip_stem, read_manifest, relative_posix

#: Where prepare puts clips: accepted ones (musubi trains on these) and rejected ones (--keep-rejected).
CLIP_FOLDERS = ("videos", "rejected")
#: What prepare writes at the top of the folder, besides the manifest.
SUMMARY_FILES = ("prepare_summary.json", "prepare_summary.png")
#: The clips a run may leave unlisted if it is killed (hidden: never taken for a clip or a caption).
JOURNAL_NAME = ".prepare_journal"


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


def note_clip(folder: Path, rel: str) -> None:
    """Name the clip ``rel`` (relative to ``folder``) in the journal before it is written or
    dropped. One ``O_APPEND`` write per line, so workers writing at once never mix lines."""
    fd = os.open(Path(folder) / JOURNAL_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (rel + "\n").encode("utf-8"))
    finally:
        os.close(fd)


def clear_journal(folder: Path) -> None:
    """A run finished (or tidied up after Ctrl-C): its clips and the manifest agree."""
    (Path(folder) / JOURNAL_NAME).unlink(missing_ok=True)


def left_by_killed_run(folder: Path, diff: FolderDiff) -> Tuple[str, ...]:
    """The clips of ``diff.unlisted`` that the journal of a run that never finished names: that
    run's own unfinished work, safe to remove (anything else unlisted may be a user's)."""
    journal = Path(folder) / JOURNAL_NAME
    if not diff.unlisted or not journal.exists():
        return ()
    named = set(journal.read_text(encoding="utf-8", errors="replace").splitlines())
    return tuple(c for c in diff.unlisted if c in named)


def _still_running(folder: Path, command: str) -> UserError:
    return UserError("another run (prepare, caption or config) is still writing into this folder", path=folder,
                     fix=f"let it finish (or stop it), then run {command} again")


def locked_prepared(folder: Path, *, command: str) -> ContextManager[None]:
    """Hold ``folder``'s lock while ``command`` reads and writes it, so that a prepare still running,
    or a second caption or config, is refused in one line rather than mixed with this run."""
    return exclusive_folder(folder, command=command, busy=lambda: _still_running(folder, command))


def check_prepared(folder: Path) -> List[dict]:
    """The manifest records of a prepared folder, once its clips and lines agree.

    Raises:
        ManifestMismatchError: a clip on disk has no line, or a line's clip (or a source's line) is missing.
        UserError: no manifest, a run killed before it finished, a broken manifest line.
    """
    manifest = Path(folder) / MANIFEST_NAME
    journal = (Path(folder) / JOURNAL_NAME).exists()
    if not manifest.exists() and held_elsewhere(Path(folder)):  # a prepare still at work, not one that was stopped
        raise _still_running(Path(folder), "this")
    if not manifest.exists() and not journal:
        raise UserError("no manifest.jsonl here", path=folder, fix="run circle-rotate prepare RAW_DIR -o OUT_DIR first")
    records = read_manifest(manifest)
    diff = folder_diff(Path(folder), records)
    if diff and journal and held_elsewhere(Path(folder)):  # not stopped: still at work
        raise _still_running(Path(folder), "this")
    if not diff and not manifest.exists():
        raise UserError("no manifest.jsonl here: a prepare run writing here was stopped before it finished a source",
                        path=folder, fix="run the same prepare command again")
    if diff:
        killed = left_by_killed_run(Path(folder), diff)
        if killed and not diff.missing and len(killed) == len(diff.unlisted):
            raise UserError(f"a prepare run writing here was stopped before it finished ({len(killed)} clip(s) it "
                            f"wrote are not in the manifest yet, first: {killed[0]})", path=folder,
                            fix="run the same prepare command again; it removes them and finishes")
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
