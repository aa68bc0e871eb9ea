"""``circle-rotate bench real``: subject drift against hand-labelled boxes, on a labelled set
made here the way ``../shared/eval-real`` is laid out (boxes taken from the generator's exact
masks on five frames)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from circle_rotate.cli.main import main
from circle_rotate.eval.drift import drift_of
from circle_rotate.kernel.errors import UserError
from circle_rotate.selfcheck.bench_real import centroids_inside, measure, read_labels, score
from circle_rotate.selfcheck.synthetic.turntable import DriftPath, TurntableSpec, load_masks, write_turntable


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    videos = {}
    for i, (subject, amp) in enumerate((("box", 0.0), ("car", 12.0))):
        spec = TurntableSpec(name=f"clip{i}", width=256, height=160, frames=21, subject=subject, seed=40 + i,
                             total_angle_deg=45.0, drift=DriftPath("linear", amp, angle_deg=20.0))
        files = write_turntable(spec, root)
        masks = load_masks(files.masks)
        frames = np.linspace(0, len(masks) - 1, 5).astype(int)
        boxes = {}
        for k in frames:
            ys, xs = np.nonzero(masks[k])
            boxes[str(int(k))] = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        centres = np.array([((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes.values()])
        videos[f"clip{i}"] = {"boxes": boxes, "box_centre_drift": drift_of(centres)}
    (root / "boxes.json").write_text(json.dumps({"videos": videos}))
    return root, videos


def test_the_nearest_sampled_centroid_is_judged_against_each_box():
    frames = [0, 4, 8]
    cents = np.array([[10.0, 10.0], [50.0, 50.0], [90.0, 10.0]])
    boxes = {3: (40.0, 40.0, 60.0, 60.0),  # frame 4's centroid: inside
             8: (0.0, 0.0, 20.0, 20.0),  # frame 8's centroid (90, 10): outside
             0: (11.0, 11.0, 21.0, 21.0)}  # (10, 10) is 1 px outside, within the 10% margin
    assert centroids_inside(frames, cents, boxes) == 2


def test_a_labelled_set_is_measured_against_its_boxes(labelled):
    root, videos = labelled
    labels = read_labels(root)
    assert [v.name for v in labels] == ["clip0", "clip1"]
    readings = measure(labels, jobs=1)
    for r in readings:
        assert r.truth == pytest.approx(videos[r.name]["box_centre_drift"])
        assert r.measured is not None and np.isfinite(r.measured)
        assert r.inside == r.labelled == 5, r  # a plain subject over 45 degrees: its centroid stays in its box
    s = score(readings)
    assert s.count == 2 and s.labelled == 10 and s.inside == 10
    assert s.within == sum(r.error <= max(3.0, 0.5 * r.truth) for r in readings)
    for given in ("first", "all"):
        assert all(r.inside == 5 for r in measure(labels, jobs=1, given=given)), given


def test_bench_real_prints_the_acceptance_figures_and_a_plot(labelled, tmp_path, capsys):
    root, _ = labelled
    png = tmp_path / "real.png"
    assert main(["-q", "bench", "real", "--folder", str(root), "--jobs", "1", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    for line in ("within max(3 px, 50%)", "centroid in the labelled box   10 of 10", "reliable and > 10 px off"):
        assert line in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_set_that_is_not_labelled_is_refused_with_the_fix(labelled, tmp_path, capsys):
    assert main(["bench", "real", "--folder", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "boxes.json" in err[0] and "fix:" in err[0]
    root, videos = labelled
    (tmp_path / "boxes.json").write_text(json.dumps({"videos": {"missing": videos["clip0"]}}))
    with pytest.raises(UserError, match="missing"):
        read_labels(tmp_path)


def test_a_labelled_set_saved_by_comfyui_as_animated_webp_reads_as_its_mp4s(labelled, tmp_path):
    from PIL import Image

    from circle_rotate.eval.frames import load_clip

    root, videos = labelled
    for name in videos:  # lossless, as SaveAnimatedWEBP's default: the very frames the MP4 decodes to
        frames = [Image.fromarray(f) for f in load_clip(root / f"{name}.mp4").frames]
        frames[0].save(tmp_path / f"{name}.webp", save_all=True, append_images=frames[1:], duration=62,
                       lossless=True, quality=80, method=4)
    (tmp_path / "boxes.json").write_text((root / "boxes.json").read_text())
    labels = read_labels(tmp_path)
    assert [v.video.name for v in labels] == ["clip0.webp", "clip1.webp"]
    assert [r.measured for r in measure(labels, jobs=1)] == [r.measured for r in measure(read_labels(root), jobs=1)]
