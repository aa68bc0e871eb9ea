"""One source video -> clips and manifest records, in a single decoding pass.

Frames are decoded once; only those the timestamp resampler picks are converted (and
scaled by FFmpeg in the same step). Each sample gets a small analysis frame for cut
detection, stillness and orbit QC; the planner decides clip windows online, so at most
one clip's frames are held. A finished window is measured, judged and (if kept) encoded.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import cv2
import numpy as np

from circle_rotate.kernel.errors import DiskFullError, UnwritableOutputError, UserError
from circle_rotate.kernel.video_io import (cut_short, iter_decoded_frames, probe_video, shown_notes, spread_frames,
                                          write_video)
from circle_rotate.media.borders import Bars, letterbox
from circle_rotate.media.orbit import STATIC_DEG_S, classify_pairs
from circle_rotate.media.orbit_flow import FlowEstimator, PairStats, analysis_grey, analysis_size, pair_stats, shrink
from circle_rotate.media.orbit_qc import qc_verdict
from circle_rotate.media.scene_cuts import CutDetector
from circle_rotate.prepare.caption import caption_for
from circle_rotate.prepare.clip_plan import (ClipPlanner, FrameGeometry, TimestampResampler, Window, cropped_geometry,
                                            frame_geometry)
from circle_rotate.prepare.manifest import clip_stem, stable_hash
from circle_rotate.prepare.options import PrepareOptions
from circle_rotate.prepare.prepared_folder import note_clip

logger = logging.getLogger(__name__)

PAUSE_S = 0.5  # stillness this long ends a segment (with still trimming)
#: ``--crop-bars`` looks for bars on this many frames spread over the source, at most this long a
#: side: bars are the whole source's (an export's letterbox), not a title card's or an intro's.
BARS_LOOK_FRAMES, BARS_LOOK_SIDE = 24, 640


@dataclass(frozen=True)
class SourceJob:
    """Everything a worker needs (picklable)."""

    path: str
    rel: str
    fingerprint: str
    out_dir: str
    options: PrepareOptions
    reuse: frozenset = frozenset()  # clip ids whose files exist and can be kept


@dataclass
class _Sample:
    rgb: np.ndarray
    grey: np.ndarray
    time: float
    pair: Optional[PairStats]  # flow from the previous sample; None at a segment start
    repeated: bool  # same source frame as the previous sample (slow source)


@dataclass
class _State:
    job: SourceJob
    geometry: FrameGeometry
    planner: ClipPlanner
    cuts: CutDetector
    flow: FlowEstimator = field(default_factory=FlowEstimator)
    samples: Dict[int, _Sample] = field(default_factory=dict)
    records: List[dict] = field(default_factory=list)
    last_src: int = -1
    notes: List[str] = field(default_factory=list)  # the source's, from before decoding (a crop made)
    vfr: bool = False  # the frames' timestamps so far are irregular: a variable-frame-rate source


def _moving(pair: PairStats, width: int, fps: float, hfov_deg: float) -> bool:
    with np.errstate(invalid="ignore"):
        length = np.hypot(pair.u, pair.v)
    typical = float(np.nanmedian(length)) if np.any(~np.isnan(length)) else 0.0
    focal = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
    return typical / focal * fps * 180 / math.pi >= STATIC_DEG_S


def _add_sample(st: _State, k: int, frame, src: int) -> None:
    opts = st.job.options
    if k > 0 and src == st.last_src and (k - 1) in st.samples:
        prev = st.samples[k - 1]  # a slow source repeats its frame: reuse the work
        sample = _Sample(prev.rgb, prev.grey, k / opts.fps, prev.pair, True)
    else:
        x, y, w, h = st.geometry.crop
        rgb = np.ascontiguousarray(frame.to_rgb(st.geometry.scaled)[y:y + h, x:x + w])
        small = shrink(rgb, analysis_size(w, h))
        grey = analysis_grey(small)
        prev = st.samples.get(k - 1)
        pair = pair_stats(prev.grey, grey, st.flow(prev.grey, grey)) if prev is not None else None
        if k > 0 and st.cuts.push(small, residual=pair.residual if pair else None):
            st.planner.cut()
            st.flow.reset()
            pair = None
        elif k == 0:
            st.cuts.push(small)
        sample = _Sample(rgb, grey, k / opts.fps, pair, False)
    st.last_src = src
    st.samples[k] = sample
    # A repeated frame carries the previous pair's motion: duplicates are not stillness.
    moving = None if sample.pair is None else _moving(sample.pair, sample.grey.shape[1], opts.fps, opts.hfov_deg)
    window = st.planner.add(k, moving)
    if window is not None:
        _finish_window(st, window)
    for old in [i for i in st.samples if i < st.planner.keep_from - 1]:
        del st.samples[old]


def _measure(st: _State, window: Window):
    opts = st.job.options
    seq = [st.samples[k] for k in range(window.start, window.stop)]
    pairs = [s.pair for s in seq[1:] if s.pair is not None and not s.repeated]
    repeats = sum(s.repeated for s in seq[1:])
    why = (f"gaps over 1/{opts.fps:g} s in a variable-frame-rate source" if st.vfr else
           f"source slower than {opts.fps:g} fps")
    notes = [f"{repeats} of {len(seq)} frames repeat the previous one ({why})"] if repeats else []
    if len(pairs) < 2:
        pairs = [s.pair for s in seq[1:] if s.pair is not None] or [pair_stats(seq[0].grey, seq[0].grey,
                                                                             np.zeros((*seq[0].grey.shape, 2), np.float32))]
    grey = seq[0].grey
    joined = [seq[0].grey] + [s.grey for s in seq[1:] if s.pair is not None and not s.repeated]  # what the pairs join
    m = classify_pairs(pairs, width=grey.shape[1], height=grey.shape[0], fps=opts.fps * len(pairs) / max(1, len(seq) - 1),
                       hfov_deg=opts.hfov_deg, first=seq[0].grey, last=seq[-1].grey, frames=joined)
    return seq, m, notes


def _finish_window(st: _State, window: Window) -> None:
    job, opts = st.job, st.job.options
    seq, m, notes = _measure(st, window)
    verdict, reasons = qc_verdict(m, mode=opts.qc, notes=notes)
    w, h = st.geometry.size
    clip_id = stable_hash({"source": job.rel, "fp": job.fingerprint, "start": window.start, "settings": opts.clip_key()}, 16)
    index = sum(1 for r in st.records if r["type"] == "clip")
    name = f"{clip_stem(job.rel)}_{index:03d}_{clip_id[:8]}.mp4"
    folder = "videos" if verdict == "accept" else "rejected"
    keep = verdict == "accept" or opts.keep_rejected
    record = {
        "type": "clip", "id": clip_id, "clip": f"{folder}/{name}" if keep else None, "source": job.rel,
        "start_time": round(seq[0].time, 4), "end_time": round(seq[-1].time, 4), "frames": len(seq), "fps": opts.fps,
        "width": w, "height": h, "orbit": m.to_dict(), "verdict": verdict, "reasons": list(reasons), "caption": None,
    }
    bars = letterbox(np.stack([cv2.cvtColor(x.rgb, cv2.COLOR_RGB2GRAY) for x in seq]))
    if bars:  # the LoRA would learn them: said, with the source's crop (source_bars_note)
        record["bars"] = dataclasses.asdict(bars)
    record["caption"] = caption_for(record)
    target = Path(job.out_dir) / folder / name
    if keep and not (clip_id in job.reuse and target.exists()):
        note_clip(Path(job.out_dir), f"{folder}/{name}")  # a kill before its manifest line leaves it to the next run
        write_video(target, (s.rgb for s in seq), fps=opts.fps, crf=opts.crf, preset=opts.preset,
                    threads=opts.encode_threads)
    st.records.append(record)


#: How a source's note on black bars in its clips begins (the run's summary collects them).
BARS_NOTE = "black bars in "


def source_bars_note(clips: List[dict], geometry: FrameGeometry, display: tuple) -> List[str]:
    """A note for the black bars the clips kept, with FFmpeg's crop of the source that leaves
    them out (the bands every barred clip has, in source pixels, widened to even numbers)."""
    barred = [Bars(**r["bars"]) for r in clips if r.get("bars")]
    if not barred:
        return []
    common = Bars(*(min(getattr(b, side) for b in barred) for side in ("top", "bottom", "left", "right")))
    (sw, sh), (x, y, w, h), (width, height) = geometry.scaled, geometry.crop, display
    sx, sy = sw / width, sh / height

    def even_up(v: float) -> int:
        return int(math.ceil(v / 2)) * 2 if v > 0 else 0

    top = even_up((y + common.top) / sy) if common.top else 0
    bottom = even_up(height - (y + h - common.bottom) / sy) if common.bottom else 0
    left = even_up((x + common.left) / sx) if common.left else 0
    right = even_up(width - (x + w - common.right) / sx) if common.right else 0
    crop = Bars(top, bottom, left, right)
    if len(barred) < len(clips):  # a crop of the whole source would cut picture off the others
        return [f"{BARS_NOTE}{len(barred)} of {len(clips)} clip(s) ({common.describe()} of the clip), which the LoRA "
                f"would learn; the source's other clips have none"]
    if not crop or top + bottom >= height or left + right >= width:
        return [f"{BARS_NOTE}{len(barred)} of {len(clips)} clip(s), which the LoRA would learn"]
    return [f"{BARS_NOTE}{len(barred)} of {len(clips)} clip(s) ({common.describe()} of the clip), which the LoRA "
            f"would learn; crop them off the source (ffmpeg -i IN -vf {crop.crop(width, height)} -c:v libx264 -crf 16 "
            f"OUT.mp4) and prepare that"]


#: What to do about a source too short for one clip.
TOO_SHORT_FIX = "a shorter --frames, or a longer take"
#: How far a frame's gap may stray from the nominal period (as a share of it) in a constant-rate
#: source: timestamps rounded to a coarse time base (Matroska's milliseconds) stray a few percent.
VFR_STRAY = 0.5


def _source_record(job: SourceJob, **fields) -> dict:
    rec = {"type": "source", "source": job.rel, "fingerprint": job.fingerprint, "settings": job.options.settings_key(),
           "status": "ok", "reason": None, "probe": None, "clips": 0, "rejected": 0, "notes": []}
    rec.update(fields)
    return rec


def _needed_seconds(opts: PrepareOptions) -> float:
    return (opts.frames - 1) / opts.fps


def process_source(job: SourceJob) -> List[dict]:
    """Prepare one source: its source record first, then its clip records.

    Never raises for a bad source: the problem becomes the source record's status
    ("error", "truncated", "too_short", "no_motion", "rejected") and reason. Even an
    unexpected failure (a codec PyAV cannot convert) is recorded, not
    raised, so one file never stops the batch; clips are written atomically, so none is
    left half-written. A full disk or an output folder that takes no files is raised: it is no
    fault of the footage, and every later source would meet it too.
    """
    try:
        return _process(job)
    except (DiskFullError, UnwritableOutputError):  # the output's fault: every later source would fail alike
        raise
    except Exception as exc:  # noqa: BLE001 - reported in the manifest, traceback in the log
        logger.warning("%s: unexpected failure", job.rel, exc_info=True)
        return [_source_record(job, status="error", reason=f"unexpected {exc.__class__.__name__}: {exc}")]


def _process(job: SourceJob) -> List[dict]:
    opts = job.options
    try:
        info = probe_video(job.path)
    except UserError as exc:
        return [_source_record(job, status="error", reason=str(exc))]
    probe = {k: v for k, v in info.to_dict().items() if k != "path"}
    if info.fps <= 0:
        return [_source_record(job, status="error", probe=probe, reason="the video declares no frame rate; "
                               "fix: re-export it as a normal video file")]
    if info.frame_count <= 1:
        return [_source_record(job, status="too_short", probe=probe,
                               reason=f"{info.frame_count} frame(s); a clip needs {opts.frames} at {opts.fps:g} fps; "
                                      f"fix: {TOO_SHORT_FIX}")]
    if info.duration + 1.0 / info.fps < _needed_seconds(opts) - 1e-6:
        return [_source_record(job, status="too_short", probe=probe,
                               reason=f"{info.duration:.2f} s long; {opts.frames} frames at {opts.fps:g} fps need "
                                      f"{_needed_seconds(opts):.2f} s; fix: {TOO_SHORT_FIX}")]
    width, height = info.display_size
    bars = source_bars(job.path, (width, height)) if opts.crop_bars else Bars()
    try:
        if bars:
            geometry = cropped_geometry(width, height, (bars.left, bars.top, width - bars.left - bars.right,
                                                        height - bars.top - bars.bottom), opts.size)
        else:
            geometry = frame_geometry(width, height, opts.size)
    except UserError as exc:
        return [_source_record(job, status="error", probe=probe, reason=str(exc))]
    st = _State(job, geometry, ClipPlanner(opts.frames, trim_still=opts.trim_still, pause=max(1, round(PAUSE_S * opts.fps)),
                                           max_clips=opts.max_clips), CutDetector(fps=opts.fps))
    if bars:
        st.notes.append(f"black bars cropped off ({bars.describe()} of the source: {bars.crop(width, height)})")
    return _run(st, info, probe)


def source_bars(path: str, display: tuple) -> Bars:
    """The black bars framing the source at ``path`` (:func:`~circle_rotate.media.borders.letterbox`
    on :data:`BARS_LOOK_FRAMES` frames spread over it), in its display pixels, each widened to an
    even count (a thin black line left is worse than two pixels of picture lost); none where they
    cannot be read (the main pass says why)."""
    width, height = display
    s = min(1.0, BARS_LOOK_SIDE / max(width, height))
    size = (max(16, round(width * s)), max(16, round(height * s)))
    try:
        grey = [cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) for rgb in spread_frames(path, BARS_LOOK_FRAMES, size)]
    except UserError:
        return Bars()
    if len(grey) < 2:
        return Bars()
    found = letterbox(np.stack(grey))

    def to_source(n: int, scale: float) -> int:
        return int(math.ceil(n / scale / 2)) * 2 if n else 0

    sx, sy = size[0] / width, size[1] / height
    out = Bars(to_source(found.top, sy), to_source(found.bottom, sy), to_source(found.left, sx),
               to_source(found.right, sx))
    if out.top + out.bottom >= height - 16 or out.left + out.right >= width - 16:
        return Bars()  # next to nothing left: not bars around a picture
    return out


def _run(st: _State, info, probe: dict) -> List[dict]:
    opts, job = st.job.options, st.job
    rs = TimestampResampler(opts.fps)
    prev, decoded, error, last_time = None, 0, None, 0.0
    try:
        for frame in iter_decoded_frames(job.path):
            decoded += 1
            if prev is not None and abs((frame.time - prev.time) * info.fps - 1) > VFR_STRAY:
                st.vfr = True  # a phone dropping frames in low light, or a screen recording
            last_time = frame.time
            for k, src in rs.push(frame.index, frame.time):
                _add_sample(st, k, frame if src == frame.index else prev, src)
            prev = frame
            if st.planner.done:
                break
        else:
            if prev is not None:
                for k, src in rs.finish(1.0 / info.fps):
                    _add_sample(st, k, prev, src)
    except UserError as exc:
        # the source's own fault (cut off, corrupt) ends it early; a full disk or an output that
        # cannot be written is this run's, and no reason to blame the footage or keep going
        if isinstance(exc, (DiskFullError, UnwritableOutputError)) or (exc.path and Path(exc.path) != Path(job.path)):
            raise
        error = exc
    notes = shown_notes(info) + st.notes
    # the container's duration, not the packet count: an edit list (a trim saved without
    # re-encoding) keeps packets before its start that no player shows
    declared = info.duration if info.duration > 0 else info.frame_count / info.fps
    truncated = not st.planner.done and cut_short(last_time + 1.0 / info.fps, declared, info.fps)
    p = st.planner.stats
    notes += [f"{p.cuts} scene cut(s)"] * bool(p.cuts) + [f"{p.pauses} pause(s) skipped"] * bool(p.pauses)
    clips = [r for r in st.records if r["verdict"] == "accept"]
    notes += source_bars_note(clips, st.geometry, info.display_size)
    status, reason = "ok", None
    if error and not decoded:
        status, reason = "error", str(error)
    elif error or truncated:
        # a cut-off file either ends early (MKV) or ends in bad data (a faststart MP4): the same thing to the user
        status = "truncated"
        why = f" ({error.problem.removeprefix(f'{error.path}: ')})" if error else ""
        reason = (f"cut short at frame {decoded}: decoded {last_time + 1.0 / info.fps:.2f} s of the {declared:.2f} s "
                  f"the file declares{why}; {len(clips)} clip(s) made from the readable part")
    elif not st.records:
        samples = p.samples
        status = "too_short" if samples < opts.frames else "no_motion"
        reason = (f"{samples} frames at {opts.fps:g} fps; a clip needs {opts.frames}; fix: {TOO_SHORT_FIX}"
                  if status == "too_short" else
                  ("no stretch of camera motion is a whole clip long once still or barely moving heads, tails and "
                   "pauses are left out (or scene cuts split it); --keep-still keeps them" if opts.trim_still else
                   # --keep-still is on: only scene cuts end a stretch, and naming the flag again would not help
                   "no stretch between scene cuts is a whole clip long"))
    elif not clips:
        first = next((r for r in st.records if r.get("reasons")), None)
        status, reason = "rejected", "QC rejected every clip" + (f" (first: {'; '.join(first['reasons'])})"
                                                                 if first else "")
    head = _source_record(job, status=status, reason=reason, probe=probe, clips=len(clips),
                          rejected=len(st.records) - len(clips), notes=notes)
    return [head] + st.records
