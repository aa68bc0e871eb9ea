"""``bench noise``: each video re-encoded with H.264 at several CRFs and evaluated again, so a
user knows how much of a drift difference the encoder alone makes."""

from __future__ import annotations

import numpy as np
import pytest

from circle_rotate.cli.main import main
from circle_rotate.eval.frames import load_clip
from circle_rotate.kernel.video_io import write_video
from circle_rotate.selfcheck.bench_noise import measure, reencode, report, score
from circle_rotate.selfcheck.synthetic.turntable import DriftPath, TurntableSpec, write_turntable

CRFS = (18, 40)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    folder, work = tmp_path_factory.mktemp("noise"), tmp_path_factory.mktemp("reencoded")
    specs = (TurntableSpec(name="still", width=256, height=160, frames=17, camera="static", subject="stack", seed=3),
             TurntableSpec(name="orbit", width=256, height=160, frames=17, subject="box", seed=4, total_angle_deg=45.0,
                           drift=DriftPath("linear", 10.0, angle_deg=0.0)))
    videos = [write_turntable(s, folder).video for s in specs]
    return videos, work, measure(videos, CRFS, jobs=1, workdir=work)


def test_every_video_is_read_on_the_original_and_each_reencode(measured):
    videos, work, rows = measured
    assert [r.name for r in rows] == ["still", "orbit"]
    for v in videos:
        for crf in CRFS:  # real H.264 files, every frame kept
            assert load_clip(work / f"{v.name}.crf{crf}.mp4").count == load_clip(v).count
    still, orbit = rows
    # a static camera over a still subject reads 0 as rendered (truth 0), and re-encoded next to it:
    # CRF 40's blocks shift a still picture's mask by hundredths of a pixel (measured: 0.02 px),
    # far under the 1 px a static shot may read
    assert still.original.value <= 1e-6 and all(still.reencoded[c].value <= 0.1 for c in CRFS)
    assert all(orbit.reencoded[c].value is not None and np.isfinite(orbit.reencoded[c].value) for c in CRFS)
    assert orbit.change(18) <= 3.0  # visually lossless moves the reading by less than the accuracy bound


def test_the_report_gives_each_crf_its_median_and_largest_change(measured):
    _, _, rows = measured
    scores = score(rows, CRFS)
    assert [s.crf for s in scores] == list(CRFS)
    for s in scores:
        changes = [r.change(s.crf) for r in rows]
        assert s.median_change == pytest.approx(np.median(changes)) and s.max_change == pytest.approx(max(changes))
        assert s.failed == 0
    text = report(rows, scores, "title")
    assert "crf 18" in text and "crf 40" in text and "largest" in text


def test_an_odd_sized_gif_is_cropped_to_even_for_h264(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (61, 75, 3), np.uint8) for _ in range(5)]
    write_video(tmp_path / "odd.gif", frames, fps=8)
    out = reencode(tmp_path / "odd.gif", tmp_path, 23)
    assert load_clip(out).size == (74, 60) and load_clip(out).count == 5


def test_videos_sharing_a_stem_get_copies_of_their_own(tmp_path):
    rng = np.random.default_rng(1)
    for suffix, n in ((".gif", 5), (".mp4", 7)):
        write_video(tmp_path / f"a{suffix}", [rng.integers(0, 255, (48, 64, 3), np.uint8) for _ in range(n)], fps=8)
    work = tmp_path / "work"
    work.mkdir()
    rows = measure([tmp_path / "a.gif", tmp_path / "a.mp4"], (18,), jobs=1, workdir=work)
    assert len(rows) == 2
    assert load_clip(work / "a.gif.crf18.mp4").count == 5 and load_clip(work / "a.mp4.crf18.mp4").count == 7


def test_a_missing_folder_is_one_line_and_exit_2(capsys):
    assert main(["bench", "noise", "--folder", "/nonexistent/videos"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "/nonexistent/videos" in err[-1] and "fix:" in err[-1] and "Traceback" not in "\n".join(err)


def test_a_crf_outside_h264s_range_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "noise", "--folder", str(tmp_path), "--crf", "60"])
    assert exit_.value.code == 2 and "--crf 60" in capsys.readouterr().err
