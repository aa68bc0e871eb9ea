"""What musubi-tuner will load from one video dataset: videos, frames, captions, items.

musubi-tuner's loader drops things silently: a video shorter than every target length
after its ``source_fps`` frame dropping yields no item, and a missing caption file only
fails at text-encoder caching. This module counts all of that up front, following the
behaviour documented in musubi-tuner 0.3.4 (``dataset/media_utils.load_video`` and
``VideoDataset.retrieve_latent_cache_batches``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from circle_rotate.kernel.buckets import nearest_bucket
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.musubi_env import import_musubi, musubi_available
from circle_rotate.kernel.video_io import frame_order, probe_video
from circle_rotate.kernel.wan_arch import NATIVE_FPS, VAE_STRIDE
from circle_rotate.prepare.caption import read_caption_file

#: musubi-tuner 0.3.4's video extensions (``media_utils.VIDEO_EXTENSIONS``): case matters.
_VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".flv", ".wmv", ".m4v", ".mpg", ".mpeg")
#: musubi-tuner 0.3.4's image extensions (``media_utils.IMAGE_EXTENSIONS``), the lower-case ones: it
#: lists these and their upper-case spellings, nothing else (``.Png`` is not an image to it).
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".avif")
FRAME_EXTRACTIONS = ("head", "chunk", "slide", "uniform", "full")


def _media_utils():
    """musubi-tuner's ``dataset.media_utils``, or None where it is not installed or will not import
    (the callers fall back to the lists it had in 0.3.4)."""
    if musubi_available():
        try:
            return import_musubi("dataset.media_utils")
        except Exception:  # a broken install
            pass
    return None


def _both_cases(extensions: Tuple[str, ...]) -> Tuple[str, ...]:
    return extensions + tuple(e.upper() for e in extensions)


def video_extensions() -> Tuple[str, ...]:
    """The extensions musubi-tuner globs for (its own list when it is installed)."""
    media = _media_utils()
    return tuple(media.VIDEO_EXTENSIONS) if media is not None else _both_cases(_VIDEO_EXTENSIONS)


def musubi_frame_names(folder: Path) -> List[str]:
    """The frame files musubi-tuner reads from a frame folder, in the order it reads them (name order):
    its own ``glob_images`` when it is installed, else its known extension list, case-sensitive, with
    hidden files passed over as its glob passes them."""
    media = _media_utils()
    if media is not None:
        return sorted(Path(f).name for f in media.glob_images(str(folder)))
    exts = set(_both_cases(_IMAGE_EXTENSIONS))
    return sorted(f.name for f in folder.iterdir() if f.is_file() and f.suffix in exts and not f.name.startswith("."))


def round_4n1(frames: int) -> int:
    """What musubi does to a target length that is not 4n+1: round it down."""
    return (frames - 1) // 4 * 4 + 1


def frames_after_fps(count: int, *, source_fps: Optional[float], target_fps: float = NATIVE_FPS,
                     end_frame: Optional[int] = None) -> int:
    """Frames musubi keeps from a ``count``-frame video: with ``source_fps`` it walks the
    frames with a fractional index step of target/source and keeps a frame whenever the
    integer index changes (so a slower source loses index slots); ``end_frame`` stops it
    (``head`` extraction reads only up to the longest target)."""
    if source_fps is None:
        return count if end_frame is None else min(count, end_frame)
    step, acc, prev, kept = target_fps / source_fps, 0.0, -1, 0
    for _ in range(count):
        index = int(acc)
        acc += step
        if index == prev:
            continue
        prev = index
        if end_frame is not None and index >= end_frame:
            break
        kept += 1
    return kept


def items_for(frames: int, *, targets: Sequence[int], extraction: str, stride: int = 1, sample: int = 1) -> int:
    """Training items musubi makes from a video of ``frames`` frames (after fps dropping): its
    distinct windows (:func:`frame_windows`; targets rounded down to 4n+1 as musubi does)."""
    if extraction == "full":
        return 1 if frames >= 1 else 0
    targets = sorted({round_4n1(t) for t in targets if t >= 1})
    return len(frame_windows(frames, extraction=extraction, target_frames=targets, stride=stride, sample=sample))


def frame_windows(frames: int, *, extraction: str, target_frames: Sequence[int], stride: int = 1, sample: int = 1,
                  max_frames: Optional[int] = None) -> List[Tuple[int, int]]:
    """(start, length) of every window musubi cuts from a clip of ``frames`` frames.

    Semantics of ``frame_extraction`` as documented in musubi's docs/dataset_config.md.
    """
    out: List[Tuple[int, int]] = []
    for target in target_frames:
        if extraction == "head" and frames >= target:
            out.append((0, target))
        elif extraction == "chunk":
            out += [(i, target) for i in range(0, frames, target) if i + target <= frames]
        elif extraction == "slide" and frames >= target:
            out += [(i, target) for i in range(0, frames - target + 1, max(1, stride))]
        elif extraction == "uniform" and frames >= target:
            out += [(int(i), target) for i in np.linspace(0, frames - target, sample, dtype=int)]
    if extraction == "full":
        n = min(frames, max_frames or frames)
        out.append((0, (n - 1) // VAE_STRIDE[0] * VAE_STRIDE[0] + 1))
    return list(dict.fromkeys(out))  # uniform windows that coincide are one cache file (named by its start)


@dataclass
class DatasetItems:
    """Counts for one ``[[datasets]]`` entry."""

    videos: int = 0
    usable: int = 0
    too_short: List[str] = field(default_factory=list)
    missing_captions: List[str] = field(default_factory=list)
    unreadable: List[str] = field(default_factory=list)
    missing_files: List[str] = field(default_factory=list)  # jsonl entries that point nowhere
    bad_lines: List[str] = field(default_factory=list)
    resized: List[str] = field(default_factory=list)  # "name WxH -> bucket" that caching will rescale
    rotated: List[str] = field(default_factory=list)  # rotation, mirror, pixel aspect, streams musubi's decoder ignores
    misordered: List[str] = field(default_factory=list)  # frame folders musubi's name sort plays out of order
    hdr: List[str] = field(default_factory=list)  # HLG/PQ videos musubi decodes as if they were SDR
    unreadable_captions: List[str] = field(default_factory=list)  # "name.txt (why)": musubi stops at caching
    bom_captions: List[str] = field(default_factory=list)  # caption files starting with a byte-order mark
    items: int = 0
    stems: List[str] = field(default_factory=list)  # cache keys (file stems), for collision checks


def _probe(path: Path) -> Tuple[int, Tuple[int, int], List[str], Optional[str]]:
    """(frame count, stored (w, h), what a player shows that musubi's decoder does not, HDR kind
    or None) of a video file or frame folder."""
    info = probe_video(path)
    shown = info.display.changes()
    if info.video_streams > 1:
        shown.append(f"{info.video_streams} video streams")
    return info.frame_count, (info.width, info.height), shown, info.hdr


def _image_size(path: Path) -> Tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError) as exc:
        raise UserError(f"cannot be read as an image ({exc})", path=path, fix="re-export the frame") from None


def read_caption(path: Path) -> Tuple[Optional[str], Optional[str]]:
    """(the caption musubi reads from a caption file, why it cannot), from
    :func:`~circle_rotate.prepare.caption.read_caption_file`: a file saved as UTF-16 (Notepad's
    "Unicode") or Latin-1 stops text-encoder caching with a UnicodeDecodeError."""
    try:
        found = read_caption_file(path)
    except UserError as exc:  # a folder, no permission
        return None, exc.problem.removeprefix(f"{exc.path}: ")
    return found.as_musubi_reads, found.not_utf8


def count_video(result: DatasetItems, path: Path, *, caption_ok: bool, params: dict) -> None:
    """Add one video's counts to ``result``."""
    result.videos += 1
    result.stems.append(path.stem if path.is_file() else path.name)
    if not caption_ok:
        result.missing_captions.append(path.name)
    names = musubi_frame_names(path) if path.is_dir() else None
    if names == []:  # ours would count .Png frames; musubi reads none
        result.unreadable.append(f"{path.name} (no frame musubi reads: it takes .png/.jpg/.jpeg/.webp/.bmp/.avif "
                                 "in lower or upper case only)")
        return
    try:
        # a frame folder as musubi reads it (its count may differ from our own listing's: .Png, .avif)
        count, size, shown, hdr = (len(names), _image_size(path / names[0]), [], None) if names else _probe(path)
    except UserError:
        result.unreadable.append(path.name)
        return
    if shown:
        result.rotated.append(f"{path.name} ({', '.join(shown)})")
    if hdr:
        result.hdr.append(f"{path.name} ({hdr})")
    if names:
        # musubi sorts a frame folder's file names as text (media_utils.load_video): 10.png before 2.png
        if sorted(names, key=frame_order) != names:
            result.misordered.append(f"{path.name} ({', '.join(names[:3])}, ...)")
    bucket = nearest_bucket(size, params["resolution"])
    if bucket != size:
        result.resized.append(f"{path.name} {size[0]}x{size[1]} -> {bucket[0]}x{bucket[1]}")
    targets = params["target_frames"]
    end = max(round_4n1(t) for t in targets) if params["frame_extraction"] == "head" and targets else None
    kept = frames_after_fps(count, source_fps=params["source_fps"], end_frame=end)
    n = items_for(kept, targets=targets, extraction=params["frame_extraction"], stride=params["frame_stride"],
                  sample=params["frame_sample"])
    if n:
        result.usable += 1
        result.items += n * params["num_repeats"]
    else:
        result.too_short.append(f"{path.name} ({kept} frames)")


def directory_items(directory: Path, *, caption_extension: Optional[str], params: dict) -> DatasetItems:
    """Counts for a ``video_directory`` (not recursive, musubi's extensions, hidden files passed
    over as musubi's glob passes them: the ``._clip.mp4`` a Mac leaves on a USB drive is no video)."""
    result = DatasetItems()
    exts = set(video_extensions())
    for p in sorted(directory.iterdir()):
        if p.is_file() and p.suffix in exts and not p.name.startswith("."):
            cap = p.with_suffix(caption_extension) if caption_extension else None
            text, why = read_caption(cap) if cap and cap.is_file() else (None, None)
            if why:
                result.unreadable_captions.append(f"{cap.name} ({why})")
            elif text is not None and text.startswith("\ufeff"):
                result.bom_captions.append(cap.name)
            # an empty caption trains unconditioned, as a missing one would fail: neither is a caption
            count_video(result, p, caption_ok=bool(text and text.lstrip("\ufeff").strip()) or why is not None,
                        params=params)
    return result


def jsonl_items(jsonl: Path, *, base: Path, params: dict) -> DatasetItems:
    """Counts for a ``video_jsonl_file``; paths in it resolve against ``base`` (musubi's cwd)."""
    result = DatasetItems()
    for n, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if n == 1 and line.startswith("\ufeff"):  # musubi's json.loads of the line fails on it
            result.bad_lines.append("line 1 (starts with a byte-order mark: save the file as UTF-8 without BOM)")
            continue
        try:
            entry = json.loads(line)
            video = entry["video_path"]
            caption_ok = isinstance(entry.get("caption"), str) and bool(entry["caption"].strip())
        except (json.JSONDecodeError, KeyError, TypeError):
            result.bad_lines.append(f"line {n}")
            continue
        path = Path(video) if Path(video).is_absolute() else base / video
        if not path.exists():
            result.missing_files.append(f"line {n}: {video}")
            continue
        count_video(result, path, caption_ok=caption_ok, params=params)
    return result
