"""What makes a baseline video and a LoRA video one pair: their names, without the counters and
timestamps generators add, and the first frame they share.

By name: identical file stems first; when none match, the stems are compared after removing
what all names on one side share at the start or end (``demo2_base.gif`` pairs with
``demo2_ours.gif``); videos still unpaired then pair by their names without a generator's
counter or timestamp (:func:`name_key`).

An image-to-video model starts every video of one scene at the same conditioning image, so a
baseline video and its LoRA video agree on their first frame (the study's 7 real pairs: 36.8 dB
and up at 64 px, grey; 25.8 dB and up re-encoded as MP4s), and two videos of different scenes do
not (the 42 wrong pairings of them: 13.7 dB and down). One side's front end may have dropped a
first frame or two, so each side's first frame is also held against the other's next frames
(:func:`start_agreement`). A pairing by
name can still be wrong: ComfyUI numbers its outputs ``Wan_00001_.mp4, Wan_00002_.mp4, ...`` on
each side, and one video missing on one side shifts every later number by one.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np

from circle_rotate.kernel.errors import UserError

#: Start agreement (:func:`start_agreement`: first-frame PSNR, dB, grey, 64 px short side) below
#: which two videos do not start at the same conditioning image. Real pairs read 25.8 dB and up
#: (18.7 and up with one side's first frame or two dropped, the fastest orbit), different scenes
#: 14.0 dB and down: 16.5 dB leaves 2 dB either side.
SAME_START_DB = 16.5

#: Short side (px) the first frames are compared at: an encoder's noise and a decoder's rounding
#: average out, the picture stays.
START_SIDE = 64

#: ComfyUI's SaveVideo / SaveAnimated* counter: ``name_00001_``; the trailing underscore is its own.
_COMFY_COUNTER = re.compile(r"_\d{5}_$")
#: VideoHelperSuite's Video Combine counter: ``name_00001``. Five digits at the end of a name are
#: as often the name's own (a seed, a take: ``demo_12345``), so only a zero-padded one is taken
#: for a counter: VHS pads to five digits, so its first 9999 outputs of a name start with 0.
_VHS_COUNTER = re.compile(r"_0\d{4}$")
#: Wan's generate.py: ``<task>_<size>_<ulysses>[_<ring>]_<prompt>_YYYYmmdd_HHMMSS``. Phones write
#: ``VID_YYYYmmdd_HHMMSS`` too, so the timestamp is Wan's only behind Wan's task and size.
_WAN_NAME = re.compile(r"^([^_]+_\d+[*x]\d+_\d+_.*)_\d{8}_\d{6}$")
#: musubi-tuner's wan_generate_video.py: ``YYYYmmdd-HHMMSS-mmm_<seed>[_<image name>]``: the seed
#: (and the image name in batch mode) is what a baseline run and a LoRA run share.
_MUSUBI_TIME = re.compile(r"^\d{8}-\d{6}-\d{3}_(?=.)")
#: A side's mark at the end of a video's name: demo1_base, demo1-lora, demo1_ours.
SIDE_MARK = re.compile(r"[_\-. ](base|baseline|orig|original|lora|ours|others|theirs)$", re.IGNORECASE)


def video_name(row: Mapping[str, Any]) -> str:
    """A row's file name in Unicode's composed form (NFC): macOS writes names decomposed (NFD: ``u``
    and a combining diaeresis for ``ü``), Linux and Windows keep them as typed, so one side's
    ``Müller_café.mp4`` and the other's look alike and differ in their code points."""
    return unicodedata.normalize("NFC", row["video"])


def _stem(row: Mapping[str, Any]) -> str:
    """:func:`_name` without its extension."""
    return Path(video_name(row)).stem


def _strip_marks(stem: str) -> Tuple[str, Tuple[str, ...]]:
    """``stem`` without a generator's counter and timestamp, and which of them it had
    (``"comfyui"``, ``"vhs"``, ``"timestamp"``)."""
    key, found = stem, []
    for kind, pattern in (("comfyui", _COMFY_COUNTER), ("vhs", _VHS_COUNTER)):
        if pattern.search(key):
            key, found = pattern.sub("", key), [*found, kind]
            break
    wan = _WAN_NAME.match(key)
    if wan:
        key, found = wan.group(1), [*found, "timestamp"]
    if _MUSUBI_TIME.match(key):
        key, found = _MUSUBI_TIME.sub("", key), [*found, "timestamp"]
    return key, tuple(found)


def name_key(stem: str) -> Optional[str]:
    """A video's name (``stem``, no extension) with what a generator adds to tell its runs apart
    removed: ComfyUI's counter (``_00001_``), VideoHelperSuite's (``_00001``, zero-padded: a
    ``_12345`` is the name's own), Wan generate.py's timestamp (after its task and size: a phone's
    ``VID_20240801_120000`` keeps its own), musubi-tuner's time prefix (the seed is kept), then a
    side mark (``_base``, ``_lora``).

    Returns:
        The key, or None when the name carries none of these (the name is then the key already).

    Example:
        >>> name_key("demo2_00003_"), name_key("20250801-101500-123_42"), name_key("demo_12345")
        ('demo2', '42', None)
    """
    key, found = _strip_marks(unicodedata.normalize("NFC", stem))
    if not found or not key:
        return None
    return SIDE_MARK.sub("", key) or key


def start_thumbnail(frame: np.ndarray) -> np.ndarray:
    """``frame`` (H, W, 3 RGB or H, W grey, uint8) as grey at :data:`START_SIDE` px on its short side."""
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
    h, w = grey.shape
    scale = START_SIDE / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA)


def start_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two first frames at :data:`START_SIDE` px, grey; ``b`` is brought to ``a``'s
    thumbnail size (a pair of other sizes is named elsewhere). Infinite when they agree exactly.

    Args:
        a, b: frames, (H, W, 3) RGB or (H, W) grey, uint8.
    """
    ta = start_thumbnail(a).astype(np.float64)
    tb = cv2.resize(start_thumbnail(b), (ta.shape[1], ta.shape[0]), interpolation=cv2.INTER_AREA).astype(np.float64)
    mse = float(np.mean((ta - tb) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


#: Frames of each side the other side's first frame is held against: a front end that drops a
#: video's first frame (or two: a GIF resampled to another rate repeats frames) starts it later.
START_FRAMES = 3


def start_agreement(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """How well two videos' starts agree (dB): the best :func:`start_psnr` of ``a[0]`` against
    ``b[0:START_FRAMES]`` and of ``b[0]`` against ``a[0:START_FRAMES]``, so that a video whose
    first frame or two were dropped still meets its pair. Different scenes stay apart: the
    study's 42 wrong pairings read 14.0 dB and down this way (13.7 on the first frames alone).

    Args:
        a, b: each video's first frames (at least one), as :func:`start_psnr` takes them.
    """
    best = max(start_psnr(a[0], f) for f in b[:START_FRAMES])
    return max(best, *(start_psnr(f, b[0]) for f in a[:START_FRAMES]))


def different_start(psnr_db: float, *, cause: Optional[str] = None) -> Optional[str]:
    """Why two videos whose starts agree to ``psnr_db`` are not one pair; None when they are.

    Args:
        cause: how the pairing may have gone wrong (:func:`pairing_cause`), said after it.
    """
    if psnr_db >= SAME_START_DB:
        return None
    return (f"first frames differ ({psnr_db:.1f} dB): not the same conditioning image; check the pairing"
            + (f" ({cause})" if cause else ""))


def pairing_cause(pair: "Pair") -> Optional[str]:
    """What may have paired two videos of different scenes: a counter in their names (one video
    missing on one side shifts every later number), or names that agree only without their
    counter or timestamp; None for names that agree as they are."""
    stems = (_stem(pair.baseline), _stem(pair.lora))
    kinds = {k for s in stems for k in _strip_marks(s)[1]}
    if "comfyui" in kinds:
        return "a missing video shifts ComfyUI's counters"
    if "vhs" in kinds:
        return "a missing video shifts VideoHelperSuite's counters"
    if stems[0] != stems[1] and pair.name == name_key(stems[0]) == name_key(stems[1]):
        return "paired because the names without their counter or timestamp agree"
    return None


@dataclass(frozen=True)
class Pair:
    name: str
    baseline: Mapping[str, Any]
    lora: Mapping[str, Any]


def _affix(stems: Sequence[str]) -> Tuple[int, int]:
    """Lengths of the prefix and suffix that every stem shares (none for a single stem)."""
    if len(stems) < 2:
        return 0, 0
    pre = len(os.path.commonprefix(list(stems)))
    suf = len(os.path.commonprefix([s[::-1] for s in stems]))
    shortest = min(len(s) for s in stems)
    pre = min(pre, shortest - 1)
    return pre, min(suf, shortest - pre - 1)


def _keys(rows: Sequence[Mapping[str, Any]], *, prefix: bool, suffix: bool) -> Dict[str, Mapping[str, Any]]:
    stems = [_stem(r) for r in rows]
    pre, suf = _affix(stems)
    pre, suf = (pre if prefix else 0), (suf if suffix else 0)
    return {s[pre:len(s) - suf]: r for s, r in zip(stems, rows)}


def _unpaired(row: Mapping[str, Any], other_side: Sequence[Mapping[str, Any]],
              own_side: Sequence[Mapping[str, Any]] = ()) -> str:
    """Why an evaluated video has no pair: its namesake failed (a black video, a corrupt file),
    another video of its side has its name, or there is none."""
    stem = _stem(row)
    failed = [r["video"] for r in other_side if r.get("status") != "ok" and _stem(r) == stem]
    if failed:
        return f"{row['video']}: its namesake {failed[0]} could not be evaluated, so the pair is left out"
    twins = [r["video"] for r in own_side if r is not row and r.get("status") == "ok" and _stem(r) == stem]
    if twins:
        return (f"{row['video']}: {twins[0]} on its side has its name too, so only a namesake with the same file name "
                f"pairs with it, and the other side has none; name the videos apart")
    key = name_key(stem)
    alike = [r["video"] for r in (*own_side, *other_side) if r is not row and r.get("status") == "ok"
             and name_key(_stem(r)) == key] if key else []
    if len(alike) > 1 or any(r is not row and r["video"] in alike for r in own_side):
        return (f"{row['video']}: no namesake on the other side, and its name without the counter or timestamp "
                f"({key!r}) is shared by {', '.join(alike[:3])}, so it is not paired by it; name the videos apart")
    return f"{row['video']}: no namesake on the other side"


def _twin_stems(rows: Sequence[Mapping[str, Any]]) -> set:
    """Stems two or more of ``rows`` share (``demo1.gif`` beside ``demo1.mp4``)."""
    stems = Counter(_stem(r) for r in rows)
    return {s for s, n in stems.items() if n > 1}


def pair_rows(baseline: Sequence[Mapping[str, Any]], lora: Sequence[Mapping[str, Any]]) -> List[Pair]:
    """Pair ok rows by video name (see the module docstring).

    Raises:
        UserError: no video name in common.
    """
    base_ok = [r for r in baseline if r.get("status") == "ok"]
    lora_ok = [r for r in lora if r.get("status") == "ok"]
    # Where one side holds two videos of one stem (demo1.gif beside demo1.mp4), a stem names no
    # single video: those pair by their whole file name only, and the rest by stem as usual.
    twins = _twin_stems(base_ok) | _twin_stems(lora_ok)
    by_name = {video_name(r): r for r in lora_ok if _stem(r) in twins}
    pairs = [Pair(video_name(r), r, by_name[video_name(r)]) for r in base_ok
             if _stem(r) in twins and video_name(r) in by_name]
    base_ok = [r for r in base_ok if _stem(r) not in twins]
    lora_ok = [r for r in lora_ok if _stem(r) not in twins]
    found = len(pairs)
    for prefix, suffix in ((False, False), (False, True), (True, True)):
        b, l = _keys(base_ok, prefix=prefix, suffix=suffix), _keys(lora_ok, prefix=prefix, suffix=suffix)
        common = [k for k in b if k in l]
        if common:
            pairs = pairs[:found] + [Pair(k, b[k], l[k]) for k in common]
            break
    # names marked by side on only some videos (demo1_base / demo1_ours beside demo2 / demo2)
    taken = {id(p.baseline) for p in pairs} | {id(p.lora) for p in pairs}
    b = _by_unmarked([r for r in base_ok if id(r) not in taken])
    l = _by_unmarked([r for r in lora_ok if id(r) not in taken])
    pairs += [Pair(k, b[k], l[k]) for k in b if k in l and k not in {p.name for p in pairs}]
    pairs += _by_key(base_ok, lora_ok, pairs)
    if not pairs:
        raise UserError("no video of the baseline has a namesake among the LoRA videos",
                        fix="name each pair alike (demo1.mp4 in both folders, or demo1_base / demo1_lora); a "
                            "counter (ComfyUI's _00001_, VideoHelperSuite's _00001), Wan generate.py's timestamp "
                            "and musubi's time prefix are passed over, so the rest of the names must agree")
    return pairs


def _by_key(base_ok: Sequence[Mapping[str, Any]], lora_ok: Sequence[Mapping[str, Any]],
            pairs: Sequence[Pair]) -> List[Pair]:
    """Pairs of the rows still unpaired by their names without a counter or timestamp
    (:func:`~circle_rotate.eval.pairing.name_key`): ComfyUI counts its outputs on, so a baseline's
    demo2_00001_ is a LoRA's demo2_00003_. A key two videos of one side share pairs nothing."""
    taken = {id(p.baseline) for p in pairs} | {id(p.lora) for p in pairs}
    names = {p.name for p in pairs}

    def unique(rows):
        keys = [name_key(_stem(r)) for r in rows]
        return {k: r for k, r in zip(keys, rows) if k is not None and keys.count(k) == 1 and id(r) not in taken}

    b, l = unique(base_ok), unique(lora_ok)
    return [Pair(k, b[k], l[k]) for k in b if k in l and k not in names]


def _by_unmarked(rows: Sequence[Mapping[str, Any]]) -> Dict[str, Mapping[str, Any]]:
    """Rows by their stem without a side mark, where that leaves the names apart."""
    keys = [SIDE_MARK.sub("", _stem(r)) for r in rows]
    return {k: r for k, r in zip(keys, rows) if keys.count(k) == 1}


def _first_frames(row: Mapping[str, Any]) -> Optional[List[np.ndarray]]:
    """The first :data:`START_FRAMES` frames of the row's video (fewer in a shorter one), or None
    where it cannot be read any more (a results file whose videos moved)."""
    from itertools import islice

    from circle_rotate.kernel.video_io import iter_frames

    path = row.get("path")
    if not path or not Path(path).exists():
        return None
    frames = iter_frames(path, max_side=512)
    try:
        return list(islice(frames, START_FRAMES)) or None
    except UserError:
        return None
    finally:
        frames.close()


def different_starts(pairs: Sequence[Pair], *, first_frames: Callable[[Mapping[str, Any]],
                     Optional[Sequence[np.ndarray]]] = _first_frames) -> Tuple[List[Tuple[Pair, str]], List[str]]:
    """Pairs whose two videos do not start at the same conditioning image
    (:func:`start_agreement`, :func:`different_start`), with why; and the pairs whose first
    frames could not be read to check it.

    Returns:
        ``([(pair, reason)], [pair name])``.
    """
    differ, unchecked = [], []
    for p in pairs:
        a, b = first_frames(p.baseline), first_frames(p.lora)
        if not a or not b:
            unchecked.append(p.name)
            continue
        why = different_start(start_agreement(a, b), cause=pairing_cause(p))
        if why:
            differ.append((p, why))
    return differ, unchecked
