"""The parallax evidence's neighbour search: the shortcut picks what the exhaustive search picks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from circle_rotate.eval import parallax as P
from circle_rotate.synthetic.turntable import TurntableSpec, write_turntable
from circle_rotate.video_io import read_video


def test_offsets_go_frame_by_frame_then_a_quarter_further_each():
    got = P.offsets(P.ParallaxParams(max_offset=40))
    assert got[:7] == [1, 2, 3, 4, 5, 6, 8]
    assert all(b > a for a, b in zip(got, got[1:]))
    assert got[-2] < 40 <= got[-1]  # tried until one reaches the furthest offset


@pytest.mark.parametrize("n", [1, 2, 7])
def test_first_reaching_finds_the_first_index_from_any_hint(n):
    for first in range(n + 1):  # n: it never holds
        for hint in range(-1, n + 1):
            asked = []

            def reaches(i):
                asked.append(i)
                return i >= first

            index, held = P.first_reaching(n, reaches, hint)
            assert (index, held) == ((first, True) if first < n else (n - 1, False))
            # a walk, not a scan: it asks only between the hint and the answer (and one step past)
            start = min(max(hint, 0), n - 1)
            assert len(asked) <= abs(start - min(first, n - 1)) + 2
            assert len(set(asked)) == len(asked)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    spec = TurntableSpec(name="search", width=416, height=240, frames=49, subject="figure", speed_profile="stop_go",
                         total_angle_deg=90, clutter=1, seed=5)
    files = write_turntable(spec, tmp_path_factory.mktemp("search"))
    return P.WorkingClip(read_video(files.video), 480)


def _exhaustive(clip, s, step, regions, params):
    """The neighbour search without shortcuts: full-size flow at every offset, nearest first."""
    w = clip.grey(s).shape[1]
    found = None
    for pos, o in enumerate(P.offsets(params)):
        j = s + step * o
        if not 0 <= j < len(clip):
            break
        found = pos
        if P._ground_motion(P.shifted_flow(clip.grey(s), clip.grey(j)), regions.ground) >= params.target_motion * w:
            break
    return found


def test_the_coarse_walk_picks_the_neighbour_the_exhaustive_search_picks(clip):
    # a stop-go orbit: the speed changes between sampled frames, so the hints are sometimes wrong;
    # once calibrated, the half-size reading decides alone, and at the target's edge it may
    # land one offset either side
    h, w = clip.grey(0).shape
    regions, params = P._Regions.of(h, w), P.ParallaxParams()
    hints, calibration = {-1: 0, 1: 0}, P._Calibration()
    ours, exhaustive = [], []
    for s in np.linspace(0, len(clip) - 1, 16).astype(int):
        for step in (-1, 1):
            got = P._neighbour(clip, int(s), step, regions, params, hints[step], calibration)
            if got is not None:
                hints[step] = got[3]
                assert got[0] == s + step * P.offsets(params)[got[3]]
            ours.append(got[3] if got else None)
            exhaustive.append(_exhaustive(clip, int(s), step, regions, params))
    assert [o is None for o in ours] == [e is None for e in exhaustive]
    pairs = [(o, e) for o, e in zip(ours, exhaustive) if o is not None]
    assert all(abs(o - e) <= 1 for o, e in pairs), pairs
    assert sum(o == e for o, e in pairs) >= 0.8 * len(pairs), pairs
    assert len(calibration.ratios) >= P.CALIBRATION_PAIRS


def _floor(h=240, w=320, seed=0):
    """A textured floor in colour: tiles of two hues with noise."""
    rng = np.random.default_rng(seed)
    tiles = rng.integers(0, 2, size=(h // 20 + 1, w // 20 + 1))
    hue = np.where(np.kron(tiles, np.ones((20, 20)))[:h, :w, None] > 0, [150.0, 140.0, 110.0], [90.0, 110.0, 130.0])
    return np.clip(hue * rng.uniform(0.8, 1.2, size=(h, w, 1)), 0, 255).astype(np.uint8)


def test_ground_look_tells_ground_static_shadow_moved_shadow_and_subject_apart():
    h, w = 240, 320
    H = np.float64([[1.0, 0.02, 6.0], [0.0, 1.01, 3.0], [0.0, 0.0002, 1.0]])  # a's pixel x shows b's H x
    b = _floor(h, w)
    b[150:200, 40:120] = (b[150:200, 40:120] * 0.55).astype(np.uint8)  # a shadow cast on the ground
    a = cv2.warpPerspective(b, H, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    a = np.clip(a * 1.15, 0, 255).astype(np.uint8)  # the exposure rose between the frames
    static = np.zeros((h, w), bool)
    static[160:190, 50:100] = True  # inside the shadow as a shows it (the warp moved it by a few pixels)
    a[60:110, 200:260] = (a[60:110, 200:260] * 0.5).astype(np.uint8)  # a shadow that came since b
    a[130:200, 200:250] = (60, 160, 60)  # something green standing there
    a[20:32, 260:272] = (a[20:32, 260:272] * 0.5).astype(np.uint8)  # a dot of a pattern, not a shadow
    look = P.ground_look(a, b, H)
    open_floor = np.zeros((h, w), bool)
    open_floor[20:50, 20:150] = True
    for name, region in (("open floor", open_floor), ("static shadow", static)):
        assert look.still[region].mean() > 0.9 and look.moved_shadow[region].mean() < 0.05, name
    came = np.zeros((h, w), bool)
    came[65:105, 205:255] = True
    assert look.moved_shadow[came].mean() > 0.9 and look.still[came].mean() < 0.05
    subject = np.zeros((h, w), bool)
    subject[135:195, 205:245] = True
    assert not look.still[subject].any() and not look.moved_shadow[subject].any()
    assert not look.moved_shadow[20:32, 260:272].any()  # too small for a shadow (SHADOW_AREA)


def test_either_neighbour_may_vouch_for_a_pixel():
    one = P.GroundLook(np.eye(3, dtype=bool), np.zeros((3, 3), bool))
    other = P.GroundLook(np.zeros((3, 3), bool), np.fliplr(np.eye(3, dtype=bool)))
    both = one | other
    assert (both.still == one.still).all() and (both.moved_shadow == other.moved_shadow).all()
