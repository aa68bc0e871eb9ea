"""``eval compare``'s statistics and what its report shows of them: the interval's coverage at the
few pairs a comparison has, no verdict under 3 pairs, no relative change from a baseline of 0,
figures over the pairs the statistics hold, one file on both sides, and an earlier report's
files after ``--force``."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from scipy import stats

from circle_rotate.eval.compare import run_compare
from circle_rotate.eval.paired_stats import compare_column
from circle_rotate.eval.pairing import Pair
from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec, write_turntable


def _pairs(base, lora, column="drift"):
    return [Pair(f"v{i}", {column: float(b)}, {column: float(l_)}) for i, (b, l_) in enumerate(zip(base, lora))]


@pytest.mark.parametrize("n", [3, 5])
def test_the_95_percent_interval_holds_the_true_difference_95_percent_of_the_time(n):
    """A known true difference (-1 px, normal noise) compared 400 times: the percentile bootstrap
    this replaced held it 73% of the time at n=3 and 83% at n=5."""
    rng = np.random.default_rng(7)
    runs, hits = 400, 0
    for _ in range(runs):
        base = rng.uniform(3, 9, n)
        lora = base - 1.0 + rng.normal(0, 1.5, n)
        c = compare_column(_pairs(base, lora), "drift")
        hits += c.ci_low <= -1.0 <= c.ci_high
    assert hits / runs >= 0.92, f"covered {hits / runs:.1%} at n={n}"


def test_the_interval_is_the_paired_t_tests_own():
    rng = np.random.default_rng(3)
    base = rng.uniform(3, 9, 6)
    lora = base - 0.5 + rng.normal(0, 1.0, 6)
    c = compare_column(_pairs(base, lora), "drift")
    res = stats.ttest_rel(lora, base)
    if hasattr(res, "confidence_interval"):  # scipy >= 1.10 or so; the code computes it with t.ppf
        want = res.confidence_interval()
        assert (c.ci_low, c.ci_high) == pytest.approx((want.low, want.high), rel=1e-9)
    # it excludes 0 exactly when the t-test's p is under 0.05
    assert (c.p_value < 0.05) == (c.ci_low > 0 or c.ci_high < 0)


def test_under_three_pairs_there_is_no_interval_and_no_verdict():
    one = compare_column(_pairs([10.0], [2.0]), "drift")
    assert one.ci_low is None and one.ci_high is None and one.verdict == "too few pairs (under 3)"
    # two pairs: a t-test with one degree of freedom reads p=0.004, where Wilcoxon's smallest
    # possible p is 0.5; it used to read "better" with an interval of [-8, -7.9]
    two = compare_column(_pairs([10.0, 12.0], [2.0, 4.1]), "drift")
    assert two.p_value < 0.01 and two.wilcoxon_p == 0.5
    assert two.ci_low is None and two.verdict == "too few pairs (under 3)"
    # every pair changed by the same amount: no spread, no interval of width 0
    same = compare_column(_pairs([10.0, 12.0, 11.0], [2.0, 4.0, 3.0]), "drift")
    assert same.n == 3 and same.ci_low is None and same.ci_high is None and same.verdict == "no significant difference"
    # three pairs with spread: an interval and a verdict
    three = compare_column(_pairs([10.0, 12.0, 11.0], [2.0, 4.5, 3.1]), "drift")
    assert three.ci_high < 0 and three.verdict == "better"


def test_a_baseline_near_zero_gives_no_relative_change():
    """A static camera's baseline drift of round-off against a LoRA's 2.9 px read +1.2e16 %."""
    c = compare_column(_pairs([3.18e-14, 1.42e-14, 2.84e-14], [2.851, 2.872, 2.876]), "drift")
    assert c.relative_change is None and c.headline().startswith("drift from ~0 (")
    zero = compare_column(_pairs([0.0, 0.0, 0.0], [2.851, 2.872, 2.876]), "drift")
    assert zero.relative_change is None and zero.headline().startswith("drift from 0 (0 -> 2.866 px")
    flow = compare_column(_pairs([5.9e-05, 1.5e-4, 3.2e-4], [1.31, 1.33, 1.35], "subject_flow"), "subject_flow")
    assert flow.relative_change is None  # 0.0002 px of compression noise: +755000% said nothing
    # a baseline well clear of 0 keeps its relative change
    kept = compare_column(_pairs([0.2, 0.3, 0.25], [2.851, 2.872, 2.876]), "drift")
    assert kept.relative_change == pytest.approx((2.866333 - 0.25) / 0.25, rel=1e-4)
    assert compare_column(_pairs([0, 0, 0], [0, 0, 0], "mask_fallbacks"), "mask_fallbacks").headline() \
        .startswith("mask_fallbacks unchanged")


def test_one_outlier_does_not_make_the_baseline_read_as_zero():
    """Failed before: a LoRA video at 400 px put the floor at 4 px, and a 3.37 px baseline read
    'from ~0' with no relative change."""
    c = compare_column(_pairs([3.1, 3.5, 3.2, 3.7, 3.4], [2.9, 3.3, 400.0, 3.1, 3.0]), "drift")
    assert c.relative_change == pytest.approx((np.mean([2.9, 3.3, 400.0, 3.1, 3.0]) - 3.38) / 3.38)
    assert not c.headline().startswith("drift from")


def test_a_still_subjects_drift_is_exactly_zero_not_round_off():
    from circle_rotate.eval.drift import drift_of

    still = np.tile([128.97312345, 83.6001234], (16, 1))
    assert drift_of(still) == 0.0  # np.std reads 1.4e-14 px here
    # centroids one float step apart (two passes' means summed in another order): round-off too
    steps = np.random.default_rng(1).integers(-2, 3, still.shape) * np.spacing(still)
    assert 0 < np.hypot(*(still + steps).std(axis=0)) and drift_of(still + steps) == 0.0
    moved = still.copy()
    moved[7, 0] += 1e-7  # far under a pixel, far over round-off: a drift all the same
    assert drift_of(moved) == pytest.approx(1e-7 * np.sqrt(15) / 16, rel=1e-3)
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 1280, (16, 2))
    assert drift_of(pts) == pytest.approx(np.hypot(pts[:, 0].std(), pts[:, 1].std()), rel=1e-12)


def _row(name, *, drift, psnr, unreliable=None, width=128, side="base"):
    t = np.linspace(0, 1, 16)
    centroids = np.stack([60 + drift * np.sin(6 * t), 40 + drift * np.cos(6 * t)], axis=1)
    return {"video": f"{name}.mp4", "path": f"/nonexistent/{side}/{name}.mp4", "status": "ok", "width": width,
            "height": 80, "frames": 17, "fps": 16.0, "drift": drift, "subject_flow": drift / 3, "psnr": psnr,
            "drift_unreliable": unreliable, "drift_confidence": 0.2 if unreliable else 0.9,
            "series": {"subject_drift": {"centroids": centroids.round(3).tolist()}}}


def _results(path, rows):
    path.write_text(json.dumps({"videos": rows}))
    return path


def _two_sides(tmp_path):
    """Six pairs: one whose LoRA drift is unreliable (the tallest bar, as `cat` on the real GIFs),
    one whose LoRA video is twice the size (left out of every statistic)."""
    base = [_row(f"v{i}", drift=3.0 + i, psnr=20.0 + i) for i in range(6)]
    lora = [_row(f"v{i}", drift=1.0 + 0.5 * i, psnr=21.0 + i * 1.1, side="lora") for i in range(6)]
    lora[2] = _row("v2", drift=40.0, psnr=23.0, unreliable="the mask's area changed (rigid 0.20 < 0.5)", side="lora")
    lora[4] = _row("v4", drift=2.0, psnr=25.0, width=256, side="lora")
    return _results(tmp_path / "base.json", base), _results(tmp_path / "lora.json", lora)


def test_the_figures_draw_exactly_the_pairs_in_the_statistics(tmp_path, monkeypatch):
    """Counted where they are drawn: each box plot's points, each bar series, each centroid path."""
    import matplotlib.axes

    from circle_rotate.eval import plots

    drawn = {"boxes": [], "bars": [], "paths": 0, "titles": []}
    boxplot, bar, set_title, trajectory = (matplotlib.axes.Axes.boxplot, matplotlib.axes.Axes.bar,
                                           matplotlib.axes.Axes.set_title, plots._trajectory)

    def spy_box(self, data, *a, **k):
        drawn["boxes"].append([len(d) for d in data])
        return boxplot(self, data, *a, **k)

    def spy_bar(self, x, height, *a, **k):
        drawn["bars"].append(len(height))
        return bar(self, x, height, *a, **k)

    def spy_title(self, label, *a, **k):
        drawn["titles"].append(label)
        return set_title(self, label, *a, **k)

    def spy_path(*a, **k):
        drawn["paths"] += 1
        return trajectory(*a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "boxplot", spy_box)
    monkeypatch.setattr(matplotlib.axes.Axes, "bar", spy_bar)
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", spy_title)
    monkeypatch.setattr(plots, "_trajectory", spy_path)
    base, lora = _two_sides(tmp_path)
    run_compare(base, lora, out_dir=tmp_path / "report")
    data = json.loads((tmp_path / "report" / "compare.json").read_text())
    n = {m["column"]: m["n"] for m in data["metrics"]}
    assert n["drift"] == n["subject_flow"] == 4 and n["psnr"] == 5  # v4 out of all, v2 out of the drift
    assert drawn["boxes"] == [[m["n"], m["n"]] for m in data["metrics"]]
    assert drawn["bars"] == [n["drift"], n["drift"]]  # drift_per_video.png: baseline and LoRA bars
    assert drawn["paths"] == 2 * n["drift"]  # trajectories.png: both sides' paths per pair
    assert "subject drift (px) per video, n=4" in drawn["titles"]
    assert any(t.endswith(", n=5") for t in drawn["titles"])  # each distribution panel gives its n


def test_a_pair_whose_two_sides_are_one_file_is_left_out_with_a_note(tmp_path):
    for i in range(4):
        write_turntable(TurntableSpec(name=f"d{i}", width=128, height=80, frames=9, seed=i), tmp_path / "base")
    shutil.copytree(tmp_path / "base", tmp_path / "lora")
    (tmp_path / "lora" / "d3.mp4").unlink()
    os.symlink(tmp_path / "base" / "d3.mp4", tmp_path / "lora" / "d3.mp4")  # the LoRA's video never made
    outcome = run_compare(tmp_path / "base", tmp_path / "lora", out_dir=tmp_path / "out", metrics=["psnr"])
    data = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert data["metrics"][0]["n"] == 3  # a difference of exactly 0 would pull it towards "no change"
    assert list(data["left_out_same_file"]) == ["d3"] and "d3" in outcome.left_out
    assert any(n.startswith("d3: left out of every statistic: both sides are one file") for n in outcome.notes)


def test_force_into_an_earlier_report_removes_its_files_this_run_does_not_write(tmp_path):
    base, lora = _two_sides(tmp_path)
    out = tmp_path / "report"
    run_compare(base, lora, out_dir=out)
    assert (out / "trajectories.png").is_file() and (out / "drift_per_video.png").is_file()
    # an earlier run on videos left contact sheets; one a results row links stays
    for side in ("baseline", "lora"):
        (out / "sheets" / side).mkdir(parents=True)
        (out / "sheets" / side / "v0.drift.png").write_bytes(b"png")
    linked = out / "sheets" / "lora" / "v1.drift.png"
    linked.write_bytes(b"png")
    (out / "notes.txt").write_text("mine")  # not a report's file: never removed
    rows = json.loads(lora.read_text())["videos"]
    for r in rows:
        del r["drift"], r["subject_flow"], r["series"], r["drift_confidence"]
    rows[1]["contact_sheet"] = str(linked)
    psnr_only = _results(tmp_path / "lora_psnr.json", rows)
    base_rows = json.loads(base.read_text())["videos"]
    for r in base_rows:
        del r["drift"], r["subject_flow"], r["series"], r["drift_confidence"]
    base_psnr = _results(tmp_path / "base_psnr.json", base_rows)
    run_compare(base_psnr, psnr_only, out_dir=out, force=True)
    assert not (out / "trajectories.png").exists() and not (out / "drift_per_video.png").exists()
    assert not (out / "sheets" / "baseline").exists() and not (out / "sheets" / "lora" / "v0.drift.png").exists()
    assert linked.is_file() and (out / "notes.txt").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["compare.json", "distributions.png", "notes.txt", "report.html",
                                                     "sheets"]
    assert [m["column"] for m in json.loads((out / "compare.json").read_text())["metrics"]] == ["psnr"]
