"""Which cache files musubi-tuner will write for a dataset config, how big, and which exist.

Why one cache serves both experts (musubi-tuner 0.3.4): ``wan_cache_latents.py``
(``encode_and_save_batch``) encodes each clip with the VAE only, adding the first-frame
image latent with ``--i2v`` (and CLIP features with ``--clip``, Wan2.1 only);
``wan_cache_text_encoder_outputs.py`` encodes captions with the T5 only. Neither script has a
``--dit`` option. The file names (``image_video_dataset.py``: ``get_latent_cache_path``,
``get_text_encoder_output_cache_path``) carry the clip, window, size and the architecture
"wan", never the expert, and ``wan_train_network.py`` globs the same files whichever
``--dit`` it trains.

The layout, read from ``dataset/image_video_dataset.py`` and ``dataset/cache_io.py``:

- latents: ``<cache_dir>/<clip stem>_<start:05d>-<frames:03d>_<W:04d>x<H:04d>_wan.safetensors``
  per frame window (``frame_extraction``), W x H the bucket size (the "original size" musubi
  puts in the name is that of frames its loader already resized); tensors
  ``latents_FxHxW_<dtype>`` (16 channels) and, with ``--i2v``, ``latents_image_FxHxW_<dtype>``
  (4 mask + 16 image channels), at the bucket resolution / 8 and 1 + (frames - 1) / 4 latent
  frames, in the VAE dtype (bf16 by default);
- text: ``<cache_dir>/<clip stem>_wan_te.safetensors`` with ``varlen_t5_bf16`` of shape
  (tokens, 4096) and the caption in the ``caption1`` metadata.

Datasets are resolved by musubi's own config loader (``BlueprintGenerator``), so defaults
(``cache_directory`` = ``video_directory``, target frames rounded to 4n+1, ...) are musubi's.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

# musubi's fps frame dropping, counted; a frame folder's frames, as musubi lists them
from circle_rotate.dataset.items import frame_windows, frames_after_fps, musubi_frame_names, read_caption
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.musubi_env import import_musubi
from circle_rotate.kernel.video_io import is_frame_folder, probe_video
from circle_rotate.kernel.wan_arch import I2V_EXTRA_CHANNELS, VAE_LATENT_CHANNELS, VAE_STRIDE, latent_frames

logger = logging.getLogger(__name__)

ARCH = "wan"
T5_DIM = 4096
T5_MAX_TOKENS = 512
_HEADER_BYTES = 1024  # safetensors JSON header and metadata, rounded up


@dataclass(frozen=True)
class DatasetPlan:
    """One ``[[datasets]]`` entry as musubi resolves it."""

    index: int
    cache_directory: Path
    section: Tuple[Tuple[str, object], ...]  # the user's keys for this dataset, general keys merged in


@dataclass(frozen=True)
class CacheItem:
    """One clip and the cache files musubi makes of it."""

    dataset: int
    video: Path
    caption: Optional[str]  # None: no caption (text caching would fail)
    latent_files: Tuple[Path, ...]
    te_file: Path
    latent_bytes: int
    te_bytes: int
    cost: float  # relative encoding work (pixels x frames), for balancing shards
    windows: Tuple[Tuple[int, int], ...] = ()  # (start, frames) per latent file
    bucket: Tuple[int, int] = (0, 0)  # (width, height) musubi resizes the clip to


@dataclass(frozen=True)
class CachePlan:
    config: Path
    datasets: Tuple[DatasetPlan, ...]
    items: Tuple[CacheItem, ...]

    @property
    def total_bytes(self) -> int:
        return sum(i.latent_bytes + i.te_bytes for i in self.items)


def latent_cache_bytes(width: int, height: int, frames: int, *, itemsize: int = 2) -> int:
    """Bytes of one ``--i2v`` latent cache file for a window of ``frames`` at the bucket size."""
    cells = latent_frames(frames) * (height // VAE_STRIDE[1]) * (width // VAE_STRIDE[2])
    return (VAE_LATENT_CHANNELS + I2V_EXTRA_CHANNELS) * cells * itemsize + _HEADER_BYTES


def text_cache_bytes(caption: Optional[str]) -> int:
    """Upper estimate of one text cache: at most one T5 token per character, capped at 512."""
    tokens = min(T5_MAX_TOKENS, len(caption or "") + 2)
    return tokens * T5_DIM * 2 + _HEADER_BYTES


@contextlib.contextmanager
def _quiet_musubi_logs():
    """musubi logs every dataset's settings at INFO each time a config is loaded, and its verdict
    on a bad one at ERROR in two languages, before raising the error we turn into one line: keep
    both out of our output."""
    musubi_logger = logging.getLogger("musubi_tuner")
    level = musubi_logger.level
    musubi_logger.setLevel(max(level, logging.CRITICAL))
    try:
        yield
    finally:
        musubi_logger.setLevel(level)


def _musubi_datasets(config: Path) -> Tuple[list, dict]:
    if not Path(config).is_file():
        raise UserError("not found" if not Path(config).exists() else "is a folder, not a dataset TOML", path=config,
                        fix="pass the dataset TOML file (circle-rotate config writes one)")
    utils = import_musubi("dataset.config_utils")
    with _quiet_musubi_logs():
        return _load_datasets(utils, config)


def _load_datasets(utils, config: Path) -> Tuple[list, dict]:
    try:
        user_config = utils.load_user_config(str(config))
        blueprint = utils.BlueprintGenerator(utils.ConfigSanitizer()).generate(
            user_config, argparse.Namespace(debug_dataset=False), architecture=ARCH)
        return list(utils.generate_dataset_group_by_blueprint(blueprint.dataset_group).datasets), user_config
    except Exception as exc:  # voluptuous, ValueError, TOML errors: musubi's own verdict on the file
        raise UserError(f"musubi-tuner cannot load this dataset config: {' '.join(str(exc).split())}", path=config,
                        fix=f"run `circle-rotate check-config {config}` for each problem and its fix") from None


def _sources(ds) -> List[Tuple[Path, Optional[str]]]:
    src = ds.datasource
    if hasattr(src, "video_paths"):
        out = []
        for video in src.video_paths:
            # musubi: os.path.splitext(video)[0] + caption_extension (datasources.py get_caption)
            caption_file = Path(os.path.splitext(video)[0] + ds.caption_extension) if ds.caption_extension else None
            caption, why = read_caption(caption_file) if caption_file and caption_file.is_file() else (None, None)
            if why:
                raise UserError(f"musubi cannot read this caption: {why}", path=caption_file,
                                fix="save it as UTF-8 (or run circle-rotate caption --force to write it again)")
            out.append((Path(video), caption))
        return out
    return [(Path(d["video_path"]), d.get("caption")) for d in src.data]


def _decoded_size_and_frames(video: Path) -> Tuple[int, int, int]:
    if video.is_dir() or is_frame_folder(video):
        from PIL import Image

        # musubi's own listing: it passes over hidden files (the ._frame.png a Mac leaves on a
        # USB drive) and matches suffixes by its own list, and its frame count names the caches
        files = [video / name for name in musubi_frame_names(video)]
        if not files:
            raise UserError("frame folder has no images", path=video, fix="remove it from the dataset")
        with Image.open(files[0]) as im:
            return im.width, im.height, len(files)
    info = probe_video(video, count_frames=True)
    return info.width, info.height, info.frame_count


def _item(ds, index: int, video: Path, caption: Optional[str], selector) -> CacheItem:
    width, height, decoded = _decoded_size_and_frames(video)
    end = max(ds.target_frames) if ds.frame_extraction == "head" else None
    frames = frames_after_fps(decoded, source_fps=ds.source_fps, target_fps=ds.target_fps, end_frame=end)
    windows = frame_windows(frames, extraction=ds.frame_extraction, target_frames=ds.target_frames,
                            stride=ds.frame_stride or 1, sample=ds.frame_sample or 1, max_frames=ds.max_frames)
    bucket_w, bucket_h = selector.get_bucket_resolution((width, height))
    cache = Path(ds.cache_directory)
    stem = video.stem if video.is_file() else video.name
    # The size in the name is the decoded frames' size, and musubi's loader resizes while decoding: the bucket.
    latents = tuple(cache / f"{stem}_{pos:05d}-{n:03d}_{bucket_w:04d}x{bucket_h:04d}_{ARCH}.safetensors"
                    for pos, n in windows)
    return CacheItem(dataset=index, video=video, caption=caption, latent_files=latents,
                     te_file=cache / f"{stem}_{ARCH}_te.safetensors",
                     latent_bytes=sum(latent_cache_bytes(bucket_w, bucket_h, n) for _, n in windows),
                     te_bytes=text_cache_bytes(caption), cost=float(bucket_w * bucket_h * frames),
                     windows=tuple(windows), bucket=(bucket_w, bucket_h))


def plan_cache(config: Path) -> CachePlan:
    """Resolve ``config`` with musubi's loader and list every cache file it implies.

    Raises:
        UserError: musubi-tuner is missing or rejects the config, a dataset is an image
            dataset (not planned here), or a clip cannot be probed.
    """
    config = Path(config)
    datasets, user_config = _musubi_datasets(config)
    bucket = import_musubi("dataset.bucket")
    general = dict(user_config.get("general", {}))
    plans, items = [], []
    for index, ds in enumerate(datasets):
        if not hasattr(ds, "target_frames"):
            raise UserError(f"dataset {index} is an image dataset; cache planning covers video datasets", path=config,
                            fix="cache it with musubi's wan_cache_latents.py directly")
        section = {**general, **user_config["datasets"][index]}
        plans.append(DatasetPlan(index, Path(ds.cache_directory), tuple(section.items())))
        # The cache pass builds its selector like this (retrieve_latent_cache_batches): buckets on.
        selector = bucket.BucketSelector(ds.resolution, architecture=ARCH)
        items += [_item(ds, index, video, caption, selector) for video, caption in _sources(ds)]
    return CachePlan(config=config, datasets=tuple(plans), items=tuple(items))
