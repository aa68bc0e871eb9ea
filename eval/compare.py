"""Baseline vs LoRA: compare each metric over the pairs (:mod:`circle_rotate.eval.pairing`) with
a paired test and a bootstrap interval (scipy.stats), and report the relative change (e.g.
"drift -81%"). A pair whose first frames differ, or whose videos were not generated alike, is
left out of every statistic.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from circle_rotate.eval.pairing import Pair, _unpaired, different_starts, pair_rows
from circle_rotate.eval.registry import COLUMNS
from circle_rotate.kernel.errors import UserError


@dataclass(frozen=True)
class Comparison:
    """One column compared over the paired videos (LoRA minus baseline)."""

    column: str
    label: str
    better: Optional[str]
    n: int
    baseline_mean: float
    baseline_std: float
    lora_mean: float
    lora_std: float
    mean_diff: float
    relative_change: Optional[float]  # (lora - baseline) / |baseline| of the means
    ci_low: Optional[float]  # bootstrap interval of the mean difference
    ci_high: Optional[float]
    t_stat: Optional[float]
    p_value: Optional[float]  # paired t-test
    wilcoxon_p: Optional[float]  # Wilcoxon signed-rank test
    cohens_d: Optional[float]
    verdict: str

    def headline(self) -> str:
        """E.g. ``drift -81% (12.30 -> 2.34 px, p=0.003)``."""
        unit = COLUMNS[self.column].unit if self.column in COLUMNS else ""
        change = f"{self.relative_change:+.0%}" if self.relative_change is not None else "n/a"
        p = f", p={self.p_value:.3g}" if self.p_value is not None else ""
        return f"{self.column} {change} ({self.baseline_mean:.4g} -> {self.lora_mean:.4g}{' ' + unit if unit else ''}{p})"

    def to_dict(self) -> Dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def _bootstrap_ci(diff: np.ndarray, *, resamples: int, seed: int) -> Tuple[Optional[float], Optional[float]]:
    if diff.size < 2 or np.allclose(diff, diff[0]):
        return (float(diff[0]), float(diff[0])) if diff.size else (None, None)
    res = stats.bootstrap((diff,), np.mean, n_resamples=resamples, confidence_level=0.95, method="percentile",
                          random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _verdict(better: Optional[str], diff_mean: float, p: Optional[float], ci: Tuple[Optional[float], Optional[float]]) -> str:
    if better is None:
        return "changed" if p is not None and p < 0.05 else "no clear change"
    improved = diff_mean < 0 if better == "lower" else diff_mean > 0
    excludes_zero = ci[0] is not None and ci[1] is not None and (ci[0] > 0 or ci[1] < 0)
    if p is not None and p < 0.05 and excludes_zero:
        return "better" if improved else "worse"
    return "no significant difference"


#: Two readings this close (relative) are the same reading.
SAME_VALUE_RTOL = 1e-9


def compare_column(pairs: Sequence[Pair], column: str, *, resamples: int = 9999, seed: int = 0) -> Optional[Comparison]:
    """Paired statistics of ``column``; None when fewer than one pair has numbers for it."""
    vals = [(p.baseline.get(column), p.lora.get(column)) for p in pairs]
    vals = [(b, l) for b, l in vals if isinstance(b, (int, float)) and isinstance(l, (int, float))
            and not isinstance(b, bool) and math.isfinite(b) and math.isfinite(l)]
    if not vals:
        return None
    base = np.array([v[0] for v in vals], np.float64)
    lora = np.array([v[1] for v in vals], np.float64)
    # the same video measured twice differs by float round-off (1e-12 on a flow mean), which a
    # t-test would read as a difference with p 0.26 and an effect size of 1.6: it is none
    same = np.abs(lora - base) <= SAME_VALUE_RTOL * np.maximum(np.abs(lora), np.abs(base))
    lora = np.where(same, base, lora)
    diff = lora - base
    t = p = w = d = None
    if diff.size >= 2 and np.std(diff) > 0:
        t, p = (float(x) for x in stats.ttest_rel(lora, base))
        d = float(diff.mean() / diff.std(ddof=1))
        if np.count_nonzero(diff) >= 1:
            w = float(stats.wilcoxon(lora, base).pvalue)
    ci = _bootstrap_ci(diff, resamples=resamples, seed=seed)
    info = COLUMNS.get(column)
    rel = float(diff.mean() / abs(base.mean())) if base.mean() != 0 else None
    return Comparison(column, info.label if info else column, info.better if info else None, int(diff.size),
                      float(base.mean()), float(base.std()), float(lora.mean()), float(lora.std()), float(diff.mean()),
                      rel, ci[0], ci[1], t, p, w, d, _verdict(info.better if info else None, float(diff.mean()), p, ci))


#: Columns measured on the subject mask: a pair with an unreliable drift reading on either
#: side is left out of their statistics.
MASK_COLUMNS = ("drift", "subject_flow")


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


def compare_pairs(pairs: Sequence[Pair], *, resamples: int = 9999, seed: int = 0,
                  left_out: Sequence[Pair] = ()) -> List[Comparison]:
    """:func:`compare_column` for every numeric metric column present, in registry order, over the
    pairs generated alike (:func:`mismatched_pairs`) and not in ``left_out`` (pairs of different
    scenes: :func:`different_starts`); the mask columns over those whose drift is reliable on both
    sides."""
    out = []
    unlike = {id(p) for p, _ in mismatched_pairs(pairs)} | {id(p) for p in left_out}
    alike = [p for p in pairs if id(p) not in unlike]
    doubtful = {id(p) for p, _ in unreliable_pairs(alike)}
    reliable = [p for p in alike if id(p) not in doubtful]
    for column in COLUMNS:
        c = compare_column(reliable if column in MASK_COLUMNS else alike, column, resamples=resamples, seed=seed)
        if c is not None:
            out.append(c)
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
    left_out: Tuple[str, ...] = ()  # pairs left out of every statistic (other scenes, not generated alike)


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


def run_compare(baseline: os.PathLike | str, lora: os.PathLike | str, *, out_dir: os.PathLike | str,
                metrics: Sequence[str] = ("default",), jobs: int = 1, options: Optional[Mapping[str, Any]] = None,
                force: bool = False, resamples: int = 9999, inputs: Sequence[os.PathLike | str] = (),
                start_check: bool = True) -> CompareOutcome:
    """Evaluate (or read) both sides, pair, compare, and write compare.json, PNGs and report.html.

    Args:
        baseline, lora: a folder of videos, one video, or a results JSON from ``circle-rotate eval``.
        out_dir: folder for the outputs (created).
        metrics: metrics to compute when a side is videos.
        jobs: worker processes for evaluating.
        options: learned-backend settings.
        force: replace existing outputs.
        resamples: bootstrap resamples.
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
    same = [set(os.path.realpath(r["path"]) for r in rows if r.get("path")) for rows in listed]
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
                           resamples=resamples, run_notes=run_notes, start_check=start_check)
        with deferred_stop():
            stage.commit()
    return outcome


def _is_results(side: Path) -> bool:
    return side.is_file() and side.suffix.lower() == ".json"


def _compare(sides: List[Path], out: Path, *, stage, metrics: Sequence[str], jobs: int,
             options: Callable[[str, str], Dict[str, Any]], resamples: int,
             run_notes: Sequence[str] = (), start_check: bool = True) -> CompareOutcome:
    from circle_rotate.eval.plots import compare_figures
    from circle_rotate.eval.report import render_report
    from circle_rotate.kernel.atomic import write_bytes, write_json, write_text

    base_rows, lora_rows = (stage.final_rows(_load_side(s, metrics=metrics, jobs=jobs, options=options(d, n)))
                            for s, d, n in zip(sides, SHEETS, ("baseline", "lora")))
    pairs = pair_rows(base_rows, lora_rows)
    differ, unchecked = different_starts(pairs) if start_check else ([], [])
    other_scene = {id(p) for p, _ in differ}
    # a pair of another size, length or rate is named for that, which the user can check at a
    # glance, and not for its first frames (one side's first frames dropped, or another scene)
    unlike = mismatched_pairs(pairs)
    first_why = {id(p): why for p, why in differ}
    differ = [(p, why) for p, why in differ if all(p is not q for q, _ in unlike)]
    comparisons = compare_pairs(pairs, resamples=resamples, left_out=[p for p, _ in differ])
    left_out = [(p, why) for p, why in unreliable_pairs(pairs) if id(p) not in other_scene]
    paired = {id(p.baseline) for p in pairs} | {id(p.lora) for p in pairs}
    notes = [*run_notes, *(f"{r['video']}: {r['error']}" for r in base_rows + lora_rows if r.get("status") != "ok")]
    unpaired = [r for r in base_rows + lora_rows if r.get("status") == "ok" and id(r) not in paired]
    notes += [_unpaired(r, lora_rows, base_rows) for r in base_rows if r.get("status") == "ok" and id(r) not in paired]
    notes += [_unpaired(r, base_rows, lora_rows) for r in lora_rows if r.get("status") == "ok" and id(r) not in paired]
    notes += [f"{p.name}: left out of every statistic: {why}" + (f" ({p.baseline['video']} beside {p.lora['video']})"
              if p.baseline["video"] != p.lora["video"] else "") for p, why in differ]
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
    notes += measured_unlike(pairs)
    figures = compare_figures([p for p in pairs if id(p) not in other_scene], comparisons)
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
               "notes": notes, "baseline_videos": base_rows, "lora_videos": lora_rows}
    json_path, html_path = compare_outputs(out)[:2]
    write_json(here / json_path.name, summary)
    write_text(here / html_path.name, render_report(title="circle-rotate: baseline vs LoRA", baseline=str(sides[0]),
                                                    lora=str(sides[1]), pairs=pairs, comparisons=comparisons,
                                                    figures=figures, notes=notes, left_out=left_out,
                                                    left_out_all=[*differ, *unlike], unpaired=unpaired,
                                                    base_dir=out))
    written += [json_path, html_path]
    written += [Path(r["contact_sheet"]) for r in base_rows + lora_rows if r.get("contact_sheet")
                and Path(r["contact_sheet"]).is_relative_to(out)]
    failed = sum(r.get("status") != "ok" for r in base_rows + lora_rows)
    return CompareOutcome(pairs, comparisons, tuple(written), tuple(notes), failed,
                          tuple(p.name for p, _ in [*differ, *unlike]))
