"""Writing musubi-tuner dataset TOMLs for prepared clips, with a comment on every choice.

The TOML is built with tomlkit so that comments survive; paths use forward slashes on
every OS (a backslash in a TOML string is an escape), and ``source_fps`` is written as a
float (musubi-tuner's validator rejects an integer).
"""

from __future__ import annotations

import json
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import tomlkit

from circle_rotate.dataset.items import frames_after_fps, round_4n1
from circle_rotate.kernel.atomic import atomic_path, check_output_path, write_text
from circle_rotate.kernel.buckets import nearest_bucket
from circle_rotate.kernel.errors import ConfigValueError, UserError
from circle_rotate.kernel.input_files import require_file
from circle_rotate.kernel.wan_arch import NATIVE_FPS
from circle_rotate.prepare.manifest import MANIFEST_NAME, accepted_clips
from circle_rotate.prepare.prepared_folder import check_prepared

SUMMARY_NAME = "prepare_summary.json"


@dataclass(frozen=True)
class VideoDatasetEntry:
    """One ``[[datasets]]`` table (video)."""

    cache_directory: str
    video_directory: Optional[str] = None
    video_jsonl_file: Optional[str] = None
    target_frames: Tuple[int, ...] = (81,)
    frame_extraction: str = "head"
    source_fps: Optional[float] = float(NATIVE_FPS)
    num_repeats: int = 1
    note: Optional[str] = None  # a comment above the table
    #: the clips' own lengths, where they differ from what musubi takes after source_fps dropping
    #: (the comments say how one becomes the other); empty: the clips are target_frames long
    clip_frames: Tuple[int, ...] = ()
    relative_paths: bool = False  # the jsonl's video_path values are relative to training's folder


@dataclass(frozen=True)
class DatasetConfig:
    """A whole dataset config: ``[general]`` plus the datasets."""

    datasets: Tuple[VideoDatasetEntry, ...]
    resolution: Tuple[int, int] = (832, 480)
    enable_bucket: bool = True
    bucket_no_upscale: bool = True
    batch_size: int = 1
    caption_extension: Optional[str] = ".txt"
    header: Tuple[str, ...] = field(default_factory=tuple)
    #: "name WxH -> BxH" of the clips musubi's caching rescales to their bucket of ``resolution``;
    #: None when the clips' sizes are not known (the comment then claims nothing about them)
    rescaled: Optional[Tuple[str, ...]] = None


#: Comment lines are wrapped to this width (the values they explain vary in length).
_COMMENT_WIDTH = 100


def _comment(table, text: str) -> None:
    """Add ``text`` to ``table`` as comment lines of at most :data:`_COMMENT_WIDTH` characters."""
    for line in textwrap.wrap(text, _COMMENT_WIDTH - 2, break_long_words=False, break_on_hyphens=False):
        table.add(tomlkit.comment(line))


def _frames_comment(entry: VideoDatasetEntry) -> str:
    """The comment on target_frames, from the values: what the clips hold and what musubi takes."""
    fps = entry.source_fps
    if not entry.clip_frames or fps is None or fps == NATIVE_FPS:
        return ("Clips are exactly this long (4n+1: Wan's VAE packs 4 frames per latent after the first); "
                + (f"'{entry.frame_extraction}' takes each clip whole, once." if entry.frame_extraction == "head" else
                   f"'{entry.frame_extraction}' extraction."))
    return (f"The clips hold {', '.join(map(str, entry.clip_frames))} frames at {fps:g} fps; musubi drops frames to "
            f"bring them to {NATIVE_FPS} fps before it counts them, which leaves "
            f"{', '.join(map(str, entry.target_frames))} (4n+1: Wan's VAE packs 4 frames per latent after the first). "
            f"'{entry.frame_extraction}' takes those frames of each clip, once, from its first frame.")


def _fps_comment(fps: float) -> str:
    """The comment on source_fps, from its value."""
    if fps == NATIVE_FPS:
        return (f"The clips' frame rate, as a float (musubi rejects an integer). At {NATIVE_FPS}.0, Wan2.2's own rate, "
                "musubi drops no frames.")
    return (f"The clips' frame rate, as a float (musubi rejects an integer). musubi keeps {NATIVE_FPS} of every "
            f"{fps:g} frames to reach Wan2.2's {NATIVE_FPS} fps (clips prepared at --fps {NATIVE_FPS} lose none).")


def _table(entry: VideoDatasetEntry):
    t = tomlkit.table()
    if entry.video_directory is not None:
        _comment(t, "The clips (forward slashes on every OS; a backslash in a TOML string is an escape).")
        t.add("video_directory", entry.video_directory)
    else:
        _comment(t, "One JSON line per clip: video_path and caption (circle-rotate caption --jsonl)"
                    + ("; its paths are relative to the folder training runs from." if entry.relative_paths else "."))
        t.add("video_jsonl_file", entry.video_jsonl_file)
    _comment(t, "Latent and text-encoder caches: one folder per dataset, clip file names unique in it.")
    t.add("cache_directory", entry.cache_directory)
    _comment(t, _frames_comment(entry))
    t.add("target_frames", list(entry.target_frames))
    t.add("frame_extraction", entry.frame_extraction)
    if entry.source_fps is not None:
        _comment(t, _fps_comment(float(entry.source_fps)))
        t.add("source_fps", float(entry.source_fps))
    t.add("num_repeats", entry.num_repeats)
    return t


def _resolution_comment(cfg: DatasetConfig) -> str:
    """The comment on resolution, from what the clips are: at their buckets, or rescaled by musubi."""
    first = ("Bucket area (width x height). musubi's video caching scales each clip to the bucket of this area nearest "
             "its aspect")
    flags = "enable_bucket and bucket_no_upscale only group clips by size in training."
    if cfg.rescaled is None:
        return f"{first}. {flags}"
    if not cfg.rescaled:
        return f"{first}; prepare cut the clips to exactly those sizes, so nothing is resampled twice. {flags}"
    w, h = cfg.resolution
    return (f"{first}. {len(cfg.rescaled)} clip(s) are not at their bucket, so musubi rescales them (first: "
            f"{cfg.rescaled[0]}); `circle-rotate prepare --resolution {w}x{h}` would cut them to it from the source "
            f"(--upscale where a source is smaller), resampling once. {flags}")


def _batch_comment(batch_size: int) -> str:
    """The comment on batch_size, from its value."""
    if batch_size == 1:
        return "One clip per step: 81 frames at 480p already fill a 24 GB GPU with block swap."
    return (f"{batch_size} clips per step (musubi batches clips of the same bucket and length): about {batch_size} "
            "times one clip's activation memory; 81 frames at 480p alone fill a 24 GB GPU with block swap.")


def render_dataset_config(cfg: DatasetConfig) -> str:
    """The TOML text of ``cfg``, commented."""
    doc = tomlkit.document()
    for line in cfg.header:
        doc.add(tomlkit.comment(line))
    if cfg.header:
        doc.add(tomlkit.nl())
    gen = tomlkit.table()
    _comment(gen, _resolution_comment(cfg))
    gen.add("resolution", list(cfg.resolution))
    gen.add("enable_bucket", cfg.enable_bucket)
    gen.add("bucket_no_upscale", cfg.bucket_no_upscale)
    _comment(gen, _batch_comment(cfg.batch_size))
    gen.add("batch_size", cfg.batch_size)
    if cfg.caption_extension is not None:
        _comment(gen, "Each clip's caption sits next to it as <clip><caption_extension>.")
        gen.add("caption_extension", cfg.caption_extension)
    doc.add("general", gen)
    datasets = tomlkit.aot()
    for entry in cfg.datasets:
        datasets.append(_table(entry))
    doc.add("datasets", datasets)
    return tomlkit.dumps(doc)


def write_dataset_config(path: Path, cfg: DatasetConfig, *, force: bool = False, inputs: Sequence[Path] = (),
                         accept: Optional[Callable[[Path], bool]] = None) -> Optional[Path]:
    """Write ``cfg`` to ``path`` atomically.

    Args:
        inputs: the files the config was made from (never replaced, ``force`` or not).
        accept: called with the written temporary file (next to ``path``) before it is published;
            when it returns False nothing is published (a config check-config rejects is no output).

    Returns:
        ``path``, or None when ``accept`` refused it.

    Raises:
        UserError: ``path`` exists and ``force`` is off, or is one of ``inputs``.
    """
    out = check_output_path(path, inputs=inputs, force=force)
    if accept is None:
        write_text(out, render_dataset_config(cfg))
        return out
    try:
        with atomic_path(out) as tmp:
            tmp.write_bytes(render_dataset_config(cfg).encode("utf-8"))
            if not accept(tmp):
                raise _Rejected
    except _Rejected:
        return None
    return out


class _Rejected(Exception):
    """``accept`` refused the written config: atomic_path removes the temporary file."""


def toml_path(path: Path, relative_to: Optional[Path]) -> str:
    """How a path is written in a TOML: forward slashes; absolute, or relative to the
    folder training will run from (musubi resolves relative paths against its cwd)."""
    p = Path(path).absolute()
    if relative_to is not None:
        return Path(os.path.relpath(p, Path(relative_to).absolute())).as_posix()
    return p.as_posix()


@dataclass(frozen=True)
class _Facts:
    """What a prepared folder's manifest and summary say about its accepted clips."""

    frames: Tuple[int, ...]  # the clips' own lengths
    fps: float
    resolution: Tuple[int, int]  # the bucket area to train at
    count: int
    sizes: Tuple[Tuple[str, int, int], ...]  # (clip file name, width, height)
    qc: Optional[str]  # prepare's --qc, None where no summary says


#: What each ``prepare --qc`` did to the clips, for the config's header.
_QC_SAID = {"strict": "checked to orbit by `circle-rotate prepare` (--qc strict)",
            "lenient": "kept by `circle-rotate prepare --qc lenient` (static and cut clips dropped, the rest unchecked)",
            "off": "kept by `circle-rotate prepare --qc off` (no orbit check)"}


def _prepared_facts(folder: Path) -> _Facts:
    """The frame counts, fps, bucket resolution, clip count, clip sizes and QC mode of a prepared folder."""
    manifest = folder / MANIFEST_NAME
    clips = accepted_clips(check_prepared(folder))
    if not clips:
        raise UserError("the manifest lists no accepted clips", path=manifest,
                        fix="check prepare_summary.json; try --qc lenient or more footage")
    frames = tuple(sorted({int(c["frames"]) for c in clips}))
    rates = {float(c["fps"]) for c in clips}
    if len(rates) > 1:
        raise UserError(f"clips have different frame rates {sorted(rates)}", path=manifest,
                        fix="prepare them again with one --fps")
    resolution = max(((c["width"], c["height"]) for c in clips), key=lambda wh: wh[0] * wh[1])
    summary = folder / SUMMARY_NAME
    qc = None
    if summary.exists():
        try:
            options = json.loads(summary.read_text(encoding="utf-8")).get("options") or {}
            size = options.get("size") or {}
        except (ValueError, AttributeError):
            raise UserError("not a prepare summary (broken JSON)", path=summary,
                            fix="delete it; circle-rotate prepare writes it again") from None
        qc = options.get("qc") if options.get("qc") in _QC_SAID else None
        asked = (int(size["width"]), int(size["height"])) if size.get("width") and size.get("height") else None
        # prepare does not scale sources up (without --upscale): clips all under the size asked
        # for are trained at their own size, which musubi's caching would otherwise blow up
        if asked and resolution[0] * resolution[1] >= 0.9 * asked[0] * asked[1]:
            resolution = asked
    sizes = tuple((Path(c["clip"]).name, int(c["width"]), int(c["height"])) for c in clips)
    return _Facts(frames, rates.pop(), tuple(resolution), len(clips), sizes, qc)


def musubi_target_frames(frames: Sequence[int], fps: float, *, path: Optional[Path] = None) -> Tuple[int, ...]:
    """The target_frames that take clips of ``frames`` frames at ``fps`` whole: musubi first drops
    frames to reach Wan's 16 fps (``media_utils.load_video`` with source_fps), then cuts targets of
    4n+1 frames from what is left, so a 121-frame 24 fps clip gives 81, not 121.

    Raises:
        UserError: ``fps`` under 16 (musubi's source_fps only drops frames: with 'head' it reads a clip
            only up to the target's index, which a slower clip reaches with fewer frames than the target,
            so no clip ever gives an item), or clips that leave fewer frames than a clip's shortest orbit.
    """
    from circle_rotate.prepare.options import MIN_FRAMES

    again = f"prepare them again with --fps {NATIVE_FPS} (prepare resamples by timestamp, repeating frames where it must)"
    if fps < NATIVE_FPS:
        raise UserError(f"the clips are at {fps:g} fps, under Wan2.2's {NATIVE_FPS}: musubi's source_fps only drops "
                        f"frames, never repeats them, so it would take no clip", path=path, fix=again)
    targets = tuple(sorted({round_4n1(frames_after_fps(f, source_fps=fps)) for f in frames}))
    if targets[0] < MIN_FRAMES:
        raise UserError(f"{min(frames)}-frame clips at {fps:g} fps keep {targets[0]} frame(s) once musubi drops frames "
                        f"to {NATIVE_FPS} fps: no orbit left", path=path, fix=f"{again}, or with more --frames")
    return targets


def _check_settings(*, num_repeats: int, batch_size: int, caption_extension: str,
                    resolution: Optional[Sequence[int]], relative_to: Optional[Path],
                    cache_directory: Optional[Path] = None) -> None:
    """Every option checked before anything is read or written (a config is written last)."""
    if num_repeats < 1:
        raise ConfigValueError("--repeats", num_repeats, "must be 1 or more (musubi's num_repeats)", fix="e.g. --repeats 1")
    if batch_size < 1:
        raise ConfigValueError("--batch-size", batch_size, "must be 1 or more", fix="e.g. --batch-size 1")
    if not caption_extension.startswith(".") or "/" in caption_extension:
        raise ConfigValueError("--ext", caption_extension, "must start with '.' (musubi appends it to the clip's name)",
                               fix=f"write --ext .{caption_extension.lstrip('.')}")
    if resolution is not None and min(resolution) < 16:
        raise ConfigValueError("--resolution", "x".join(map(str, resolution)), "has a side under 16 pixels",
                               fix="e.g. --resolution 832x480")
    if cache_directory is not None and os.path.lexists(cache_directory) and not Path(cache_directory).is_dir():
        raise ConfigValueError("--cache", str(cache_directory), "is a file; musubi's cache_directory is a folder",
                               fix="give a folder (made if missing), e.g. --cache PREPARED_DIR/cache")
    if relative_to is not None and not Path(relative_to).is_dir():
        raise ConfigValueError("--relative-to", str(relative_to), "is not an existing folder",
                               fix="give the folder training will run from, e.g. --relative-to .")


def _check_jsonl_paths(jsonl: Path, *, relative_to: Optional[Path], folder: Path) -> None:
    """Refuse a JSONL of absolute video_path values under a config written ``--relative-to``: the
    config would move with its folder and the JSONL's paths would not (musubi opens each video_path
    as written, from its working folder). Lines that do not parse are check-config's to name."""
    if relative_to is None:
        return
    absolute = []
    for line in Path(jsonl).read_text(encoding="utf-8-sig").splitlines():
        try:
            video = json.loads(line)["video_path"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(video, str) and (Path(video).is_absolute() or Path(video).as_posix().startswith("/")):
            absolute.append(video)
    if absolute:
        raise UserError(f"{len(absolute)} video_path value(s) in it are absolute (first: {absolute[0]}), while "
                        f"--relative-to {relative_to} makes the config's own paths relative: moved, the config would "
                        "find the JSONL but not the clips", path=jsonl,
                        fix=f"delete it and write it again relative to the same folder: circle-rotate caption {folder} "
                            f"--jsonl {jsonl} --relative-to {relative_to}; or leave out --relative-to")


def config_from_prepared(folder: Path, *, jsonl: Optional[Path] = None, cache_directory: Optional[Path] = None,
                         resolution: Optional[Sequence[int]] = None, num_repeats: int = 1, batch_size: int = 1,
                         caption_extension: str = ".txt", relative_to: Optional[Path] = None) -> DatasetConfig:
    """The dataset config for a folder ``prepare`` wrote.

    Args:
        folder: the prepared folder (``manifest.jsonl``, ``videos/``).
        jsonl: use this ``video_jsonl_file`` (from ``caption --jsonl``) instead of the folder.
        cache_directory: default ``<folder>/cache``.
        resolution: bucket area (default: prepare's ``--resolution``).
        num_repeats, batch_size: musubi's settings of the same names.
        caption_extension: caption files' extension (directory datasets).
        relative_to: write paths relative to this folder instead of absolute.

    Raises:
        UserError: no manifest, no accepted clips, mixed frame rates, clips musubi would cut no
            target from (under 16 fps), a missing jsonl, or one of absolute paths with ``relative_to``.
    """
    folder = Path(folder)
    _check_settings(num_repeats=num_repeats, batch_size=batch_size, caption_extension=caption_extension,
                    resolution=resolution, relative_to=relative_to, cache_directory=cache_directory)
    facts = _prepared_facts(folder)
    fps = facts.fps
    # what musubi counts after its source_fps dropping, not the clips' own length: at 24 fps a
    # 121-frame clip is 81 frames to it, and target_frames = [121] would skip every clip
    targets = musubi_target_frames(facts.frames, fps, path=folder / MANIFEST_NAME)
    if jsonl is not None:
        require_file(jsonl, what="video_jsonl_file", fix="write it with circle-rotate caption --jsonl FILE")
        _check_jsonl_paths(jsonl, relative_to=relative_to, folder=folder)
    cache = toml_path(cache_directory or folder / "cache", relative_to)
    entry = VideoDatasetEntry(
        cache_directory=cache, video_directory=None if jsonl else toml_path(folder / "videos", relative_to),
        video_jsonl_file=toml_path(jsonl, relative_to) if jsonl else None, target_frames=targets, source_fps=fps,
        num_repeats=num_repeats, clip_frames=facts.frames if targets != facts.frames else (),
        relative_paths=bool(jsonl) and relative_to is not None)
    area = tuple(resolution or facts.resolution)
    rescaled = []
    for name, w, h in facts.sizes:
        bucket = nearest_bucket((w, h), area)
        if bucket != (w, h):
            rescaled.append(f"{name} {w}x{h} -> {bucket[0]}x{bucket[1]}")
    kept = "" if targets == facts.frames else f" (musubi takes {', '.join(map(str, targets))} at {NATIVE_FPS} fps)"
    header = (f"musubi-tuner dataset config for Wan2.2 I2V-A14B, written by `circle-rotate config` for {folder.name}/:",
              f"{facts.count} clip(s) of {', '.join(map(str, facts.frames))} frames at {fps:g} fps{kept}, "
              f"{_QC_SAID.get(facts.qc, 'listed as accepted in manifest.jsonl')}.",
              "Check it:  circle-rotate check-config <this file>",
              "Use it:    --dataset_config <this file> (wan_cache_latents.py, wan_cache_text_encoder_outputs.py, "
              "wan_train_network.py)")
    return DatasetConfig(datasets=(entry,), resolution=area, batch_size=batch_size,
                         caption_extension=None if jsonl else caption_extension, header=header,
                         rescaled=tuple(rescaled))
