"""Results on disk: the JSON (rows + aggregates), an optional CSV (UTF-8 with a byte-order mark,
for Excel), and a PNG next to them."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

from circle_rotate.eval.registry import COLUMNS
from circle_rotate.eval.runner import EvalResults
from circle_rotate.kernel.atomic import check_output_path, write_bytes, write_json
from circle_rotate.kernel.errors import UserError

_FIXED = ("video", "path", "status", "error", "frames", "fps", "width", "height")  # path: a/x.mp4 and b/x.mp4 apart


def csv_text(rows: List[Dict[str, Any]]) -> str:
    """One line per video: the fixed fields, then every metric column present, then notes."""
    present = [c for c in COLUMNS if any(c in r for r in rows)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*_FIXED, *present, "notes"])
    for r in rows:
        writer.writerow([_cell(r.get(k)) for k in (*_FIXED, *present)]
                        + [_cell("; ".join(r.get("notes", []) + r.get("skipped", [])))])
    return buf.getvalue()


def _cell(value: Any) -> Any:
    """A CSV cell; text a spreadsheet would run as a formula (a file named ``=HYPERLINK(...).gif``)
    gets a leading apostrophe, which spreadsheets show as text (OWASP's CSV-injection advice)."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def output_paths(out: os.PathLike | str, *, csv_too: bool) -> Tuple[Path, ...]:
    """The files one ``--out results.json`` run writes: the JSON, its PNG, and the CSV."""
    out = Path(out)
    paths = [out, out.with_suffix(".png")]
    if csv_too:
        paths.append(out.with_suffix(".csv"))
    return tuple(paths)


def check_outputs(out: os.PathLike | str, *, csv_too: bool, force: bool, inputs=()) -> None:
    """Refuse before any work when an output exists (without ``force``) or is an input.

    Raises:
        UserError: as :func:`circle_rotate.kernel.atomic.check_output_path`, or a non-.json name.
    """
    if Path(out).suffix.lower() != ".json":
        raise UserError("results file must end in .json", path=out, fix="e.g. --out results.json")
    for p in output_paths(out, csv_too=csv_too):
        check_output_path(p, inputs=inputs, force=force)


def write_results(results: EvalResults, out: os.PathLike | str, *, csv_too: bool = False) -> Tuple[Path, ...]:
    """Write the JSON, the PNG (drift per video and centroid paths) and optionally the CSV.

    Returns:
        The paths written.
    """
    from circle_rotate.eval.plots import plot_results

    json_path, png_path, *rest = output_paths(out, csv_too=csv_too)
    write_json(json_path, results.to_dict())
    written = [json_path]
    if plot_results(results.rows, png_path):
        written.append(png_path)
    if rest:
        # with a byte-order mark: Excel reads a CSV without one in the machine's code page, and
        # garbles every name that is not ASCII (动画.mp4); Python's csv and pandas read it with
        # encoding="utf-8-sig"
        write_bytes(rest[0], csv_text(results.rows).encode("utf-8-sig"))
        written.append(rest[0])
    return tuple(written)


def read_results(path: os.PathLike | str) -> List[Dict[str, Any]]:
    """The rows of a results JSON written by ``circle-rotate eval``.

    Raises:
        UserError: not such a file.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text())
        rows = data["videos"]
        if not isinstance(rows, list):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError("not a results file written by `circle-rotate eval`", path=p,
                        fix="pass the JSON from `circle-rotate eval ... --out results.json`, or a folder of videos") from None
    return rows
