"""Where clips go in a source: timestamp resampling, 4n+1 windows, still trimming, output size.

Everything here is pure bookkeeping on frame indices, timestamps and flags, so
``prepare`` can run it online while it decodes (one pass, bounded memory) and the tests
can check it without any video.

Resampling picks, for each target time ``k / fps`` (seconds since the first frame), the
source frame whose timestamp is nearest; a slower source repeats frames, a faster one
skips them. This is what a player does, and unlike musubi-tuner's own ``source_fps``
frame dropping it also works for variable-frame-rate phone videos.

Windows of ``frames`` samples tile each *segment* of the source back to back. Segments
end at scene cuts and, with still trimming on, at pauses (a still run of at least
``pause`` samples): a clip never crosses either, a still head or tail is never part of a
clip, and the remainder of a segment shorter than a clip is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from circle_rotate.kernel.buckets import nearest_bucket
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.wan_arch import is_4n_plus_1

#: Output sides are multiples of this (Wan's VAE stride 8 times its patch size 2).
SIZE_STEP = 16
SIZE_MODES = ("bucket", "fit", "exact", "keep")


# --------------------------------------------------------------------------- resampling


class TimestampResampler:
    """Online nearest-timestamp resampling of a frame stream to ``fps``.

    Feed source frames in decode order with :meth:`push`; it returns the samples that
    became decidable, as ``(sample_index, source_index)`` pairs where ``source_index``
    is the frame just pushed or the one before it. Call :meth:`finish` at the end.
    """

    def __init__(self, fps: float):
        if fps <= 0:
            raise ValueError("fps must be positive")
        self.fps = float(fps)
        self.next_sample = 0
        self._prev: Optional[Tuple[int, float]] = None

    def _target(self) -> float:
        return self.next_sample / self.fps

    def push(self, index: int, time: float) -> List[Tuple[int, int]]:
        out = []
        while self._target() <= time:
            t = self._target()
            if self._prev is not None and abs(self._prev[1] - t) <= abs(time - t):
                out.append((self.next_sample, self._prev[0]))
            else:
                out.append((self.next_sample, index))
            self.next_sample += 1
        self._prev = (index, time)
        return out

    def finish(self, frame_duration: float) -> List[Tuple[int, int]]:
        """Targets up to half a frame past the last frame still take the last frame."""
        out = []
        if self._prev is None:
            return out
        index, time = self._prev
        while self._target() <= time + 0.5 * frame_duration + 1e-9:
            out.append((self.next_sample, index))
            self.next_sample += 1
        return out


def resample_indices(times: List[float], fps: float, *, frame_duration: Optional[float] = None) -> List[int]:
    """Offline form of :class:`TimestampResampler`: the source index of every sample."""
    rs = TimestampResampler(fps)
    out: List[int] = []
    for i, t in enumerate(times):
        out += [src for _, src in rs.push(i, t)]
    if times:
        dur = frame_duration if frame_duration is not None else (
            (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else 1.0 / fps)
        out += [src for _, src in rs.finish(dur)]
    return out


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Window:
    """One clip: samples ``start`` .. ``stop - 1`` of the resampled stream."""

    start: int
    stop: int
    segment: int

    @property
    def frames(self) -> int:
        return self.stop - self.start


@dataclass
class PlanStats:
    """What the planner saw, for the manifest."""

    samples: int = 0
    cuts: int = 0
    pauses: int = 0


@dataclass
class ClipPlanner:
    """Online placement of ``frames``-sample windows, never across a cut or a pause.

    Feed every sample in order with :meth:`add`, saying whether the pair (previous
    sample, this one) shows motion (None when unknown, e.g. right after a cut); it
    returns the window that this sample completes, if any. Call :meth:`cut` between the
    samples a scene cut separates. Frames of samples below :attr:`keep_from` are never
    needed again; once :attr:`done`, decoding can stop.

    With ``trim_still``, a window starts at the sample just before the first motion of
    a segment (still heads are skipped), and ``pause`` still pairs in a row end the
    segment (still tails and long pauses are skipped). Shorter still moments are part
    of the motion, so a clip may end with less than ``pause`` still frames.

    Args:
        frames: samples per clip.
        trim_still: leave still heads, tails and pauses out of clips.
        pause: still pairs in a row that end a segment (with ``trim_still``).
        max_clips: stop after this many windows.
    """

    frames: int
    trim_still: bool = True
    pause: int = 8
    max_clips: Optional[int] = None
    stats: PlanStats = field(default_factory=PlanStats)

    def __post_init__(self):
        if self.frames < 1 or self.pause < 1:
            raise ValueError("frames and pause must be at least 1")
        self.segment = 0
        self.start: Optional[int] = None  # first sample of the window being filled
        self.last = -1
        self.segment_first = 0  # no window of this segment may start before it
        self.still_run = 0
        self.windows: List[Window] = []

    @property
    def done(self) -> bool:
        return self.max_clips is not None and len(self.windows) >= self.max_clips

    @property
    def keep_from(self) -> int:
        """The earliest sample a future window may contain."""
        if self.start is not None:
            return self.start
        return max(self.last, self.segment_first)  # the sample before the next motion

    def _new_segment(self, first: int) -> None:
        self.start = None
        self.still_run = 0
        self.segment += 1
        self.segment_first = first

    def cut(self) -> None:
        """A scene cut lies between the last sample added and the next one."""
        self.stats.cuts += 1
        self._new_segment(self.last + 1)

    def add(self, sample: int, moving: Optional[bool]) -> Optional[Window]:
        """Add sample ``sample`` (the next index); return the window it completes."""
        if sample != self.last + 1:
            raise ValueError(f"samples must come in order: got {sample} after {self.last}")
        self.last = sample
        self.stats.samples += 1
        if self.done:
            return None
        self.still_run = self.still_run + 1 if moving is False else 0
        if self.start is None:
            if self.trim_still and not moving:
                return None  # still head (or unknown): wait for motion
            self.start = max(sample - 1, self.segment_first) if self.trim_still else sample
        elif self.trim_still and self.still_run >= self.pause:
            self.stats.pauses += 1
            self._new_segment(sample)  # the window in progress would hold the pause: drop it
            return None
        if sample - self.start + 1 < self.frames:
            return None
        window = Window(self.start, sample + 1, self.segment)
        self.windows.append(window)
        self.start = sample + 1  # the next window follows back to back
        return window

    @property
    def used_samples(self) -> int:
        return sum(w.frames for w in self.windows)


# --------------------------------------------------------------------------- output size


@dataclass(frozen=True)
class SizePolicy:
    """How clip frames are sized.

    ``mode``:
        - ``bucket`` (default): the musubi-tuner bucket of area ``width*height`` nearest
          the source's aspect (either orientation), which musubi's latent caching then
          leaves as it is (see :mod:`circle_rotate.kernel.buckets`); scale to cover, centre-crop.
        - ``fit``: inside a ``width`` x ``height`` box, aspect kept, multiples of 16.
        - ``exact``: exactly ``width`` x ``height``: scale to cover, centre-crop.
        - ``keep``: the source size, cut down to multiples of 16.
    ``upscale``: allow scaling up. Without it a source too small for its bucket keeps
    its own size (cut to multiples of 16), and ``exact`` refuses it.
    """

    mode: str = "bucket"
    width: int = 832
    height: int = 480
    upscale: bool = False

    def validate(self) -> None:
        bad = []
        if self.mode not in SIZE_MODES:
            bad.append(f"size mode {self.mode!r} is not one of {', '.join(SIZE_MODES)}")
        if self.width % SIZE_STEP or self.height % SIZE_STEP or self.width <= 0 or self.height <= 0:
            bad.append(f"resolution {self.width}x{self.height} must be positive multiples of {SIZE_STEP}")
        if bad:
            raise UserError("; ".join(bad), fix="e.g. --resolution 832x480 --size-mode bucket")


@dataclass(frozen=True)
class FrameGeometry:
    """Scale the upright source frame to ``scaled`` (w, h), then crop ``crop`` (x, y, w, h)."""

    scaled: Tuple[int, int]
    crop: Tuple[int, int, int, int]

    @property
    def size(self) -> Tuple[int, int]:
        return self.crop[2], self.crop[3]


def _floor_step(x: float) -> int:
    return int(x // SIZE_STEP) * SIZE_STEP


def _cover(src: Tuple[int, int], out: Tuple[int, int]) -> FrameGeometry:
    """Scale ``src`` (aspect kept) to cover ``out``, centre-crop to it."""
    sw, sh = src
    ow, oh = out
    s = max(ow / sw, oh / sh)
    scaled = (max(ow, round(sw * s)), max(oh, round(sh * s)))
    return FrameGeometry(scaled, ((scaled[0] - ow) // 2, (scaled[1] - oh) // 2, ow, oh))


def frame_geometry(src_w: int, src_h: int, policy: SizePolicy) -> FrameGeometry:
    """The output geometry of an upright ``src_w`` x ``src_h`` source under ``policy``.

    Raises:
        UserError: the source is too small for the policy (below 16 px, or ``exact``
            would need upscaling without ``upscale``).
    """
    if src_w < SIZE_STEP or src_h < SIZE_STEP:
        raise UserError(f"frames are {src_w}x{src_h}, smaller than {SIZE_STEP} px", fix="use a larger source video")
    if policy.mode == "exact":
        if not policy.upscale and (src_w < policy.width or src_h < policy.height):
            raise UserError(f"source {src_w}x{src_h} is smaller than --resolution {policy.width}x{policy.height}",
                            fix="pass --upscale, or use --size-mode bucket")
        return _cover((src_w, src_h), (policy.width, policy.height))
    if policy.mode == "bucket":
        out = nearest_bucket((src_w, src_h), (policy.width, policy.height))
        if policy.upscale or (out[0] <= src_w and out[1] <= src_h):
            return _cover((src_w, src_h), out)
        s = 1.0  # too small for its bucket: keep it (musubi will scale it when caching)
    elif policy.mode == "keep":
        s = 1.0
    else:  # fit
        s = min(policy.width / src_w, policy.height / src_h)
        s = s if policy.upscale else min(s, 1.0)
    out = (max(SIZE_STEP, _floor_step(src_w * s)), max(SIZE_STEP, _floor_step(src_h * s)))
    return _cover((src_w, src_h), out)


def cropped_geometry(src_w: int, src_h: int, crop: Tuple[int, int, int, int], policy: SizePolicy) -> FrameGeometry:
    """The geometry of the ``crop`` (x, y, w, h) of an upright ``src_w`` x ``src_h`` source under
    ``policy``, as a scale of the whole frame and a crop of that: sized for the crop alone."""
    x, y, w, h = crop
    inner = frame_geometry(w, h, policy)
    fx, fy = inner.scaled[0] / w, inner.scaled[1] / h
    scaled = (max(1, round(src_w * fx)), max(1, round(src_h * fy)))
    cx, cy, ow, oh = inner.crop
    left = min(round(x * fx) + cx, scaled[0] - ow)  # rounding never reaches past the scaled frame
    top = min(round(y * fy) + cy, scaled[1] - oh)
    return FrameGeometry(scaled, (max(0, left), max(0, top), ow, oh))


def check_frames(frames: int) -> None:
    """Raise a UserError unless ``frames`` is of the form 4n+1 (what Wan's VAE needs)."""
    if frames < 1 or not is_4n_plus_1(frames):
        lower = max(1, (frames - 1) // 4 * 4 + 1)
        raise UserError(f"--frames {frames} is not of the form 4n+1", fix=f"use {lower} or {lower + 4}")
