"""``circle-rotate eval compare``: pairing by name, paired statistics, figures and the HTML report."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
from scipy import stats

from circle_rotate.cli.main import main
from circle_rotate.eval.compare import pair_rows, run_compare
from circle_rotate.eval.paired_stats import compare_column
from circle_rotate.eval.results_io import write_results
from circle_rotate.eval.runner import evaluate
from circle_rotate.kernel.errors import UserError
from circle_rotate.selfcheck.synthetic.turntable import DriftPath, TurntableSpec, write_turntable

SUBJECTS = ("box", "figure", "car", "lshape")


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    """The same four orbits twice: with a strong injected drift (baseline) and without (LoRA).
    Quarter-turn orbits of these tiny multi-coloured subjects show faces the first frame never
    had, and the evaluator marks most of them unreliable (they would all be left out of the
    drift statistics this test is about); over 45 degrees it follows them."""
    root = tmp_path_factory.mktemp("compare")
    for side, amp in (("baseline", 40.0), ("lora", 0.0)):
        for i, subject in enumerate(SUBJECTS):
            spec = TurntableSpec(name=f"demo{i}", width=256, height=160, frames=21, subject=subject, seed=i,
                                 total_angle_deg=45.0,
                                 direction=("left", "right")[i % 2], drift=DriftPath("linear", amp, angle_deg=15 * i))
            write_turntable(spec, root / side)
    return root


def test_compare_folders_writes_json_pngs_and_a_self_contained_report(sides, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["-q", "eval", "compare", str(sides / "baseline"), str(sides / "lora"), "--out", str(out),
                 "--metrics", "subject_drift", "psnr", "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "4 paired videos" in printed and re.search(r"drift [+-]\d+%", printed)
    data = json.loads((out / "compare.json").read_text())
    assert data["pairs"] == ["demo0", "demo1", "demo2", "demo3"]
    drift = next(m for m in data["metrics"] if m["column"] == "drift")
    # pairs with an unreliable drift reading on either side are left out of the drift statistics
    kept = [not (b.get("drift_unreliable") or l_.get("drift_unreliable"))
            for b, l_ in zip(data["baseline_videos"], data["lora_videos"])]
    assert sorted(data["drift_left_out"]) == [n for n, k in zip(data["pairs"], kept) if not k]
    base = [r["drift"] for r, k in zip(data["baseline_videos"], kept) if k]
    lora = [r["drift"] for r, k in zip(data["lora_videos"], kept) if k]
    assert drift["n"] == sum(kept) >= 1
    assert drift["baseline_mean"] == pytest.approx(np.mean(base)) and drift["lora_mean"] == pytest.approx(np.mean(lora))
    assert drift["relative_change"] == pytest.approx((np.mean(lora) - np.mean(base)) / np.mean(base))
    if sum(kept) >= 2:  # the paired test needs two (the statistics themselves: the test below)
        assert drift["p_value"] == pytest.approx(stats.ttest_rel(lora, base).pvalue)
    if sum(kept) >= 3:  # the interval needs three (paired_stats.MIN_PAIRS); under that, none and no verdict
        assert drift["ci_low"] <= np.mean(np.subtract(lora, base)) <= drift["ci_high"]
    else:
        assert drift["ci_low"] is None and drift["verdict"] == "too few pairs (under 3)"
    for name in ("trajectories.png", "drift_per_video.png", "distributions.png"):
        img = cv2.imread(str(out / name))
        assert img is not None and img.shape[0] > 100
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    # nothing to fetch but the contact sheets written next to it
    links = re.findall(r"""(?:src|href)=['"](?!data:)([^'"]+)""", html)
    assert len(links) == 8 and all(link.startswith("sheets/") and (out / link).is_file() for link in links), links
    sheet = cv2.imread(str(out / links[0]))
    assert sheet is not None and sheet.shape[0] > 200 and sheet.shape[1] > 800
    assert "demo3" in html and "paired t" in html
    capsys.readouterr()
    assert main(["-q", "eval", "compare", str(sides / "baseline"), str(sides / "lora"), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


def test_compare_reads_results_json_and_pairs_names_with_side_suffixes(sides, tmp_path):
    base = evaluate([sides / "baseline"], metrics=["psnr", "ssim"])
    lora = evaluate([sides / "lora"], metrics=["psnr", "ssim"])
    for r in base.rows:
        r["video"] = r["video"].replace(".mp4", "_base.mp4")
    for r in lora.rows:
        r["video"] = r["video"].replace(".mp4", "_ours.mp4")
    write_results(base, tmp_path / "base.json")
    write_results(lora, tmp_path / "lora.json")
    outcome = run_compare(tmp_path / "base.json", tmp_path / "lora.json", out_dir=tmp_path / "cmp")
    assert [p.name for p in outcome.pairs] == ["demo0", "demo1", "demo2", "demo3"]
    ssim = next(c for c in outcome.comparisons if c.column == "ssim")
    b = [r["ssim"] for r in base.rows]
    l_ = [r["ssim"] for r in lora.rows]
    assert ssim.mean_diff == pytest.approx(np.mean(np.subtract(l_, b)))
    assert ssim.wilcoxon_p == pytest.approx(stats.wilcoxon(l_, b).pvalue)
    assert (tmp_path / "cmp" / "report.html").exists()


def test_pairing_refuses_sides_without_common_names():
    with pytest.raises(UserError, match="namesake"):
        pair_rows([{"video": "a.mp4", "status": "ok"}, {"video": "b.mp4", "status": "ok"}],
                  [{"video": "x.mp4", "status": "ok"}, {"video": "yz.mp4", "status": "ok"}])


def test_verdict_needs_significance_and_an_interval_that_excludes_zero():
    from circle_rotate.eval.compare import Pair

    rng = np.random.default_rng(1)
    base = rng.uniform(15, 25, 12)
    pairs = [Pair(str(i), {"drift": float(b)}, {"drift": float(b * 0.2 + rng.normal(0, 0.5))}) for i, b in enumerate(base)]
    c = compare_column(pairs, "drift")
    assert c.verdict == "better" and c.relative_change == pytest.approx(-0.8, abs=0.05) and c.ci_high < 0
    same = [Pair(str(i), {"drift": float(b)}, {"drift": float(b + rng.normal(0, 0.5))}) for i, b in enumerate(base)]
    assert compare_column(same, "drift").verdict == "no significant difference"


def test_pairs_with_an_unreliable_drift_are_left_out_of_the_drift_statistics_only():
    from circle_rotate.eval.compare import Pair, compare_pairs, unreliable_pairs

    rows = [({"drift": 10.0 + i, "psnr": 30.0 + i, "drift_unreliable": None},
             {"drift": 2.0 + i, "psnr": 31.0 + 2 * i, "drift_unreliable": None}) for i in range(5)]
    rows[1][1]["drift_unreliable"] = "the mask's area changed (rigid 0.20 < 0.5)"
    rows[3][0]["drift"], rows[3][0]["drift_unreliable"] = 90.0, "two passes disagree (passes 0.30 < 0.5)"
    pairs = [Pair(f"v{i}", b, l_) for i, (b, l_) in enumerate(rows)]
    left = unreliable_pairs(pairs)
    assert [p.name for p, _ in left] == ["v1", "v3"] and "LoRA: the mask's area" in left[0][1]
    got = {c.column: c for c in compare_pairs(pairs)}
    kept = [0, 2, 4]
    assert got["drift"].n == 3 and got["drift"].baseline_mean == pytest.approx(np.mean([10.0 + i for i in kept]))
    assert got["psnr"].n == 5  # the other metrics keep every pair


def test_pairs_not_generated_alike_are_left_out_of_every_statistic_and_named(tmp_path):
    """Drift is in pixels: a LoRA video at twice the size reads twice the drift for the same motion."""
    from circle_rotate.eval.compare import Pair, compare_pairs, mismatched_pairs

    def row(i, w=320, h=180, frames=17, fps=16.0, drift=1.0):
        return {"video": f"v{i}.mp4", "status": "ok", "width": w, "height": h, "frames": frames, "fps": fps,
                "drift": drift + i, "psnr": 30.0 + i, "drift_unreliable": None}

    pairs = [Pair(f"v{i}", row(i), row(i, drift=0.5)) for i in range(4)]
    pairs.append(Pair("v4", row(4), row(4, w=640, h=360, drift=2.0)))  # the same relative drift, twice the pixels
    pairs.append(Pair("v5", row(5), row(5, frames=33, fps=24.0)))
    pairs.append(Pair("v6", row(6), row(6, fps=16.04)))  # a container's rounding: alike
    unlike = mismatched_pairs(pairs)
    assert [p.name for p, _ in unlike] == ["v4", "v5"]
    assert unlike[0][1] == "baseline 320x180, 17 frames at 16 fps, LoRA 640x360, 17 frames at 16 fps"
    got = {c.column: c for c in compare_pairs(pairs)}
    assert got["drift"].n == got["psnr"].n == 5

    for side, sizes in (("baseline", ((128, 80), (128, 80))), ("lora", ((128, 80), (256, 160)))):
        for i, (w, h) in enumerate(sizes):
            write_turntable(TurntableSpec(name=f"d{i}", width=w, height=h, frames=9, seed=i), tmp_path / side)
    outcome = run_compare(tmp_path / "baseline", tmp_path / "lora", out_dir=tmp_path / "out", metrics=["motion"])
    notes = [n for n in outcome.notes if "not generated alike" in n]
    assert notes == ["d1: left out of every statistic: the two videos were not generated alike (baseline 128x80, 9 frames "
                     "at 16 fps, LoRA 256x160, 9 frames at 16 fps); generate both at the same size, length and frame rate"]
    data = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert list(data["left_out_not_alike"]) == ["d1"] and data["metrics"][0]["n"] == 1


def test_contact_sheet_links_survive_file_names_that_are_not_urls(tmp_path):
    import html as html_lib
    from urllib.parse import unquote, urlsplit

    from circle_rotate.eval.report import _sheet_link

    sheet = tmp_path / "sheets" / "lora" / "cat #1 at 50%?.drift.png"
    sheet.parent.mkdir(parents=True)
    sheet.write_bytes(b"png")
    href = re.search(r"href='([^']+)'", _sheet_link({"contact_sheet": str(sheet)}, tmp_path, "sheet")).group(1)
    url = urlsplit(html_lib.unescape(href))
    assert not url.fragment and not url.query  # "#" and "?" stay in the path
    assert (tmp_path / unquote(url.path)).resolve() == sheet.resolve()


def test_a_pair_whose_lora_video_failed_says_so(sides, tmp_path):
    base = evaluate([sides / "baseline"], metrics=["psnr"])
    lora = evaluate([sides / "lora"], metrics=["psnr"])
    # the LoRA's demo3 came out black (NaNs in the sampler): an error row, as eval makes it
    (black,) = [r for r in lora.rows if r["video"] == "demo3.mp4"]
    black.update(status="error", error="every frame is one flat colour: there is no picture to measure")
    write_results(base, tmp_path / "base.json")
    write_results(lora, tmp_path / "lora.json")
    outcome = run_compare(tmp_path / "base.json", tmp_path / "lora.json", out_dir=tmp_path / "cmp")
    assert [p.name for p in outcome.pairs] == ["demo0", "demo1", "demo2"]
    assert "demo3.mp4: its namesake demo3.mp4 could not be evaluated, so the pair is left out" in outcome.notes
    assert not any("no namesake" in n for n in outcome.notes)


def test_compare_refuses_one_folder_twice_and_options_a_results_file_cannot_take(sides, tmp_path, capsys):
    base = sides / "baseline"
    assert main(["-q", "eval", "compare", str(base), str(base) + "/", "--out", str(tmp_path / "r")]) == 2
    assert "BASELINE and LORA are the same path" in capsys.readouterr().err
    results = tmp_path / "base.json"
    assert main(["-q", "eval", str(base / "demo0.mp4"), "--metrics", "motion", "-o", str(results)]) == 0
    assert main(["-q", "eval", "compare", str(results), str(sides / "lora"), "--out", str(tmp_path / "r"),
                 "--save-masks", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert f"--save-masks applies to videos being evaluated, and {results} is a results file" in err
    assert not (tmp_path / "m").exists() and not (tmp_path / "r").exists()


@pytest.mark.parametrize("metrics, error", [("", "no metric named"), ("bogus", "unknown metric(s): bogus")])
def test_eval_refuses_metrics_and_weights_that_name_nothing(sides, metrics, error, tmp_path, capsys):
    assert main(["-q", "eval", str(sides / "baseline" / "demo0.mp4"), "--metrics", metrics]) == 2
    assert error in capsys.readouterr().err
    assert main(["-q", "eval", str(sides / "baseline" / "demo0.mp4"), "--weights", f"bogus={tmp_path}"]) == 2
    assert "--weights bogus=...: no metric takes weights of that name; fix: use clip=PATH, yolo=PATH, sam=PATH" \
        in capsys.readouterr().err


def test_names_marked_by_side_on_only_some_videos_still_pair():
    rows = lambda *names: [{"video": n, "status": "ok"} for n in names]  # noqa: E731
    pairs = pair_rows(rows("demo1_base.gif", "demo2.mp4", "demo3-orig.mp4"),
                      rows("demo1_ours.gif", "demo2.mp4", "demo3-lora.mp4", "demo4.mp4"))
    assert sorted((p.name, p.baseline["video"], p.lora["video"]) for p in pairs) == [
        ("demo1", "demo1_base.gif", "demo1_ours.gif"), ("demo2", "demo2.mp4", "demo2.mp4"),
        ("demo3", "demo3-orig.mp4", "demo3-lora.mp4")]


def test_a_report_written_inside_a_side_is_not_read_as_a_video_on_the_next_run(sides, tmp_path, capsys):
    import shutil

    base, lora = tmp_path / "b", tmp_path / "l"
    shutil.copytree(sides / "baseline", base)
    shutil.copytree(sides / "lora", lora)
    args = ["-q", "eval", "compare", str(base), str(lora), "--metrics", "motion", "--out", str(lora / "report")]
    assert main(args) == 0
    first = json.loads((lora / "report" / "compare.json").read_text())
    assert main([*args, "--force"]) == 0  # the report's PNGs are no video's frames
    again = json.loads((lora / "report" / "compare.json").read_text())
    assert again["notes"] == first["notes"] and len(again["pairs"]) == len(first["pairs"]) == len(SUBJECTS)
    assert main(["-q", "eval", str(lora / "report"), "--metrics", "motion"]) == 2
    assert "folder is an eval compare report, not a video's frames" in capsys.readouterr().err


def test_two_videos_of_one_name_on_a_side_pair_by_their_whole_file_name_only():
    from circle_rotate.eval.pairing import _unpaired

    rows = lambda *names: [{"video": n, "status": "ok"} for n in names]  # noqa: E731
    base, lora = rows("demo1.gif", "demo1.mp4", "demo2.mp4"), rows("demo1.gif", "demo2.mp4")
    pairs = pair_rows(base, lora)
    assert sorted((p.baseline["video"], p.lora["video"]) for p in pairs) == [("demo1.gif", "demo1.gif"),
                                                                              ("demo2.mp4", "demo2.mp4")]
    assert "demo1.gif on its side has its name too" in _unpaired(base[1], lora, base)
    # twins on both sides, no whole name in common: no guess at all
    pairs = pair_rows(rows("x.gif", "x.mp4", "y.mp4"), rows("x.webm", "x.mkv", "y.mp4"))
    assert [(p.baseline["video"], p.lora["video"]) for p in pairs] == [("y.mp4", "y.mp4")]


def test_compare_refuses_a_results_file_against_its_copy_or_its_folder(sides, tmp_path, capsys):
    results = tmp_path / "base.json"
    assert main(["-q", "eval", str(sides / "baseline"), "--metrics", "motion", "-o", str(results)]) == 0
    (tmp_path / "copy.json").write_bytes(results.read_bytes())
    for other in (tmp_path / "copy.json", sides / "baseline"):
        assert main(["-q", "eval", "compare", str(results), str(other), "--out", str(tmp_path / "r")]) == 2
        assert "both sides are the same videos" in capsys.readouterr().err
    assert main(["-q", "eval", "compare", str(results), str(tmp_path / "copy.json"), "--out", str(tmp_path / "r"),
                 "--metrics", "psnr"]) == 2
    assert "--metrics applies to videos being evaluated" in capsys.readouterr().err


def test_save_masks_into_the_folder_of_the_videos_is_refused(sides, tmp_path, capsys):
    import shutil

    videos = tmp_path / "videos"
    shutil.copytree(sides / "lora", videos)
    assert main(["-q", "eval", str(videos), "--metrics", "subject_drift", "--save-masks", str(videos)]) == 2
    assert "--save-masks names a folder of the videos being evaluated" in capsys.readouterr().err
    assert not list(videos.glob("*.drift.png"))


def test_the_same_videos_twice_differ_by_nothing_not_by_round_off():
    from circle_rotate.eval.compare import Pair

    values = [3.1, 7.4, 5.2, 9.9]
    pairs = [Pair(str(i), {"global_flow": v}, {"global_flow": v * (1 + (-1) ** i * 3e-13)}) for i, v in enumerate(values)]
    c = compare_column(pairs, "global_flow")
    assert c.mean_diff == 0.0 and c.p_value is None and c.cohens_d is None and c.relative_change == 0.0
    assert c.ci_low is None and c.ci_high is None  # differences with no spread: no interval of width 0
    assert c.verdict == "no clear change"  # global flow has no better side


def test_sides_measured_unlike_are_named():
    from circle_rotate.eval.compare import Pair, measured_unlike

    base = {"video": "a.mp4", "drift": 3.0, "psnr": 20.0, "subject_found_by": "user_box"}
    lora = {"video": "a.mp4", "drift": 2.0, "subject_found_by": "motion"}
    notes = measured_unlike([Pair("a", base, lora)])
    assert notes[0].startswith("a: the subject was given on one side and found on the other (baseline: user_box")
    assert notes[1].startswith("psnr: measured on the baseline side only") and len(notes) == 2
    alike = {"video": "a.mp4", "drift": 2.0, "psnr": 21.0, "subject_found_by": "saliency"}
    assert measured_unlike([Pair("a", {**alike, "subject_found_by": "motion"}, alike)]) == []
