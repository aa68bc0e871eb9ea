"""Baseline vs LoRA: compare each metric over the pairs (:mod:`circle_rotate.eval.pairing`) with
a paired t-test, its t interval of the mean difference (scipy.stats), and report the relative
change (e.g. "drift -81%"). A pair whose first frames differ, whose videos were not generated
alike, or whose two sides are one file, is left out of every statistic.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from circle_rotate.eval.paired_stats import Comparison, compare_column, paired_values
from circle_rotate.eval.pairing import Pair, _unpaired, different_starts, pair_rows, video_name
from circle_rotate.eval.registry import COLUMNS, MASK_COLUMNS
from circle_rotate.kernel.errors import UserError


def unreliable_pairs(pairs: Sequence[Pair]) -> List[Tuple[Pair, str]]:
    """Pairs whose drift is marked unreliable on either side, with the reason(s)."""
    out = []
    for p in pairs:
        why = [f"{side}: {row.get('drift_unreliable')}" for side, row in (("baseline", p.baseline), ("LoRA", p.lora))
               if row.get("drift_unreliable")]
        if why:
            out.append((p, "; ".join(why)))
    return out


def _shape(row: Mapping[str, Any]) -> str:
    fps = row.get("fps")
    return f"{row.get('width')}x{row.get('height')}, {row.get('frames')} frames" + (f" at {fps:g} fps" if fps else "")


def mismatched_pairs(pairs: Sequence[Pair]) -> List[Tuple[Pair, str]]:
    """Pairs whose two videos differ in size, length or frame rate, with both shapes. Drift and
    flow are in pixels (per frame), so such a pair measures the settings, not the LoRA."""
    out = []
    for p in pairs:
        b, lo = p.baseline, p.lora
        fps_differ = bool(b.get("fps") and lo.get("fps")) and abs(b["fps"] - lo["fps"]) > 0.01 * max(b["fps"], lo["fps"])
        if fps_differ or any(b.get(k) != lo.get(k) for k in ("width", "height", "frames")):
            out.append((p, f"baseline {_shape(p.baseline)}, LoRA {_shape(p.lora)}"))
    return out


def measured_unlike(pairs: Sequence[Pair]) -> List[str]:
    """Notes where the two sides were not measured alike (results files written with other
    options): a subject given (box, mask) on one side and found on the other, and metrics only
    one side has, which no statistic compares."""
    notes = []
    for p in pairs:
        how = [row.get("subject_found_by") for row in (p.baseline, p.lora)]
        given = [h in GIVEN_BASES for h in how]
        if all(how) and given[0] != given[1]:
            notes.append(f"{p.name}: the subject was given on one side and found on the other (baseline: {how[0]}, "
                         f"LoRA: {how[1]}), so its drift compares two ways of measuring; give it on both or neither")
    numeric = [{c for row in side for c, v in row.items() if c in COLUMNS and isinstance(v, (int, float))
                and not isinstance(v, bool)} for side in ([p.baseline for p in pairs], [p.lora for p in pairs])]
    for column in sorted(numeric[0] ^ numeric[1]):
        side = "baseline" if column in numeric[0] else "LoRA"
        notes.append(f"{column}: measured on the {side} side only (its results were written with other --metrics), "
                     f"so not compared")
    return notes


#: ``subject_found_by`` values of a subject the user gave (:data:`circle_rotate.eval.subject_find.BASES`).
GIVEN_BASES = ("user_mask", "user_box")


def statistics_pairs(pairs: Sequence[Pair], left_out: Sequence[Pair] = ()) -> Tuple[List[Pair], List[Pair]]:
    """(alike, reliable): the pairs generated alike (:func:`mismatched_pairs`) and not in
    ``left_out`` (other scenes, one file on both sides), which every column is compared over; and
    of those, the ones whose drift is reliable on both sides, which the mask columns are."""
    unlike = {id(p) for p, _ in mismatched_pairs(pairs)} | {id(p) for p in left_out}
    alike = [p for p in pairs if id(p) not in unlike]
    doubtful = {id(p) for p, _ in unreliable_pairs(alike)}
    return alike, [p for p in alike if id(p) not in doubtful]


def compare_pairs(pairs: Sequence[Pair], *, left_out: Sequence[Pair] = ()) -> List[Comparison]:
    """:func:`compare_column` for every numeric metric column present, in registry order, over the
    pairs of :func:`statistics_pairs` (the mask columns over the reliable ones)."""
    out = []
    alike, reliable = statistics_pairs(pairs, left_out)
    for column in COLUMNS:
        c = compare_column(reliable if column in MASK_COLUMNS else alike, column)
        if c is not None:
            out.append(c)
    return out


def held_pairs(pairs: Sequence[Pair], columns: Sequence[str], left_out: Sequence[Pair] = ()) -> Dict[str, List[Pair]]:
    """Per column, the pairs its statistics hold (:func:`compare_pairs`): the figures draw these
    and no others, so a figure's n is the table's."""
    alike, reliable = statistics_pairs(pairs, left_out)
    return {c: paired_values(reliable if c in MASK_COLUMNS else alike, c)[0] for c in columns}


def same_file_pairs(pairs: Sequence[Pair]) -> List[Tuple[Pair, str]]:
    """Pairs whose two sides are one file (a link on one side to the baseline's video, a hard
    link, or one results file's row against another's), with the file: every difference would
    read 0 and pull the comparison towards "no change". Only files that exist are judged (a
    results file's path may point where nothing is now)."""
    out = []
    for p in pairs:
        a, b = p.baseline.get("path"), p.lora.get("path")
        try:
            if a and b and os.path.samefile(a, b):
                out.append((p, f"both sides are one file ({os.path.realpath(a)}): a link to the baseline's video "
                               "is no LoRA video; put the LoRA's video there"))
        except OSError:  # either missing: nothing to tell
            pass
    return out


#: The figures a comparison may write (those with something to show).
FIGURES = ("trajectories.png", "drift_per_video.png", "distributions.png")


@dataclass(frozen=True)
class CompareOutcome:
    pairs: List[Pair]
    comparisons: List[Comparison]
    written: Tuple[Path, ...]
    notes: Tuple[str, ...]
    failed: int  # videos that could not be evaluated, both sides
    left_out: Tuple[str, ...] = ()  # pairs left out of every statistic (other scenes, not generated alike, one file)
    linked: Tuple[Path, ...] = ()  # every video's contact sheet, wherever it is (the report links them)


def _load_side(path: Path, *, metrics: Sequence[str], jobs: int, options: Optional[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    from circle_rotate.eval.results_io import read_results
    from circle_rotate.eval.runner import evaluate

    if _is_results(path):
        return list(read_results(path))
    return evaluate([path], metrics=metrics, jobs=jobs, options=options, staged_by_caller=True).rows


def _side_names(path: Path) -> List[Dict[str, Any]]:
    """A side's rows as far as pairing needs them: a results JSON's own rows, or a name per video."""
    from circle_rotate.eval.results_io import read_results
    from circle_rotate.eval.runner import find_videos

    if path.is_file() and path.suffix.lower() == ".json":
        return list(read_results(path))
    return [{"video": v.name, "path": str(v), "status": "ok"} for v in find_videos([path])]


#: Where a comparison puts each side's contact sheets, under its output folder.
SHEETS = ("sheets/baseline", "sheets/lora")


def compare_outputs(out_dir: os.PathLike | str) -> Tuple[Path, ...]:
    """The files ``run_compare`` writes into ``out_dir``."""
    from circle_rotate.eval.mask_outputs import REPORT_FILES  # OpenCV with it: only when run

    d = Path(out_dir)
    return (*(d / n for n in REPORT_FILES), *(d / n for n in FIGURES))


def stale_outputs(out: Path, staged: Path, *, keep: Sequence[os.PathLike | str] = ()) -> List[Path]:
    """The files an earlier comparison wrote into ``out`` that this one, staged in ``staged``, does
    not write again: its figures (``--metrics psnr`` draws no drift) and contact sheets (a side
    read from a results file has none here). Left beside the new report they would pass for its
    own. None where ``out`` holds no earlier report (its ``compare.json`` or ``report.html``):
    only a report's own files go, and never one in ``keep`` (a file the run reads, a sheet the
    report links).
    """
    from circle_rotate.eval.mask_outputs import SHEET_SUFFIX, is_report_folder

    if not is_report_folder(out):
        return []
    known = [*compare_outputs(out), *(f for d in SHEETS for f in sorted((out / d).glob(f"*{SHEET_SUFFIX}")))]
    kept = {Path(k).resolve() for k in keep}
    return [f for f in known if f.is_file() and not f.is_symlink() and not (staged / f.relative_to(out)).exists()
            and f.resolve() not in kept]


def run_compare(baseline: os.PathLike | str, lora: os.PathLike | str, *, out_dir: os.PathLike | str,
                metrics: Sequence[str] = ("default",), jobs: int = 1, options: Optional[Mapping[str, Any]] = None,
                force: bool = False, inputs: Sequence[os.PathLike | str] = (),
                start_check: bool = True) -> CompareOutcome:
    """Evaluate (or read) both sides, pair, compare, and write compare.json, PNGs and report.html.

    Args:
        baseline, lora: a folder of videos, one video, or a results JSON from ``circle-rotate eval``.
        out_dir: folder for the outputs (created).
        metrics: metrics to compute when a side is videos.
        jobs: worker processes for evaluating.
        options: learned-backend settings.
        force: replace existing outputs.
        inputs: the other files the run reads (a subject mask or boxes file, weights): no
            output may replace one, ``force`` or not, as none may replace a video.
        start_check: hold each pair's first frames against each other and leave out pairs that
            do not start at the same conditioning image; off for a LoRA that changes the whole
            first frame (then the pairing rests on the names alone, and a note says so).

    Everything is written into a staging folder beside ``out_dir`` (and ``options["mask_dir"]``)
    and moved into place once the comparison is done: an interrupted or failed run leaves an
    earlier run's report, sheets and masks as they were.

    Raises:
        UserError: a missing side, existing outputs without ``force``, or no common names.
    """
    from circle_rotate.eval.mask_outputs import check_inputs_kept, files_read, foreign_files, output_names
    from circle_rotate.eval.staging import Staging, deferred_stop
    from circle_rotate.kernel.atomic import check_output_path

    sides = [Path(baseline), Path(lora)]
    for side in sides:
        if not side.exists():
            raise UserError("not found", path=side, fix="pass a folder of videos, a video, or a results .json")
    out = Path(out_dir)
    listed = [_side_names(s) for s in sides]
    pair_rows(*listed)  # names pair up before any video is evaluated
    # a path an older results file held relative, found only in the current folder, is a guess
    # (results_io.resolve_paths): two such files may name one video that is neither's
    same = [set(os.path.realpath(r["path"]) for r in rows if r.get("path") and not r.get("path_guessed"))
            for rows in listed]
    if same[0] and same[0] == same[1]:  # a results file against its copy, or against the folder it came from
        raise UserError("both sides are the same videos (their paths agree): every difference would read 0",
                        path=sides[1], fix="pass the baseline videos (or their results) and the LoRA's")
    videos = [[Path(r["path"]) for r in rows if r.get("path")] for rows in listed]
    read = [*sides, *files_read([*videos[0], *videos[1], *inputs])]
    for p in compare_outputs(out):
        check_output_path(p, inputs=read, force=force)
    mask_dir = (options or {}).get("mask_dir")
    evaluated = [output_names(vs) if not _is_results(s) else [] for s, vs in zip(sides, videos)]
    for sheets, side, names in zip(SHEETS, ("baseline", "lora"), evaluated):
        check_inputs_kept(out / sheets, names, read, masks=False)
        if mask_dir:
            check_inputs_kept(Path(mask_dir) / side, names, read)
            foreign = [f for n in names for f in foreign_files(Path(mask_dir) / side / n)]
            if foreign:  # before any work: a user's files there are never overwritten
                raise UserError(f"--save-masks would write into {foreign[0].parent}, which holds files eval did not "
                                f"write (first: {foreign[0].name})", path=mask_dir, fix="name another --save-masks folder")
    from circle_rotate.eval.runner import box_key_notes, unmatched_box_keys

    # one boxes file for both sides (a labelled set names both demo2_base and demo2_ours): each
    # side is given the keys of its own videos, and only a key neither side has is named
    boxes = (options or {}).get("subject_boxes") or {}
    run_notes = box_key_notes(videos[0] + videos[1], boxes)
    side_boxes = {side: {k: v for k, v in boxes.items() if k not in unmatched_box_keys(vs, boxes)}
                  for side, vs in zip(("baseline", "lora"), videos)}
    # what this run writes is no comparison until it is done: staged, so that an interrupted run
    # leaves the earlier report as it was and the same command can run again
    with Staging([out, *([mask_dir] if mask_dir else [])]) as stage:

        def side_options(sheets: str, side: str) -> Dict[str, Any]:
            opts = {**(options or {}), "sheet_dir": str(stage.here(out) / sheets)}
            if boxes:
                opts["subject_boxes"] = side_boxes[side]
            if mask_dir:  # both sides may hold a demo1.mp4: one folder each
                opts["mask_dir"] = str(stage.here(mask_dir) / side)
            return opts

        outcome = _compare(sides, out, stage=stage, metrics=metrics, jobs=jobs, options=side_options,
                           run_notes=run_notes, start_check=start_check)
        # the earlier report's files this run does not write go when this run's take their place,
        # and not before: an interrupted run leaves the earlier report whole (staging.py)
        stale = stale_outputs(out, stage.here(out), keep=[*read, *outcome.linked])
        with deferred_stop():
            stage.commit()
            for f in stale:
                f.unlink(missing_ok=True)
            emptied = [out / d for d in SHEETS if any(f.parent == out / d for f in stale)]
            for folder in [*emptied, *({d.parent for d in emptied})]:  # no folders of nothing beside the report
                with contextlib.suppress(OSError):
                    folder.rmdir()
    return outcome


def _is_results(side: Path) -> bool:
    return side.is_file() and side.suffix.lower() == ".json"


def _compare(sides: List[Path], out: Path, *, stage, metrics: Sequence[str], jobs: int,
             options: Callable[[str, str], Dict[str, Any]],
             run_notes: Sequence[str] = (), start_check: bool = True) -> CompareOutcome:
    from circle_rotate.eval.plots import compare_figures
    from circle_rotate.eval.report import render_report
    from circle_rotate.kernel.atomic import write_bytes, write_json, write_text

    base_rows, lora_rows = (stage.final_rows(_load_side(s, metrics=metrics, jobs=jobs, options=options(d, n)))
                            for s, d, n in zip(sides, SHEETS, ("baseline", "lora")))
    pairs = pair_rows(base_rows, lora_rows)
    # one file on both sides differs by nothing: it would pull every column towards "no change"
    one_file = same_file_pairs(pairs)
    pairs_kept = [p for p in pairs if all(p is not q for q, _ in one_file)]
    differ, unchecked = different_starts(pairs_kept) if start_check else ([], [])
    other_scene = {id(p) for p, _ in differ}
    # a pair of another size, length or rate is named for that, which the user can check at a
    # glance, and not for its first frames (one side's first frames dropped, or another scene)
    unlike = mismatched_pairs(pairs_kept)
    first_why = {id(p): why for p, why in differ}
    differ = [(p, why) for p, why in differ if all(p is not q for q, _ in unlike)]
    every = [p for p, _ in [*differ, *one_file]]  # left out of every statistic (and unlike, below)
    comparisons = compare_pairs(pairs, left_out=every)
    left_out = [(p, why) for p, why in unreliable_pairs(pairs_kept) if id(p) not in other_scene]
    paired = {id(p.baseline) for p in pairs} | {id(p.lora) for p in pairs}
    notes = [*run_notes, *(f"{r['video']}: {r['error']}" for r in base_rows + lora_rows if r.get("status") != "ok")]
    unpaired = [r for r in base_rows + lora_rows if r.get("status") == "ok" and id(r) not in paired]
    notes += [_unpaired(r, lora_rows, base_rows) for r in base_rows if r.get("status") == "ok" and id(r) not in paired]
    notes += [_unpaired(r, base_rows, lora_rows) for r in lora_rows if r.get("status") == "ok" and id(r) not in paired]
    notes += [f"{p.name}: left out of every statistic: {why}" + (f" ({p.baseline['video']} beside {p.lora['video']})"
              if video_name(p.baseline) != video_name(p.lora) else "") for p, why in differ]
    if differ:
        notes.append("a LoRA that changes the whole first frame reads as another scene: if the pairs above are "
                     "right, run again with --no-start-check")
    if not start_check and pairs:
        notes.append("the first frames were not compared (--no-start-check): the pairs rest on their names alone")
    if unchecked:
        notes.append(f"{', '.join(unchecked[:3])}{' ...' if len(unchecked) > 3 else ''}: the first frames were not "
                     "compared (the videos cannot be read where the results say), so the pairing is not checked")
    notes += [f"{p.name}: left out of every statistic: the two videos were not generated alike ({why}); generate "
              f"both at the same size, length and frame rate"
              + (f"; also, its {first_why[id(p)]}" if id(p) in first_why else "") for p, why in unlike]
    notes += [f"{p.name}: left out of the drift and subject-flow statistics ({why})" for p, why in left_out
              if all(p is not q for q, _ in unlike)]
    notes += [f"{p.name}: left out of every statistic: {why}" for p, why in one_file]
    notes += measured_unlike(pairs)
    # the figures draw what the statistics hold, and nothing they leave out: a pair left out of
    # the drift (unreliable) drawn as the tallest bar would argue against the table beside it
    figures = compare_figures(comparisons, held_pairs(pairs, [c.column for c in comparisons], left_out=every))
    here = stage.here(out)  # written there, named as they will be once moved into place
    written = []
    for name, data in figures.items():
        write_bytes(here / name, data)
        written.append(out / name)
    summary = {"baseline": str(sides[0]), "lora": str(sides[1]), "pairs": [p.name for p in pairs],
               "metrics": [c.to_dict() for c in comparisons], "headline": [c.headline() for c in comparisons],
               "drift_left_out": {p.name: why for p, why in left_out},
               "left_out_not_alike": {p.name: why for p, why in unlike},
               "left_out_first_frames": {p.name: why for p, why in differ},
               "left_out_same_file": {p.name: why for p, why in one_file},
               "notes": notes, "baseline_videos": base_rows, "lora_videos": lora_rows}
    json_path, html_path = compare_outputs(out)[:2]
    write_json(here / json_path.name, summary)
    write_text(here / html_path.name, render_report(title="circle-rotate: baseline vs LoRA", baseline=str(sides[0]),
                                                    lora=str(sides[1]), pairs=pairs, comparisons=comparisons,
                                                    figures=figures, notes=notes, left_out=left_out,
                                                    left_out_all=[*differ, *unlike, *one_file], unpaired=unpaired,
                                                    base_dir=out))
    written += [json_path, html_path]
    written += [Path(r["contact_sheet"]) for r in base_rows + lora_rows if r.get("contact_sheet")
                and Path(r["contact_sheet"]).is_relative_to(out)]
    failed = sum(r.get("status") != "ok" for r in base_rows + lora_rows)
    return CompareOutcome(pairs, comparisons, tuple(written), tuple(notes), failed,
                          tuple(p.name for p, _ in [*differ, *unlike, *one_file]),
                          tuple(Path(r["contact_sheet"]) for r in base_rows + lora_rows if r.get("contact_sheet")))
