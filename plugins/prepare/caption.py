"""Captions for prepared clips: fields from a subject map, trajectory from the measured orbit.

The subject map is a CSV (UTF-8, header row) with a ``match`` column and a ``subject``
column, and optionally ``viewpoint``, ``shot_scale``, ``context`` (tags separated by
``;``) and ``subject_zh``, ``viewpoint_zh``, ``shot_scale_zh``, ``context_zh``. A row
applies to a clip whose source (path relative to the raw folder) equals ``match``, has
``match`` as its file name or stem, lies in a folder named ``match`` (per-folder map), or
matches it as a glob. The most specific row wins (exact path, then name, then glob, then
the nearest folder). Without a row, the subject is ``--subject`` when given, else the
source's folder name ("red_car/take1.mp4" -> "red car").

Captions go where musubi-tuner reads them: ``<clip><caption_extension>`` next to each
clip, or one ``video_jsonl_file``. A caption file that differs from what we would write
is the user's and is kept unless ``overwrite``.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Sequence

from circle_rotate.kernel.atomic import check_output_path, write_text
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.input_files import read_text_file
from circle_rotate.kernel.video_io import VIDEO_SUFFIXES
from circle_rotate.prepare.caption_templates import LANGS, STYLES, CaptionFields, render_caption
from circle_rotate.prepare.manifest import MANIFEST_NAME, accepted_clips, clip_path, write_manifest
from circle_rotate.prepare.prepared_folder import check_prepared, clip_files

logger = logging.getLogger(__name__)

MAP_COLUMNS = ("match", "subject", "viewpoint", "shot_scale", "context", "subject_zh", "viewpoint_zh", "shot_scale_zh",
               "context_zh")
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
        if bad:
            raise UserError("; ".join(bad), fix="see circle-rotate caption --help")


@dataclass(frozen=True)
class MapRow:
    match: str
    values: Dict[str, str] = field(default_factory=dict)
    line: int = 0  # in the CSV, for messages


def read_subject_map(path: Path) -> List[MapRow]:
    """Rows of a subject-map CSV.

    Raises:
        UserError: missing file, no ``match``/``subject`` column, unknown columns, or an
            empty ``match`` (all problems at once, naming the lines).
    """
    text = read_text_file(path, what="subject map", fix="pass an existing CSV with match,subject columns")
    try:
        return _parse_subject_map(path, text)
    except csv.Error as exc:  # strict: an unterminated quote would swallow every row after it
        raise UserError(f"not valid CSV ({exc}); is a quote left open?", path=path,
                        fix='close the quote, or write a literal quote as ""') from None


def _parse_subject_map(path: Path, text: str) -> List[MapRow]:
    with io.StringIO(text, newline="") as fh:
        reader = csv.DictReader(fh, strict=True)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        problems = []
        missing = [c for c in ("match", "subject") if c not in cols]
        unknown = [c for c in cols if c and c not in MAP_COLUMNS]  # (empty ones: Excel's trailing commas)
        if missing:
            problems.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            problems.append(f"unknown column(s) {', '.join(unknown)}")
        rows: List[MapRow] = []
        first: Dict[str, MapRow] = {}
        for raw in reader:
            n = reader.line_num
            if None in raw:  # csv's restkey: more fields than the header, which would shift every column after
                problems.append(f"line {n}: {len(cols) + len(raw[None])} fields, the header has {len(cols)} "
                                f"(quote a value holding a comma: \"a red car, with roof rack\")")
                continue
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k}
            if not missing and not row.get("match"):
                problems.append(f"line {n}: empty match")
                continue
            values = {k: v for k, v in row.items() if k != "match" and v}
            earlier = first.get(row.get("match", ""))
            if earlier is not None and earlier.values != values:  # which one a clip gets would be a guess
                problems.append(f"line {n} repeats the match {earlier.match!r} of line {earlier.line} with other values")
                continue
            rows.append(MapRow(row.get("match", ""), values, n))
            first.setdefault(rows[-1].match, rows[-1])
    if problems:
        raise UserError("; ".join(problems), path=path, fix=f"columns are {', '.join(MAP_COLUMNS)} (match and subject "
                                                          "required), one row per match, values with commas quoted")
    return rows


def _specificity(row: MapRow, source: str) -> Optional[tuple]:
    p = PurePosixPath(source)
    m = row.match.strip("/")
    if m == source:
        return (4, 0)
    if m in (p.name, p.stem):
        return (3, 0)
    if any(ch in m for ch in "*?[") and fnmatch.fnmatch(source, m):
        return (2, len(m))
    parents = [q.name for q in p.parents if q.name]
    if m in parents:
        return (1, -parents.index(m))  # the nearest folder wins
    if "/" in m and source.startswith(m + "/"):
        return (1, len(m))
    return None


def top_rows(rows: Sequence[MapRow], source: str) -> List[MapRow]:
    """The rows that match ``source`` (relative posix path) most specifically, in file order."""
    scored = [(score, row) for row in rows for score in [_specificity(row, source)] if score is not None]
    top = max((score for score, _ in scored), default=None)
    return [row for score, row in scored if score == top]


def best_row(rows: Sequence[MapRow], source: str) -> Optional[MapRow]:
    """The most specific map row for ``source``, if any matches (the first of equals)."""
    top = top_rows(rows, source)
    return top[0] if top else None


def lookup(rows: Sequence[MapRow], source: str) -> Dict[str, str]:
    """The values of the most specific map row for ``source`` (relative posix path)."""
    row = best_row(rows, source)
    return dict(row.values) if row else {}


def _tags(text: Optional[str]) -> tuple:
    return tuple(t.strip() for t in (text or "").split(";") if t.strip())


def folder_subject(source: str) -> Optional[str]:
    """The subject a source's folder names ("red_car/take1.mp4" -> "red car")."""
    parent = PurePosixPath(source).parent.name
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


def caption_dataset(out_dir: Path, *, options: CaptionOptions = CaptionOptions(),
                    subject_map: Optional[Path] = None) -> CaptionReport:
    """Caption every accepted clip of a prepared folder and record the captions in its manifest.

    Args:
        out_dir: the folder ``prepare`` wrote (with ``manifest.jsonl``).
        options: language, style, defaults and output (caption files or ``jsonl``).
        subject_map: optional CSV (see the module doc).

    Returns:
        What was written or left alone.

    Raises:
        UserError: no manifest, a bad map or options, or an existing jsonl without overwrite.
        ManifestMismatchError: clips on disk and manifest lines disagree (``prepare --repair``).
    """
    options.validate()
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
    inputs = [manifest, *clip_files(Path(out_dir))]  # caption files are this command's outputs
    if options.jsonl is not None:
        check_output_path(options.jsonl, inputs=inputs, force=True)
        if Path(options.jsonl).exists() and not options.overwrite:
            raise UserError("jsonl already exists", path=options.jsonl, fix="pass --force to replace it")
    written = unchanged = 0
    kept, lines = [], []
    for rec in accepted_clips(records):
        clip = clip_path(out_dir, rec)
        text = caption_for(rec, rows=rows, options=options)
        rec["caption"] = text
        if options.jsonl is not None:
            lines.append(json.dumps({"video_path": clip.resolve().as_posix(), "caption": text}, ensure_ascii=False))
            continue
        target = clip.with_suffix(options.extension)
        if target.exists():
            old = target.read_text(encoding="utf-8").strip()
            if old == text:
                unchanged += 1
                continue
            if not options.overwrite:
                kept.append(str(target))
                rec["caption"] = old  # musubi will read the user's caption
                continue
        write_text(target, text + "\n")
        written += 1
    if options.jsonl is not None:
        write_text(options.jsonl, "".join(line + "\n" for line in lines))
        written = len(lines)
    write_manifest(manifest, records)
    if kept:
        logger.warning("kept %d existing caption file(s) that differ (pass --force to replace them)", len(kept))
    unmatched = tuple((row.line, row.match) for row in rows if id(row) not in used)
    if unmatched:
        logger.warning("%d subject-map row(s) used by no clip", len(unmatched))
    return CaptionReport(written, unchanged, tuple(kept), options.jsonl, unmatched)

