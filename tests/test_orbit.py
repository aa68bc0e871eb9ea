"""The orbit estimator on synthetic turntable footage whose camera path is known exactly."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from circle_rotate.kernel.video_io import read_video, write_video
from circle_rotate.media.orbit import MOTIONS, OrbitMeasurement, measure_orbit
from circle_rotate.media.orbit_qc import QcLimits, qc_verdict
from circle_rotate.selfcheck.synthetic.turntable import DriftPath, TurntableSpec, profile, render_frames, write_turntable


def _frames(spec: TurntableSpec) -> np.ndarray:
    return np.stack([f.image for f in render_frames(spec)])


# Orbits that vary direction, angle, speed profile, subject, clutter, lighting, background,
# camera height, field of view and size (speeds up to 4.5 deg/frame: a full turn in 81 frames).
ORBITS = [
    dict(direction="right", total_angle_deg=48, subject="box"),
    dict(direction="left", total_angle_deg=48, subject="box"),
    dict(direction="right", total_angle_deg=96, speed_profile="ease", subject="car", clutter=3),
    dict(direction="left", total_angle_deg=90, speed_profile="accelerate", subject="figure", lighting="exposure_ramp"),
    dict(direction="right", total_angle_deg=72, speed_profile="decelerate", subject="lshape", lighting="moving_light"),
    dict(direction="left", total_angle_deg=60, speed_profile="stop_go", subject="cylinder", lighting="flicker"),
    dict(direction="right", total_angle_deg=30, subject="figure", background="studio", clutter=5),
    dict(direction="left", total_angle_deg=20, subject="car", background="studio", camera_height=0.9),
    dict(direction="right", total_angle_deg=80, subject="box", camera_height=2.8, look_height=0.5, hfov_deg=40),
    dict(direction="left", total_angle_deg=100, subject="lshape", camera_height=1.0, look_height=1.0, hfov_deg=35,
         radius=7.0),
    dict(direction="right", total_angle_deg=60, subject="cylinder", noise_sigma=3.0, shadow=False, width=112, height=192),
    dict(direction="left", total_angle_deg=40, subject="figure", width=256, height=144, seed=7),
    dict(direction="right", total_angle_deg=24, subject="car", width=832, height=480, frames=13, clutter=2),
    dict(direction="left", total_angle_deg=36, subject="box", width=832, height=480, frames=13, background="studio"),
]
PANS = [
    dict(camera="pan", direction="right", total_angle_deg=20, subject="box"),
    dict(camera="pan", direction="left", total_angle_deg=30, subject="car", clutter=3, background="studio"),
    dict(camera="pan", direction="right", total_angle_deg=12, speed_profile="ease", subject="figure", hfov_deg=40),
    dict(camera="pan", direction="left", total_angle_deg=40, subject="lshape", width=256, height=144),
]
STATICS = [
    dict(camera="static", subject="box"),
    dict(camera="static", subject="car", lighting="flicker", clutter=3),
    dict(camera="static", subject="figure", lighting="moving_light", noise_sigma=3.0, width=256, height=144),
    dict(camera="static", subject="cylinder", drift=DriftPath("sine", 10.0)),  # a subject that moves, a camera that does not
]


def _spec(i: int, kw: dict) -> TurntableSpec:
    base = dict(name=f"c{i}", width=192, height=112, frames=25, fps=16.0, seed=i, start_azimuth_deg=37.0 * i)
    return TurntableSpec(**{**base, **kw})


def _id(kw: dict) -> str:
    return "-".join(f"{v}" for k, v in kw.items() if k in ("camera", "direction", "subject", "speed_profile", "lighting"))


@pytest.mark.parametrize("kw", ORBITS, ids=[_id(k) for k in ORBITS])
def test_orbit_direction_is_right_for_every_orbit(kw):
    spec = _spec(ORBITS.index(kw), kw)
    m = measure_orbit(_frames(spec), fps=spec.fps, hfov_deg=spec.hfov_deg)
    assert m.motion == "orbit", m.reasons
    assert m.direction == spec.direction
    assert m.seen_from_above == spec.seen_from_above
    assert m.confidence > 0.5
    assert m.angular_speed_deg_s > 0 and m.total_angle_deg > 0
    assert m.reversal < QcLimits().max_reversal / 2  # an orbit that never turns back is never said to


@pytest.mark.parametrize("kw", PANS + STATICS, ids=[_id(k) for k in PANS + STATICS])
def test_pans_and_statics_are_never_orbits(kw):
    spec = _spec(100 + (PANS + STATICS).index(kw), kw)
    m = measure_orbit(_frames(spec), fps=spec.fps, hfov_deg=spec.hfov_deg)
    assert m.motion == spec.camera, m.reasons
    assert m.seen_from_above == "none"
    if spec.camera == "pan":
        assert m.direction == spec.direction  # the way the camera turns
    else:
        assert m.direction == "none" and m.angular_speed_deg_s == 0.0


def test_speed_matches_the_camera_path():
    """Constant orbit, known field of view: the estimate is the far field's flow, so it reads
    low by about subject distance / backdrop distance (5 / 27 here) and never high."""
    spec = _spec(0, dict(direction="left", total_angle_deg=64, subject="figure", frames=33))
    m = measure_orbit(_frames(spec), fps=spec.fps, hfov_deg=spec.hfov_deg)
    true_speed = spec.total_angle_deg / ((spec.frames - 1) / spec.fps)  # 32 deg/s
    assert 0.6 * true_speed < m.angular_speed_deg_s < 1.05 * true_speed
    assert m.total_angle_deg == pytest.approx(m.angular_speed_deg_s * (spec.frames - 1) / spec.fps)
    assert m.speed_cv < 0.35


@pytest.mark.parametrize("back, step", [(6, 1), (4, 3), (8, 1)], ids=["retraced", "back-faster", "back-slower"])
def test_a_camera_that_turns_back_fails_strict_qc_with_the_share_it_goes_back(back, step):
    """Forward over frames 0, 2, ..., 40 of a render, then back ``back`` frames at ``step``
    render frames each (forward moves 2: ``step`` 1 comes back at half the speed, 3 at 1.5x)."""
    render = _frames(_spec(0, dict(frames=41, total_angle_deg=60, subject="car", seed=61)))
    forward = render[0:41:2]
    clip = np.concatenate([forward, render[40 - step::-step][:back]])
    m = measure_orbit(clip, fps=16)
    share = back * step / 40  # of the way forward, in render frames
    assert m.motion == "orbit" and m.reversal == pytest.approx(share, rel=0.35)
    verdict, reasons = qc_verdict(m, mode="strict")
    assert verdict == "reject" and any("the camera turns back" in r for r in reasons)
    assert qc_verdict(m, mode="lenient")[0] == "accept"  # lenient keeps it, warned

    whole = measure_orbit(render[0:41], fps=16)  # the same footage, never turning back
    assert whole.reversal == 0.0 and qc_verdict(whole, mode="strict")[0] == "accept"


def test_steadiness_separates_constant_from_stop_and_go():
    steady = _spec(1, dict(total_angle_deg=80, frames=33, subject="box"))
    jerky = _spec(1, dict(total_angle_deg=80, frames=33, subject="box", speed_profile="stop_go"))
    a = measure_orbit(_frames(steady), fps=16)
    b = measure_orbit(_frames(jerky), fps=16)
    assert a.speed_cv < 0.35 < b.speed_cv
    p = profile("stop_go", 33)
    assert np.ptp(np.diff(p)) > 0  # the generator really does change speed


def test_hand_shake_is_shaky_and_a_cut_is_a_cut():
    shaky = _spec(2, dict(total_angle_deg=40, subject="car", shake_px=5.0))
    cut = _spec(3, dict(total_angle_deg=60, subject="figure", cut_at=12))
    m_shaky = measure_orbit(_frames(shaky), fps=16)
    m_cut = measure_orbit(_frames(cut), fps=16)
    assert m_shaky.motion == "shaky" and m_shaky.shake > 0.0016
    assert m_cut.motion == "cut" and "11 and 12" in m_cut.reasons[0]
    assert qc_verdict(m_cut, mode="lenient")[0] == "reject"


def test_full_orbit_reports_loop_closure_and_part_orbit_does_not():
    full = _spec(4, dict(total_angle_deg=360, frames=81, width=160, height=96, subject="lshape"))
    m = measure_orbit(_frames(full), fps=16, hfov_deg=full.hfov_deg)
    assert m.motion == "orbit" and m.total_angle_deg > 250
    assert m.loop_closure is not None and m.loop_closure > 0.5
    part = measure_orbit(_frames(_spec(4, dict(total_angle_deg=45, width=160, height=96))), fps=16)
    assert part.loop_closure is None


def test_subject_at_centre_gives_small_centre_offset():
    m = measure_orbit(_frames(_spec(5, dict(total_angle_deg=50, subject="box"))), fps=16)
    assert 0 <= m.centre_offset < 0.35


def test_precomputed_full_size_farneback_flows_give_the_same_answer():
    spec = _spec(6, dict(direction="left", total_angle_deg=50, subject="car", width=320, height=192, frames=17))
    frames = _frames(spec)
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    flows = [cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0) for a, b in zip(grey[:-1], grey[1:])]
    own = measure_orbit(frames, fps=16)
    shared = measure_orbit(np.stack(grey), fps=16, flows=flows)
    assert own.motion == shared.motion == "orbit"
    assert own.direction == shared.direction == "left"
    assert shared.angular_speed_deg_s == pytest.approx(own.angular_speed_deg_s, rel=0.35)


@pytest.mark.parametrize("times", [2, 3])
def test_a_clip_whose_frames_repeat_reads_as_the_clip_it_was_converted_from(tmp_path, times):
    """16 fps shown at 32 or 48 fps by repeating frames (through x264, as a converter writes it):
    the same orbit and speed, and a note; not a camera standing still half the time."""
    spec = _spec(9, dict(direction="right", total_angle_deg=40, subject="car", width=256, height=144, frames=21))
    frames = _frames(spec)
    write_video(tmp_path / "once.mp4", frames, fps=spec.fps, crf=16)
    write_video(tmp_path / "repeated.mp4", [f for f in frames for _ in range(times)], fps=spec.fps * times, crf=16)
    once = measure_orbit(read_video(tmp_path / "once.mp4"), fps=spec.fps)
    repeated = measure_orbit(read_video(tmp_path / "repeated.mp4"), fps=spec.fps * times)
    assert (repeated.motion, repeated.direction) == (once.motion, once.direction) == ("orbit", "right")
    assert repeated.angular_speed_deg_s == pytest.approx(once.angular_speed_deg_s, rel=0.05)
    assert f"{(times - 1) * 21} of {times * 21} frames repeat the one before" in " ".join(repeated.reasons)
    assert not any("repeat" in r for r in once.reasons)


def test_encoded_video_round_trip(tmp_path):
    """Through x264 and back: what prepare and evaluation actually see."""
    spec = _spec(8, dict(direction="right", total_angle_deg=40, subject="figure", width=256, height=144))
    files = write_turntable(spec, tmp_path)
    m = measure_orbit(read_video(files.video), fps=spec.fps)
    assert (m.motion, m.direction) == ("orbit", "right")


def test_measurement_serialises_and_bad_input_is_refused():
    m = measure_orbit(_frames(_spec(9, dict(camera="static", frames=5))), fps=16)
    d = json.loads(json.dumps(m.to_dict()))
    assert d["motion"] in MOTIONS and d["centre_offset"] is None and isinstance(d["reasons"], list)
    assert set(d) >= {f for f in OrbitMeasurement.__dataclass_fields__}
    with pytest.raises(ValueError):
        measure_orbit(np.zeros((1, 32, 32, 3), np.uint8), fps=16)
    with pytest.raises(ValueError):
        measure_orbit(np.zeros((3, 32, 32, 3), np.uint8), fps=16, flows=[np.zeros((32, 32, 2))])
    assert not math.isnan(m.shake)


@pytest.mark.parametrize("size", [(160, 26), (320, 31), (80, 24), (6, 160), (10, 100)])
def test_flow_on_frames_under_32_pixels_across_runs_and_reads_the_shift(size):
    """OpenCV's DIS segfaults on frames under 32 rows (a 6:1 video's analysis frames were 160x26) and
    refuses frames under 12 columns: run in a child process, so that a crash fails this test instead of
    ending the run. The content moves 2 px along the frame's long side."""
    import subprocess
    import sys

    w, h = size
    axis = 1 if w >= h else 0
    code = f"""
import numpy as np, cv2
from circle_rotate.media.orbit_flow import FlowEstimator
rng = np.random.default_rng(0)
big = cv2.GaussianBlur(rng.integers(0, 255, ({h} + 8, {w} + 8), dtype=np.uint8), (0, 0), 1.5)
if {axis} == 1:
    a, b = big[:{h}, 4:4 + {w}], big[:{h}, 2:2 + {w}]
else:
    a, b = big[4:4 + {h}, :{w}], big[2:2 + {h}, :{w}]
a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
est = FlowEstimator()
for _ in range(2):
    flow = est(a, b)
assert flow.shape == ({h}, {w}, 2), flow.shape
inner = flow[{h} // 4:{h} - {h} // 4, {w} // 4:{w} - {w} // 4, {1 - axis}]  # (dx, dy): dx for a move along x
print(float(np.median(inner)))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.strip()) == pytest.approx(2.0, abs=0.5)  # b is a moved 2 px along the long side


def test_eval_reads_an_hd_orbit_as_the_estimator_does_and_as_rendered(tmp_path):
    """At 1280x720 the full-size Farneback flows eval shares read this 40-degree orbit as 47 degrees
    (and a 1080p one as a pan the other way); the orbit metrics use the estimator's own flow."""
    from circle_rotate.cli.main import main

    spec = TurntableSpec(name="hd", width=1280, height=720, frames=41, fps=16.0, total_angle_deg=40, subject="car", seed=5)
    files = write_turntable(spec, tmp_path)
    assert main(["-q", "eval", str(files.video), "-o", str(tmp_path / "r.json"), "--jobs", "1"]) == 0
    row = json.loads((tmp_path / "r.json").read_text())["videos"][0]
    assert (row["orbit_motion"], row["orbit_direction"]) == ("orbit", "right")
    assert row["total_angle_deg"] == pytest.approx(40, rel=0.1)
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in read_video(files.video)])
    assert row["total_angle_deg"] == pytest.approx(measure_orbit(grey, fps=16.0).total_angle_deg, abs=0.01)


def test_steadiness_is_not_stated_where_too_few_frames_define_it():
    """Two frames make one speed (no spread), three make no second difference: None in results,
    not a perfectly steady 0.0 that would enter a comparison's means."""
    frames = _frames(_spec(3, dict(frames=4, total_angle_deg=12, subject="box")))
    two, three, four = (measure_orbit(frames[:n], fps=16).to_dict() for n in (2, 3, 4))
    assert two["speed_cv"] is None and two["jerk"] is None
    assert three["speed_cv"] is not None and three["jerk"] is None
    assert four["speed_cv"] is not None and four["jerk"] is not None
