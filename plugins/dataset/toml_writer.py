"""Writing musubi-tuner dataset TOMLs for prepared clips, with a comment on every choice.

The TOML is built with tomlkit so that comments survive; paths use forward slashes on
every OS (a backslash in a TOML string is an escape), and ``source_fps`` is written as a
float (musubi-tuner's validator rejects an integer).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import tomlkit

from circle_rotate.kernel.atomic import atomic_path, check_output_path, write_text
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


def _table(entry: VideoDatasetEntry):
    t = tomlkit.table()
    if entry.video_directory is not None:
        t.add(tomlkit.comment("The clips (forward slashes on every OS; a backslash in a TOML string is an escape)."))
        t.add("video_directory", entry.video_directory)
    else:
        t.add(tomlkit.comment("One JSON line per clip: video_path and caption (circle-rotate caption --jsonl)."))
        t.add("video_jsonl_file", entry.video_jsonl_file)
    t.add(tomlkit.comment("Latent and text-encoder caches: one folder per dataset, clip file names unique in it."))
    t.add("cache_directory", entry.cache_directory)
    t.add(tomlkit.comment("Clips are exactly this long (4n+1: Wan's VAE packs 4 frames per latent after the first);"))
    t.add(tomlkit.comment("'head' takes each clip whole, once."))
    t.add("target_frames", list(entry.target_frames))
    t.add("frame_extraction", entry.frame_extraction)
    if entry.source_fps is not None:
        t.add(tomlkit.comment(f"The clips' frame rate, as a float (musubi rejects an integer). At {NATIVE_FPS}.0, Wan2.2's "
                              "own rate, musubi drops no frames."))
        t.add("source_fps", float(entry.source_fps))
    t.add("num_repeats", entry.num_repeats)
    return t


def render_dataset_config(cfg: DatasetConfig) -> str:
    """The TOML text of ``cfg``, commented."""
    doc = tomlkit.document()
    for line in cfg.header:
        doc.add(tomlkit.comment(line))
    if cfg.header:
        doc.add(tomlkit.nl())
    gen = tomlkit.table()
    gen.add(tomlkit.comment("Bucket area (width x height). musubi's video caching scales each clip to the bucket of this"))
    gen.add(tomlkit.comment("area nearest its aspect; prepare cut the clips to exactly those sizes, so nothing is"))
    gen.add(tomlkit.comment("resampled twice. enable_bucket and bucket_no_upscale only group clips by size in training."))
    gen.add("resolution", list(cfg.resolution))
    gen.add("enable_bucket", cfg.enable_bucket)
    gen.add("bucket_no_upscale", cfg.bucket_no_upscale)
    gen.add(tomlkit.comment("One clip per step: 81 frames at 480p already fill a 24 GB GPU with block swap."))
    gen.add("batch_size", cfg.batch_size)
    if cfg.caption_extension is not None:
        gen.add(tomlkit.comment("Each clip's caption sits next to it as <clip><caption_extension>."))
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


def _prepared_facts(folder: Path) -> Tuple[Tuple[int, ...], float, Tuple[int, int], int]:
    """(frame counts, fps, bucket resolution, clip count) of a prepared folder."""
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
    if summary.exists():
        try:
            size = (json.loads(summary.read_text(encoding="utf-8")).get("options") or {}).get("size") or {}
        except (ValueError, AttributeError):
            raise UserError("not a prepare summary (broken JSON)", path=summary,
                            fix="delete it; circle-rotate prepare writes it again") from None
        asked = (int(size["width"]), int(size["height"])) if size.get("width") and size.get("height") else None
        # prepare does not scale sources up (without --upscale): clips all under the size asked
        # for are trained at their own size, which musubi's caching would otherwise blow up
        if asked and resolution[0] * resolution[1] >= 0.9 * asked[0] * asked[1]:
            resolution = asked
    return frames, rates.pop(), tuple(resolution), len(clips)


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
        UserError: no manifest, no accepted clips, mixed frame rates, or a missing jsonl.
    """
    folder = Path(folder)
    _check_settings(num_repeats=num_repeats, batch_size=batch_size, caption_extension=caption_extension,
                    resolution=resolution, relative_to=relative_to, cache_directory=cache_directory)
    frames, fps, res, count = _prepared_facts(folder)
    if jsonl is not None:
        require_file(jsonl, what="video_jsonl_file", fix="write it with circle-rotate caption --jsonl FILE")
    cache = toml_path(cache_directory or folder / "cache", relative_to)
    entry = VideoDatasetEntry(
        cache_directory=cache, video_directory=None if jsonl else toml_path(folder / "videos", relative_to),
        video_jsonl_file=toml_path(jsonl, relative_to) if jsonl else None, target_frames=frames, source_fps=fps,
        num_repeats=num_repeats)
    header = (f"musubi-tuner dataset config for Wan2.2 I2V-A14B, written by `circle-rotate config` for {folder.name}/:",
              f"{count} clip(s) of {', '.join(map(str, frames))} frames at {fps:g} fps, checked to orbit by "
              "`circle-rotate prepare`.",
              "Check it:  circle-rotate check-config <this file>",
              "Use it:    --dataset_config <this file> (wan_cache_latents.py, wan_cache_text_encoder_outputs.py, "
              "wan_train_network.py)")
    return DatasetConfig(datasets=(entry,), resolution=tuple(resolution or res), batch_size=batch_size,
                         caption_extension=None if jsonl else caption_extension, header=header)
