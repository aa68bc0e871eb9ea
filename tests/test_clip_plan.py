"""Clip placement bookkeeping: timestamp resampling, 4n+1 windows, still trimming, sizes."""

from __future__ import annotations

import pytest

from circle_rotate.kernel.buckets import bucket_sizes, nearest_bucket
from circle_rotate.prepare.clip_plan import (ClipPlanner, SizePolicy, TimestampResampler, check_frames, frame_geometry,
                                     resample_indices)
from circle_rotate.kernel.errors import UserError


@pytest.mark.parametrize("src_fps", [24.0, 25.0, 30000 / 1001, 30.0, 60.0, 10.0, 16.0])
def test_resampling_picks_the_nearest_frame_in_time(src_fps):
    times = [i / src_fps for i in range(int(3 * src_fps))]
    idx = resample_indices(times, 16.0)
    assert len(idx) == pytest.approx(3 * 16, abs=1)
    for k, i in enumerate(idx):
        best = min(range(len(times)), key=lambda j: abs(times[j] - k / 16))
        assert abs(times[i] - k / 16) == pytest.approx(abs(times[best] - k / 16), abs=1e-12)
    if src_fps < 16:
        assert len(set(idx)) < len(idx)  # a slow source repeats frames
    else:
        assert len(set(idx)) == len(idx)


def test_resampling_follows_variable_frame_timing():
    times = [0.0, 0.03, 0.09, 0.10, 0.2, 0.21, 0.33]  # a phone's uneven frame clock
    rs = TimestampResampler(16.0)
    online = [src for i, t in enumerate(times) for _, src in rs.push(i, t)] + [s for _, s in rs.finish(0.05)]
    assert online == resample_indices(times, 16.0, frame_duration=0.05)
    # targets 0, .0625, .125, .1875, .25, .3125 -> nearest 0, .09, .10, .2, .21, .33; .375 is past the end
    assert online == [0, 2, 3, 4, 5, 6]


def _plan(moving, *, frames, cuts=(), **kw):
    p = ClipPlanner(frames, **kw)
    windows = []
    for k, m in enumerate(moving):
        if k in cuts:
            p.cut()
            m = None
        w = p.add(k, m)
        if w:
            windows.append((w.start, w.stop))
        assert p.keep_from <= k + 1
    return windows, p


def test_windows_tile_back_to_back_and_drop_the_remainder():
    windows, p = _plan([None] + [True] * 29, frames=9)
    assert windows == [(0, 9), (9, 18), (18, 27)]
    assert p.used_samples == 27 and p.stats.samples == 30


def test_windows_never_cross_a_cut():
    windows, p = _plan([None] + [True] * 29, frames=9, cuts=(12,))
    assert windows == [(0, 9), (12, 21), (21, 30)]  # samples 9-11 are too few for a clip
    assert all(not (s < 12 <= e - 1) for s, e in windows)
    assert p.stats.cuts == 1


def test_still_head_tail_and_pauses_are_left_out():
    moving = [None] + [False] * 5 + [True] * 12 + [False] * 10 + [True] * 10 + [False] * 6
    windows, p = _plan(moving, frames=9, pause=4)
    # motion starts with pair (5, 6): the first clip starts at sample 5; the pause at 18..27 ends the segment
    assert windows == [(5, 14), (27, 36)]
    assert p.stats.pauses >= 1
    kept, _ = _plan(moving, frames=9, trim_still=False)
    assert kept[0] == (0, 9) and len(kept) == len(moving) // 9


def test_short_still_moments_stay_inside_clips_and_max_clips_stops():
    moving = [None] + ([True] * 5 + [False] * 2) * 10
    windows, p = _plan(moving, frames=13, pause=4, max_clips=2)
    assert windows == [(0, 13), (13, 26)]
    assert p.done


@pytest.mark.parametrize("src,policy,expected", [
    ((1920, 1080), SizePolicy("bucket", 832, 480), (832, 480)),  # musubi's nearest bucket (1.73 vs 1.78)
    ((1080, 1920), SizePolicy("bucket", 832, 480), (480, 832)),  # either orientation, same area
    ((2000, 1000), SizePolicy("bucket", 832, 480), (880, 448)),  # 1.96, the nearest to 2.0
    ((640, 360), SizePolicy("bucket", 832, 480), (640, 352)),  # too small for its bucket: never upscaled
    ((640, 360), SizePolicy("bucket", 832, 480, upscale=True), (832, 480)),
    ((1920, 1080), SizePolicy("fit", 832, 480), (832, 464)),
    ((1080, 1920), SizePolicy("fit", 832, 480), (256, 480)),
    ((1920, 1080), SizePolicy("exact", 832, 480), (832, 480)),
    ((1283, 721), SizePolicy("keep"), (1280, 720)),
])
def test_output_sizes_are_multiples_of_16_at_the_source_aspect(src, policy, expected):
    g = frame_geometry(*src, policy)
    assert g.size == expected
    assert g.size[0] % 16 == 0 and g.size[1] % 16 == 0
    x, y, w, h = g.crop
    assert 0 <= x and 0 <= y and x + w <= g.scaled[0] and y + h <= g.scaled[1]
    assert abs(g.scaled[0] / g.scaled[1] - src[0] / src[1]) < 0.01  # scaled without distortion, then cropped


def test_bucket_sizes_are_musubis(musubi):
    """prepare's bucket mode picks exactly the bucket musubi's video caching scales to."""
    import random

    from musubi_tuner.dataset.bucket import BucketSelector

    rng = random.Random(0)
    for res in [(832, 480), (480, 832), (1280, 720), (960, 544), (64, 64), (256, 144)]:
        selector = BucketSelector(res, architecture="wan")  # what VideoDataset's caching builds
        assert bucket_sizes(*res) == tuple(map(tuple, selector.bucket_resolutions))
        for _ in range(100):
            size = (rng.randint(16, 4000), rng.randint(16, 4000))
            assert nearest_bucket(size, res) == tuple(selector.get_bucket_resolution(size))
            g = frame_geometry(*size, SizePolicy("bucket", *res, upscale=True))
            assert tuple(selector.get_bucket_resolution(g.size)) == g.size  # caching leaves the clip as it is


def test_bad_sizes_and_frame_counts_are_user_errors():
    with pytest.raises(UserError, match="--upscale"):
        frame_geometry(640, 360, SizePolicy("exact", 832, 480))
    with pytest.raises(UserError, match="multiples of 16"):
        SizePolicy("bucket", 830, 480).validate()
    with pytest.raises(UserError, match="77 or 81"):
        check_frames(80)
    check_frames(81)
    check_frames(9)
