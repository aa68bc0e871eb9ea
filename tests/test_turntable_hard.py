"""The harder development generator: multi-part subjects, photo textures, ground-coloured
subjects, static and pan negatives, a light that moves the shadows, and the seeded sets."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from circle_rotate.selfcheck.bench_accuracy import Reading, score
from circle_rotate.selfcheck.synthetic import geometry as geo
from circle_rotate.selfcheck.synthetic import textures
from circle_rotate.selfcheck.synthetic.orbit_sets import (DEVELOPMENT_SEEDS, HELD_OUT_SEEDS, development_set, held_out_set,
                                                varied_spec, write_set)
from circle_rotate.selfcheck.synthetic.turntable import (MULTIPART_SUBJECTS, TurntableSpec, load_masks, load_truth, mask_stats,
                                               render_frames, write_turntable)

SMALL = dict(width=320, height=192, noise_sigma=0.0)


@pytest.mark.parametrize("subject", MULTIPART_SUBJECTS)
def test_multipart_mask_is_every_part_of_the_subject(tmp_path, subject):
    """A full turn: the truth mask is exactly the union of the parts, and every part shows in it."""
    spec = TurntableSpec(name=subject, frames=9, total_angle_deg=360, subject=subject, clutter=2, **SMALL)
    files = write_turntable(spec, tmp_path)
    truth, masks = load_truth(files.truth), load_masks(files.masks)
    parts = np.array(truth["part_area"])
    assert parts.shape[1] >= 3
    assert (parts.sum(axis=1) == np.array(truth["mask_area"])).all()
    assert (parts.sum(axis=1) == masks.reshape(9, -1).sum(axis=1)).all()
    # Each part is seen on most frames (a part can hide behind another for a moment).
    assert ((parts > 0).mean(axis=0) >= 0.75).all(), parts


def test_multipart_parts_on_top_are_in_the_mask():
    """The ball on top of the stack is subject: cut off at the box's top edge, the mask loses area
    above it, and the centroid sits higher than the box's own centre would."""
    spec = TurntableSpec(name="s", frames=1, camera="static", subject="stack", shadow=False, **SMALL)
    frame = next(render_frames(spec))
    box_px, cyl_px, ball_px = frame.part_areas
    ys, _ = np.nonzero(frame.subject_mask)
    cam = geo.look_at([0, spec.camera_height, spec.radius], [0, spec.look_height, 0], width=320, height=192,
                      hfov_deg=spec.hfov_deg)
    box_top_row = cam.project(np.array([[0.0, 0.9, 0.0]]))[0, 1]  # the box is 0.9 high at subject_scale 1
    above = int((ys < box_top_row - 2).sum())
    assert above >= 0.8 * (cyl_px + ball_px) and cyl_px > 50 and ball_px > 50


def test_ball_silhouette_is_round():
    """A faceted ball seen head-on covers about pi r^2 of the image (facets: a few percent less)."""
    cam = geo.look_at([0, 0, 6.0], [0, 0, 0], width=400, height=400, hfov_deg=40)
    fb = geo.FrameBuffer(np.zeros((400, 400, 3), np.uint8), np.zeros((400, 400), np.int32))
    for poly in geo.sphere_polygons([0, 0, 0], 1.0, np.full((256, 448, 3), 200, np.uint8), 7):
        geo.draw_polygon(fb, cam, poly)
    r_px = cam.fx * 1.0 / np.sqrt(6.0 ** 2 - 1.0)  # the tangent cone's radius on the image
    area = (fb.ids == 7).sum()
    assert 0.93 * np.pi * r_px ** 2 < area < 1.01 * np.pi * r_px ** 2
    (cx, cy), _, _ = mask_stats(fb.ids == 7)
    assert abs(cx - 200) < 0.5 and abs(cy - 200) < 0.5


def test_static_camera_over_still_subject_has_zero_drift_under_a_moving_light(tmp_path):
    spec = TurntableSpec(name="still", frames=17, camera="static", subject="holder", lighting="orbiting_light", clutter=3,
                         **SMALL)
    files = write_turntable(spec, tmp_path)
    truth, masks = load_truth(files.truth), load_masks(files.masks)
    assert truth["drift"] < 1e-9 and truth["direction"] == "none"  # float rounding of a constant centroid
    assert all(np.array_equal(m, masks[0]) for m in masks)
    # ...while the shadow has swept across the floor: many floor pixels changed brightness a lot.
    frames = [f.image.astype(int) for f in render_frames(spec)]
    changed = (np.abs(frames[-1] - frames[0]).sum(axis=2) > 60) & ~masks[0]
    assert changed.sum() > 0.3 * masks[0].sum()


def test_pan_sweeps_the_subject_across_the_frame(tmp_path):
    spec = TurntableSpec(name="pan", frames=17, camera="pan", total_angle_deg=25, subject="tower", **SMALL)
    truth = load_truth(write_turntable(spec, tmp_path).truth)
    xs = [c[0] for c in truth["centroid"]]
    assert xs[-1] < xs[0] - 60 and truth["drift"] > 15  # a pan right moves the subject left
    assert truth["camera"] == "pan" and truth["seen_from_above"] == "none"


def test_ground_look_wears_the_floor_colours():
    def contrast(look: str) -> float:
        spec = TurntableSpec(name="g", frames=1, camera="static", subject="box", subject_look=look, shadow=False, seed=3,
                             **SMALL)
        f = next(render_frames(spec))
        m = f.subject_mask
        ys, xs = np.nonzero(m)
        below = np.zeros_like(m)
        below[ys.max() + 2:ys.max() + 30, max(xs.min() - 40, 0):xs.max() + 40] = True
        return float(np.abs(f.image[m].mean(axis=0) - f.image[below & ~m].mean(axis=0)).max())

    ground, own = contrast("ground"), contrast("own")
    assert ground < 30 and own > 2 * ground


@pytest.mark.skipif(textures.photo_unavailable() is not None, reason=str(textures.photo_unavailable()))
def test_photo_textures_come_from_photographs(tmp_path):
    spec = TurntableSpec(name="photo", frames=2, subject="stack", textures="photo", width=1280, height=720)
    files = write_turntable(spec, tmp_path)
    truth = load_truth(files.truth)
    assert truth["texture_source"].startswith("photo") and (truth["width"], truth["height"]) == (1280, 720)
    photo = next(render_frames(spec)).image
    plain = next(render_frames(dataclasses.replace(spec, textures="procedural"))).image
    m = load_masks(files.masks)[0]
    assert np.abs(photo[m].astype(int) - plain[m]).mean() > 20
    # Photographs carry fine detail across the whole surface: strong Laplacian response on the subject.
    assert np.abs(cv2.Laplacian(cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY), cv2.CV_32F))[m].mean() > 3


def test_photo_textures_fall_back_when_scikit_image_is_absent(tmp_path, monkeypatch):
    monkeypatch.setattr(textures, "_photo_library", lambda: ((), "scikit-image is not installed"))
    spec = TurntableSpec(name="fallback", frames=2, subject="tower", textures="photo", **SMALL)
    truth = load_truth(write_turntable(spec, tmp_path).truth)
    assert truth["texture_source"] == "procedural (photo asked: scikit-image is not installed)"
    assert truth["mask_area"][0] > 0


def test_seed_sets_are_disjoint_varied_and_deterministic():
    assert not set(DEVELOPMENT_SEEDS) & set(HELD_OUT_SEEDS)
    specs = development_set() + held_out_set()
    for s in specs:
        s.validate()
    assert varied_spec(1301) == varied_spec(1301) and varied_spec(1301) != varied_spec(1302)
    cams = [s.camera for s in specs]
    assert cams.count("static") >= 4 and cams.count("pan") >= 4
    assert all(s.drift.kind == "none" and s.shake_px == 0 for s in specs if s.camera == "static")
    assert sum(s.subject in MULTIPART_SUBJECTS for s in specs) >= len(specs) // 3
    assert {s.textures for s in specs} == {"photo", "procedural"} and any(s.subject_look == "ground" for s in specs)
    assert any((s.width, s.height) == (1280, 720) for s in specs)
    assert {s.frames for s in specs} >= {17, 33} and max(s.frames for s in specs) <= 49
    assert any(s.lighting == "orbiting_light" for s in specs) and any(s.total_angle_deg == 360 for s in specs)


def test_write_set_renders_once_and_again_when_the_spec_changes(tmp_path):
    specs = [dataclasses.replace(varied_spec(s), width=160, height=96, frames=5) for s in (1300, 1301)]
    first = write_set(specs, tmp_path)
    stamp = [f.video.stat().st_mtime_ns for f in first]
    again = write_set(specs, tmp_path)
    assert [f.video.stat().st_mtime_ns for f in again] == stamp
    changed = write_set([dataclasses.replace(specs[0], frames=7)], tmp_path)
    assert load_truth(changed[0].truth)["frames"] == 7


def test_accuracy_score_on_constructed_readings():
    readings = [Reading("a", "orbit", "box", 10.0, 11.0), Reading("b", "orbit", "box", 40.0, 47.0),
                Reading("c", "static", "stack", 0.0, 2.5), Reading("d", "pan", "box", 30.0, 8.0, unreliable=True),
                Reading("e", "orbit", "tower", 5.0, None)]
    s = score(readings)
    # errors 1, 7 (> 6 = 15% of 40), 2.5, 22, inf (failed)
    assert s.count == 5 and s.median_error == 7.0
    assert s.within == 2 and s.unreliable == 1 and s.within_or_marked == 3
    assert s.static_max == 2.5
    assert s.spearman == pytest.approx(0.8)  # truth ranks 2,4,1,3 against read 3,4,1,2: 1 - 6*2/(4*15)
