"""The subject map: a CSV naming each source's subject (and viewpoint, shot scale, context), read
as spreadsheets save it, and which of its rows applies to a source.

A CSV with a ``match`` column and a ``subject`` column, and optionally ``viewpoint``,
``shot_scale``, ``context`` (tags separated by ``;``) and ``subject_zh``, ``viewpoint_zh``,
``shot_scale_zh``, ``context_zh``: UTF-8 or BOM-marked UTF-16, ``,`` or ``;`` or tab between
fields, header names in any case, blank rows skipped. A row applies to a source (path relative to
the raw folder) that equals ``match``, has ``match`` as its file name or stem, lies in a folder
named ``match``, or matches it as a glob, compared in Unicode NFC (macOS names files in NFD).
The most specific row wins (exact path, then name, then glob, then the nearest folder).
"""

from __future__ import annotations

import codecs
import csv
import fnmatch
import io
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Sequence

from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.input_files import require_file

MAP_COLUMNS = ("match", "subject", "viewpoint", "shot_scale", "context", "subject_zh", "viewpoint_zh", "shot_scale_zh",
               "context_zh")
MAP_DELIMITERS = (",", ";", "\t")  # Excel saves ";" where "," is the decimal mark (most of Europe)


@dataclass(frozen=True)
class MapRow:
    match: str
    values: Dict[str, str] = field(default_factory=dict)
    line: int = 0  # in the CSV, for messages


def read_subject_map(path: Path) -> List[MapRow]:
    """Rows of a subject-map CSV, as spreadsheets save it.

    The delimiter is taken from the header line (``,``, or ``;`` from a European Excel, or a
    tab); header names match case-insensitively; blank rows are skipped; UTF-8 (with or without
    a BOM) and BOM-marked UTF-16 are read; text is NFC-normalised, as sources are when matched.

    Raises:
        UserError: missing file, another encoding, no ``match``/``subject`` column, unknown
            columns, or an empty ``match`` (all problems at once, naming the lines).
    """
    text = _map_text(path)
    try:
        return _parse_subject_map(path, text)
    except csv.Error as exc:  # strict: an unterminated quote would swallow every row after it
        raise UserError(f"not valid CSV ({exc}); is a quote left open?", path=path,
                        fix='close the quote, or write a literal quote as ""') from None


def _map_text(path: Path) -> str:
    p = require_file(path, what="subject map", fix="pass an existing CSV with match,subject columns")
    data = p.read_bytes()
    # Excel's "Unicode Text" and Notepad's "Unicode" are UTF-16 with a BOM: readable without guessing
    utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) and not data.startswith(codecs.BOM_UTF32_LE)
    encoding = "utf-16" if utf16 else "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:  # Latin-1 / Windows-1252: Excel's plain "CSV" saves in the local code page
        where = f"(line {data[:exc.start].decode(encoding, errors='replace').count(chr(10)) + 1}, byte {exc.start})"
        raise UserError(f"is UTF-16 with a broken character {where}" if utf16 else
                        f"is not UTF-8 text {where}; Excel's plain 'CSV' saves in the local code page", path=p,
                        fix="save it as UTF-8 (Excel: 'CSV UTF-8')") from None
    if "\x00" in text:
        raise UserError("holds NUL bytes: not a text CSV (UTF-32, or a spreadsheet file?)", path=p,
                        fix="save it as UTF-8 (Excel: 'CSV UTF-8')")
    return unicodedata.normalize("NFC", text)


def _column(name: str) -> str:
    return re.sub(r"[\s-]+", "_", name.strip().lower())  # "Shot Scale" -> shot_scale


def _delimiter(header: str) -> str:
    """The one of , ; tab that splits the header line into the most known column names (ties: ``,``)."""
    def known(delimiter: str) -> int:
        return sum(_column(c) in MAP_COLUMNS for c in next(csv.reader([header], delimiter=delimiter), []))
    return max(MAP_DELIMITERS, key=known)


def _parse_subject_map(path: Path, text: str) -> List[MapRow]:
    header_line = next((line for line in text.splitlines() if line.strip()), "")
    with io.StringIO(text, newline="") as fh:
        reader = csv.reader(fh, delimiter=_delimiter(header_line), strict=True)
        cols = [_column(c) for c in next((f for f in reader if any(x.strip() for x in f)), [])]
        problems = []
        missing = [c for c in ("match", "subject") if c not in cols]
        unknown = [c for c in cols if c and c not in MAP_COLUMNS]  # (empty ones: Excel's trailing commas)
        twice = sorted({c for c in cols if c and cols.count(c) > 1})
        if missing:
            problems.append(f"missing column(s) {', '.join(missing)} (the header line reads {header_line[:80]!r}; "
                            f"columns are separated by ',', ';' or tabs)")
        if unknown:
            problems.append(f"unknown column(s) {', '.join(unknown)}")
        if twice:
            problems.append(f"column(s) {', '.join(twice)} given twice")
        rows: List[MapRow] = []
        first: Dict[str, MapRow] = {}
        for fields in reader:
            n = reader.line_num
            if not any(f.strip() for f in fields):  # a blank line, or a spreadsheet's empty row ",,,,"
                continue
            if any(f.strip() for f in fields[len(cols):]):  # more fields than the header: every column after shifts
                problems.append(f"line {n}: {len(fields)} fields, the header has {len(cols)} "
                                f"(quote a value holding a comma: \"a red car, with roof rack\")")
                continue
            row = {c: f.strip() for c, f in zip(cols, fields) if c}
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
        # the first few and a count: a spreadsheet with hundreds of bad rows makes a line no one reads
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more problem(s)" if len(problems) > 3 else "")
        raise UserError(shown, path=path, fix=f"columns are {', '.join(MAP_COLUMNS)} (match and subject "
                                                          "required), one row per match, values with commas quoted")
    return rows


def _specificity(row: MapRow, source: str) -> Optional[tuple]:
    p = PurePosixPath(source)
    m = row.match.strip("/").removeprefix("./")
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
    source = unicodedata.normalize("NFC", source)  # macOS names files in NFD; the map's text is NFC
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
