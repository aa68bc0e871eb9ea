"""Captions for prepared clips: fields from a subject map, trajectory from the measured orbit.

The subject map (:mod:`circle_rotate.prepare.subject_map`) names each source's subject; without
a row, the subject is ``--subject`` when given, else the source's folder name
("red_car/take1.mp4" -> "red car").

Captions go where musubi-tuner reads them: ``<clip><caption_extension>`` next to each
clip, or one ``video_jsonl_file``. The manifest's ``caption`` is what musubi will read (a kept
hand edit included) and its ``generated_caption`` what this tool last wrote: a caption file holding
that (or the new caption) is ours and follows the inputs; any other text is a hand edit, kept
unless ``overwrite``. A manifest from before ``generated_caption`` was recorded cannot tell an
edit from our text, so there only the new caption counts as ours. A blank caption file is no
caption and is written. Files musubi cannot read (not UTF-8) are refused before anything is written.

A clip whose source video had its own caption file (``prepare`` carries it, see
:mod:`circle_rotate.prepare.source_caption`; the manifest's ``carried_caption``) keeps that text
like a hand edit, and gets it back where its file is missing or blank; ``overwrite`` replaces it
with the generated caption, which from then on is ours and follows the inputs.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import List, Optional, Sequence

from circle_rotate.kernel.atomic import check_output_path, write_text
from circle_rotate.kernel.errors import UserError, listed
from circle_rotate.kernel.video_io import VIDEO_SUFFIXES
from circle_rotate.prepare.caption_templates import LANGS, STYLES, CaptionFields, render_caption
from circle_rotate.prepare.manifest import MANIFEST_NAME, accepted_clips, clip_path, write_manifest
from circle_rotate.prepare.prepared_folder import check_prepared, clip_files, locked_prepared
from circle_rotate.prepare.subject_map import MapRow, lookup, read_subject_map, top_rows

logger = logging.getLogger(__name__)

STEADY_CV = 0.35  # speed_cv below this earns "smoothly"


@dataclass(frozen=True)
class CaptionOptions:
    """How to caption: language, style, defaults, and where captions go."""

    lang: str = "en"
    style: str = "tags"
    subject: Optional[str] = None  # subject for clips no map row names (else their folder's name)
    viewpoint: Optional[str] = None
    shot_scale: Optional[str] = None
    context: tuple = ()
    extension: str = ".txt"
    jsonl: Optional[Path] = None  # write one video_jsonl_file instead of caption files
    overwrite: bool = False
    #: write the jsonl's video_path values relative to this folder, the one training runs from
    #: (musubi opens each video_path as written, from its working folder); None: absolute
    relative_to: Optional[Path] = None

    def validate(self) -> None:
        bad = []
        if self.lang not in LANGS:
            bad.append(f"--lang {self.lang!r} is not one of {', '.join(LANGS)}")
        if self.style not in STYLES:
            bad.append(f"--style {self.style!r} is not one of {', '.join(STYLES)}")
        if not self.extension.startswith(".") or "/" in self.extension:
            bad.append(f"--ext {self.extension!r} must start with '.' (e.g. .txt)")
        elif self.extension.lower() in VIDEO_SUFFIXES:  # the caption would replace its own clip
            bad.append(f"--ext {self.extension!r} is a video extension")
        if self.relative_to is not None and self.jsonl is None:
            bad.append("--relative-to is for --jsonl (caption files beside the clips hold no paths)")
        elif self.relative_to is not None and not Path(self.relative_to).is_dir():
            bad.append(f"--relative-to {self.relative_to} is not an existing folder (give the one training will run "
                       "from, e.g. --relative-to .)")
        if bad:
            raise UserError("; ".join(bad), fix="see circle-rotate caption --help")


def _tags(text: Optional[str]) -> tuple:
    return tuple(t.strip() for t in (text or "").split(";") if t.strip())


def folder_subject(source: str) -> Optional[str]:
    """The subject a source's folder names ("red_car/take1.mp4" -> "red car")."""
    parent = unicodedata.normalize("NFC", PurePosixPath(source).parent.name)  # one spelling whatever the OS
    return parent.replace("_", " ").replace("-", " ").strip() or None


def fields_for(record: dict, *, rows: Sequence[MapRow] = (), options: CaptionOptions = CaptionOptions()) -> CaptionFields:
    """Caption fields of one clip record: map row, then options, then the folder name."""
    found = lookup(rows, record.get("source", ""))
    orbit = record.get("orbit") or {}
    direction = orbit.get("direction") if orbit.get("motion") in ("orbit", "shaky") else "none"
    speed_cv = orbit.get("speed_cv")
    return CaptionFields(
        subject=found.get("subject") or options.subject or folder_subject(record.get("source", "")) or "the subject",
        context=_tags(found.get("context")) or tuple(options.context),
        viewpoint=found.get("viewpoint") or options.viewpoint,
        shot_scale=found.get("shot_scale") or options.shot_scale,
        direction=direction or "none",
        subject_zh=found.get("subject_zh"), context_zh=_tags(found.get("context_zh")),
        viewpoint_zh=found.get("viewpoint_zh"), shot_scale_zh=found.get("shot_scale_zh"),
        speed_deg_s=orbit.get("angular_speed_deg_s"),
        steady=None if speed_cv is None else speed_cv < STEADY_CV,
    )


def caption_for(record: dict, *, rows: Sequence[MapRow] = (), options: CaptionOptions = CaptionOptions()) -> str:
    """The caption text of one clip record."""
    return render_caption(fields_for(record, rows=rows, options=options), lang=options.lang, style=options.style)


@dataclass(frozen=True)
class CaptionReport:
    written: int
    unchanged: int
    kept: tuple  # caption files that differ and were left alone (no --force)
    jsonl: Optional[Path]
    unmatched: tuple = ()  # (line, match) of subject-map rows no captioned clip used
    filled: tuple = ()  # caption files that were empty (no caption at all) and got the generated one
    bom: tuple = ()  # kept caption files that start with a UTF-8 byte-order mark
    carried: tuple = ()  # caption files holding the caption carried from the source video (kept, or restored)


@dataclass(frozen=True)
class CaptionFile:
    """A clip's caption file as musubi reads it (UTF-8, stripped)."""

    exists: bool
    text: Optional[str] = None  # without a BOM; None when missing, blank or unreadable
    bom: bool = False  # musubi reads "utf-8", not "utf-8-sig": the mark reaches the text encoder
    not_utf8: Optional[str] = None  # why musubi could not decode it ("UTF-16 (Notepad's 'Unicode')", ...)

    @property
    def as_musubi_reads(self) -> Optional[str]:
        """The caption musubi's ``get_caption`` gets (``datasources.py``: UTF-8, stripped): the BOM
        kept as a character, "" for a blank file; None when missing or not UTF-8."""
        if not self.exists or self.not_utf8 is not None:
            return None
        return ("\ufeff" if self.bom else "") + (self.text or "")


def read_caption_file(path: Path) -> CaptionFile:
    """What ``path`` holds as a caption.

    Raises:
        UserError: it exists but cannot be read (a folder, no permission).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return CaptionFile(exists=False)
    except OSError as exc:
        raise UserError(f"cannot read the caption file ({exc.strerror})", path=path,
                        fix="make it a readable file, or move it away") from None
    bom = data.startswith(codecs.BOM_UTF8)
    try:
        text = data[len(codecs.BOM_UTF8) if bom else 0:].decode("utf-8")
    except UnicodeDecodeError as exc:
        utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
        why = "UTF-16 (Notepad's 'Unicode')" if utf16 else f"not UTF-8 (byte {exc.start}), Latin-1 or another code page?"
        return CaptionFile(exists=True, not_utf8=why)
    if "\x00" in text:  # UTF-16 without a BOM decodes as UTF-8 with a NUL beside every ASCII letter
        return CaptionFile(exists=True, not_utf8="NUL bytes (UTF-16 without a byte-order mark?)")
    # musubi opens captions in text mode: universal newlines turn "\r\n" and a lone "\r" into "\n"
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return CaptionFile(exists=True, text=text.strip() or None, bom=bom)


WRITE, UNCHANGED, KEEP, UNREADABLE = "write", "unchanged", "keep", "unreadable"
#: The manifest field holding the caption this tool last wrote for a clip (``caption`` is what musubi reads).
GENERATED = "generated_caption"
#: The manifest fields of a clip whose source video had its own caption file: the file (relative to
#: the raw folder, as ``source``) and its text, which ``prepare`` carried to the clip.
SOURCE_CAPTION, CARRIED = "source_caption", "carried_caption"
#: The caption a run is about to write into a clip's file, recorded before the first file is
#: written: a run stopped in between (a full disk, Ctrl-C, SIGKILL) leaves files holding either
#: ``generated_caption`` or this, and both are ours, never taken for a hand edit (the next run
#: makes a file holding this its ``generated_caption`` before it judges the file).
PENDING = "pending_caption"


def carried_text(record: dict, found: CaptionFile, *, overwrite: bool) -> Optional[str]:
    """The source's caption when it is a clip's caption still (None: the generated one is): it came
    from the source, no ``overwrite``, and the file does not hold what this tool wrote since (a
    ``--force`` that replaced it)."""
    carried = record.get(CARRIED)
    if carried is None or overwrite:
        return None
    if found.text is not None and found.text != carried and found.text == record.get(GENERATED):
        return None
    return carried


def caption_action(found: CaptionFile, *, new: str, recorded: Optional[str], overwrite: bool) -> str:
    """What to do with a clip's caption file: WRITE, UNCHANGED, KEEP (a hand edit) or UNREADABLE.

    ``recorded`` is the manifest's ``generated_caption``: what this tool last wrote. A file still holding it
    is ours to replace when the inputs (map, style, language) change; only text that is neither
    ours nor the new caption is a hand edit, kept unless ``overwrite``. A missing or blank file is
    no caption (musubi would train on ""), so it is written.
    """
    if found.not_utf8 is not None:
        return WRITE if overwrite else UNREADABLE
    if found.text is None:
        return WRITE
    if found.text == new and not found.bom:
        return UNCHANGED
    if overwrite or found.text in (new, recorded):  # ours, perhaps re-saved with a BOM: rewritten without it
        return WRITE
    return KEEP


def _refuse_unreadable(bad: Sequence[tuple]) -> None:
    """One error for every caption file musubi could not decode, raised before anything is written."""
    if not bad:
        return
    which = listed([f"{path} ({why})" for path, why in bad])
    raise UserError(f"{len(bad)} caption file(s) not in UTF-8, the encoding musubi reads captions in (training "
                    f"would fail on them): {which}", path=bad[0][0] if len(bad) == 1 else None,
                    fix="save them as UTF-8, or pass --force to replace them with the generated captions")


def _jsonl_path(clip: Path, relative_to: Optional[Path]) -> str:
    """A clip's video_path as musubi opens it: absolute, or relative to the folder training runs
    from (musubi passes it to its decoder as written, so it resolves against the working folder,
    not the JSONL's); forward slashes on every OS."""
    path = clip.resolve()
    if relative_to is None:
        return path.as_posix()
    return Path(os.path.relpath(path, Path(relative_to).resolve())).as_posix()


def caption_dataset(out_dir: Path, *, options: CaptionOptions = CaptionOptions(),
                    subject_map: Optional[Path] = None) -> CaptionReport:
    """Caption every accepted clip of a prepared folder and record the captions in its manifest.

    Every existing caption file is read and judged before the first one is written, so a
    refusal leaves the folder as it was.

    Args:
        out_dir: the folder ``prepare`` wrote (with ``manifest.jsonl``).
        options: language, style, defaults and output (caption files or ``jsonl``).
        subject_map: optional CSV (see the module doc).

    Returns:
        What was written or left alone.

    Raises:
        UserError: no manifest, a bad map or options, an existing jsonl without overwrite, or
            caption files that are not UTF-8 without overwrite.
        ManifestMismatchError: clips on disk and manifest lines disagree (``prepare --repair``).
    """
    options.validate()
    with locked_prepared(Path(out_dir), command="caption"):  # a second caption, or a prepare still running
        return _caption_locked(Path(out_dir), options=options, subject_map=subject_map)


def _caption_locked(out_dir: Path, *, options: CaptionOptions, subject_map: Optional[Path]) -> CaptionReport:
    manifest = Path(out_dir) / MANIFEST_NAME
    records = check_prepared(Path(out_dir))
    rows = read_subject_map(subject_map) if subject_map else []
    used = set()  # ids of the rows some clip takes its values from
    for rec in accepted_clips(records):
        top = top_rows(rows, rec.get("source", ""))
        if len({tuple(sorted(r.values.items())) for r in top}) > 1:  # which one a clip gets would be a guess
            raise UserError(f"lines {' and '.join(str(r.line) for r in top)} match {rec.get('source')!r} equally "
                            f"({', '.join(repr(r.match) for r in top)}) and say different things", path=subject_map,
                            fix="keep one of them, or make one more specific (a path beats a file name, a file name a "
                                "glob, a glob a folder)")
        used.update(id(r) for r in top[:1])
    # caption files are this command's outputs; the map is read, never replaced
    inputs = [manifest, *clip_files(Path(out_dir)), *([subject_map] if subject_map else [])]
    if options.jsonl is not None:
        check_output_path(options.jsonl, inputs=inputs, force=True)
        if Path(options.jsonl).exists() and not options.overwrite:
            raise UserError("jsonl already exists", path=options.jsonl, fix="pass --force to replace it")
    # returned, not logged: the CLI names each row with its line (a log line too said it twice)
    unmatched = tuple((row.line, row.match) for row in rows if id(row) not in used)
    if options.jsonl is not None:
        lines, from_source = [], []
        for rec in accepted_clips(records):
            carried = carried_text(rec, CaptionFile(exists=False), overwrite=options.overwrite)
            if carried is not None:  # the source's own caption (--force replaces it)
                rec["caption"] = carried
                from_source.append(rec["clip"])
            else:
                rec["caption"] = rec[GENERATED] = caption_for(rec, rows=rows, options=options)
            lines.append(json.dumps({"video_path": _jsonl_path(clip_path(out_dir, rec), options.relative_to),
                                     "caption": rec["caption"]}, ensure_ascii=False))
        write_text(options.jsonl, "".join(line + "\n" for line in lines))
        try:
            write_manifest(manifest, records)
        except KeyboardInterrupt as exc:
            exc.kept = (f"{options.jsonl} was written but the manifest not updated; run the same caption command "
                        "again with --force")
            raise
        return CaptionReport(len(lines), 0, (), options.jsonl, unmatched, carried=tuple(from_source))
    return _caption_files(out_dir, records, rows=rows, options=options, manifest=manifest, unmatched=unmatched)


@dataclass
class _Progress:
    """How far the writes got (read after an error too)."""

    written: int = 0
    unchanged: int = 0
    kept: list = field(default_factory=list)
    filled: list = field(default_factory=list)
    bom: list = field(default_factory=list)
    from_source: list = field(default_factory=list)
    done: set = field(default_factory=set)  # ids of the records whose file now holds the new caption
    current: Optional[dict] = None  # the record whose file was being written


def _write_captions(plans: list, got: _Progress) -> None:
    """Carry out the judged ``plans``, noting each step in ``got``."""
    for rec, target, new, found, is_carried, action in plans:
        if action == KEEP:  # musubi reads the user's; generated_caption still says what we wrote
            got.kept.append(str(target))
            rec["caption"] = found.text
            if found.bom:
                got.bom.append(str(target))
            continue
        if is_carried:  # the source's own caption: kept, or written back where the file lost it
            rec["caption"] = new
            got.from_source.append(str(target))
            if action == WRITE:
                write_text(target, new + "\n")
                got.written += 1
            continue
        if action == UNCHANGED:
            rec["caption"] = rec[GENERATED] = new
            got.unchanged += 1
            continue
        got.current = rec
        write_text(target, new + "\n")
        got.done.add(id(rec))
        got.current = None
        got.written += 1
        if found.exists and found.text is None and found.not_utf8 is None:
            got.filled.append(str(target))


def _caption_files(out_dir: Path, records: List[dict], *, rows: Sequence[MapRow], options: CaptionOptions,
                   manifest: Path, unmatched: tuple) -> CaptionReport:
    plans = []  # (record, caption file, new text, what it holds, action): all judged before any write
    for rec in accepted_clips(records):
        target = clip_path(out_dir, rec).with_suffix(options.extension)
        found = read_caption_file(target)
        if found.text is not None and found.text == rec.get(PENDING):
            # a stopped run wrote it: the record says so before this run's own pending text replaces
            # it, or a second stop in a row would leave this text named by nothing, a "hand edit"
            rec[GENERATED] = found.text
        carried = carried_text(rec, found, overwrite=options.overwrite)
        new = caption_for(rec, rows=rows, options=options) if carried is None else carried
        recorded = rec.get(GENERATED) if carried is None else carried
        plans.append((rec, target, new, found, carried is not None,
                      caption_action(found, new=new, recorded=recorded, overwrite=options.overwrite)))
    _refuse_unreadable([(str(t), f.not_utf8) for _, t, _, f, _, action in plans if action == UNREADABLE])
    pending = []
    for rec, _, new, _, is_carried, action in plans:
        rec.pop(PENDING, None)  # a stopped run's: judged above, what the file holds is settled now
        if action == WRITE and not is_carried:
            rec[PENDING] = new
            pending.append(rec)
    if pending:  # before the first file: however the run ends (SIGKILL too), what the files hold is ours
        write_manifest(manifest, records)
    got, finished = _Progress(), False
    try:
        _write_captions(plans, got)
        finished = True
    except KeyboardInterrupt as exc:
        if got.written and not getattr(exc, "kept", None):
            exc.kept = (f"the {got.written} caption file(s) written before it stopped are recorded in "
                        f"{manifest}; run the same caption command again to finish")
        raise
    finally:
        for rec in pending:
            if id(rec) in got.done:  # written: now what this tool last wrote
                rec["caption"] = rec[GENERATED] = rec.pop(PENDING)
            elif rec is not got.current:  # never reached: the file holds what it held
                rec.pop(PENDING, None)
            # (the one being written when it stopped keeps both: the file holds one of them)
        try:
            write_manifest(manifest, records)
        except BaseException:
            if finished:
                raise
            # the first error is the one to report; the manifest written before the files already
            # names what each of them may hold
            logger.debug("could not record the captions written before the error", exc_info=True)
    kept, filled, bom, from_source = got.kept, got.filled, got.bom, got.from_source
    if kept:
        logger.warning("kept %d existing caption file(s) that differ (pass --force to replace them)", len(kept))
    if filled:
        logger.warning("%d caption file(s) were empty (musubi would train on no caption); wrote the generated "
                       "caption into them: %s", len(filled), listed(filled))
    if bom:
        logger.warning("%d kept caption file(s) start with a UTF-8 byte-order mark, which musubi passes to the text "
                       "encoder as a character: %s; fix: save them as UTF-8 without BOM, or pass --force to replace "
                       "them", len(bom), listed(bom))
    if from_source:
        logger.info("kept %d caption(s) carried from the source videos", len(from_source))
    return CaptionReport(got.written, got.unchanged, tuple(kept), None, unmatched, tuple(filled), tuple(bom), tuple(from_source))
