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
from circle_rotate.eval.runner import EvalResults, stored_row
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
    write_json(json_path, results.to_dict(json_path.parent))
    written = [json_path]
    if plot_results(results.rows, png_path):
        written.append(png_path)
    if rest:
        # with a byte-order mark: Excel reads a CSV without one in the machine's code page, and
        # garbles every name that is not ASCII (动画.mp4); Python's csv and pandas read it with
        # encoding="utf-8-sig"
        write_bytes(rest[0], csv_text([stored_row(r) for r in results.rows]).encode("utf-8-sig"))
        written.append(rest[0])
    _remove_stale(out, written)
    return tuple(written)


def _remove_stale(out: os.PathLike | str, written: List[Path]) -> None:
    """Remove an earlier run's PNG and CSV beside ``out`` that this run did not write (nothing to
    plot, no ``--csv``): beside the new JSON they would pass for its figure and its rows. The PNG
    is an output :func:`check_outputs` let this run replace; a CSV is removed only where it starts
    as ours does (it was not checked without ``--csv``, and may be the user's own)."""
    png_path, csv_path = Path(out).with_suffix(".png"), Path(out).with_suffix(".csv")
    stale = [png_path] if png_path not in written else []
    if csv_path not in written:
        try:
            with open(csv_path, "rb") as fh:
                if fh.read(len(_CSV_START)) == _CSV_START:
                    stale.append(csv_path)
        except OSError:
            pass
    for path in stale:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


#: How a CSV :func:`write_results` wrote begins: its byte-order mark and its first columns.
_CSV_START = ("\ufeff" + ",".join(_FIXED[:3]) + ",").encode("utf-8")


def read_results(path: os.PathLike | str) -> List[Dict[str, Any]]:
    """The rows of a results JSON written by ``circle-rotate eval``, their paths absolute
    (:func:`resolve_paths`).

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
    return [resolve_paths(r, p.parent) if isinstance(r, dict) else r for r in rows]


#: The fields of a row that name files: the video, and what ``--save-masks`` wrote of it.
PATH_FIELDS = ("path", "contact_sheet", "masks_dir")


def resolve_paths(row: Dict[str, Any], results_dir: os.PathLike | str) -> Dict[str, Any]:
    """``row`` with its file paths absolute. Results written before paths were stored absolute
    hold them relative to the folder that run was started in, which the file does not say: read
    from another folder, two files' ``outputs/demo1.gif`` would name one video (and ``eval
    compare`` would call both sides the same videos). So a relative path is taken where it
    exists: beside the results file (written there, or moved with it), else in the current folder
    (marked ``path_guessed``: two files read so may name one video that is neither's). A
    ``path`` found in neither is None, the text as written kept in ``path_unresolved``:
    nothing is read from it, and it names no video to be the same as another. An absolute
    ``path`` that is gone, in a file that also says where the video was from it
    (``path_from_results``), is looked up there: the results moved with their videos."""
    out = dict(row)
    moved = row.get("path_from_results")
    if isinstance(row.get("path"), str) and os.path.isabs(row["path"]) and not os.path.lexists(row["path"]) \
            and isinstance(moved, str) and moved and os.path.lexists(os.path.join(results_dir, moved)):
        out["path"] = os.path.abspath(os.path.join(results_dir, moved))
    for name in PATH_FIELDS:
        value = row.get(name)
        if not isinstance(value, str) or not value or os.path.isabs(value):
            continue
        beside = os.path.join(results_dir, value)
        if os.path.lexists(beside):
            out[name] = os.path.abspath(beside)
        elif os.path.lexists(value):
            out[name] = os.path.abspath(value)
            if name == "path":
                out["path_guessed"] = True
        elif name == "path":
            out["path"], out["path_unresolved"] = None, value
    return out
