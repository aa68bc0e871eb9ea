"""Decode a video once and share its frames between every metric.

The reference implementation (``Jklaity/Circle-Rotate``) opens the file again for each
metric; here one :class:`Clip` holds the RGB frames and their grey versions, and every
metric reads from it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Union

import cv2
import numpy as np

from circle_rotate.eval.fades import Levels, frame_levels, is_blank
from circle_rotate.eval.pingpong import pingpong_length
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.video_io import GIF_CUT_NOTE, animations_in, decode_all, frame_files

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: Frames the subject-drift family of metrics samples (the paper's ``num_frames``).
DRIFT_SAMPLES = 16


@dataclass(frozen=True)
class Clip:
    """A decoded video: RGB frames, their grey versions and the frame rate."""

    path: str
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    grey: np.ndarray  # (T, H, W) uint8, cv2 RGB2GRAY (the reference's BGR2GRAY on BGR frames)
    fps: float
    notes: tuple = ()  # how the file was shown (kernel.video_io.shown_notes)

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def count(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return int(self.frames.shape[2]), int(self.frames.shape[1])

    def sampled(self, count: int = DRIFT_SAMPLES) -> np.ndarray:
        return sample_indices(self.count, count)

    @cached_property
    def levels(self) -> Levels:
        """Each frame's contrast and brightness, computed once: the blank check and the fade search read them."""
        return frame_levels(self.grey)


def sample_indices(n: int, count: int = DRIFT_SAMPLES) -> np.ndarray:
    """The reference's frame sampling: ``np.linspace(0, n - 1, count).astype(int)``.

    With fewer than ``count`` frames some indices repeat, exactly as in the reference.
    """
    return np.linspace(0, n - 1, count).astype(int)


def to_grey(frame: np.ndarray) -> np.ndarray:
    """cv2's BT.601 grey (what the reference's ``cv2.COLOR_BGR2GRAY`` gives on BGR frames)."""
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


#: Smallest width and height the metrics measure (measured: 24 works, 22 fails in the optical flow).
MIN_SIDE = 24


def clip_from_frames(frames: np.ndarray, *, fps: float, path: str = "<frames>") -> Clip:
    """Wrap frames already in memory (tests, other tools) as a :class:`Clip`.

    Raises:
        UserError: fewer than two frames, not (T, H, W, 3) uint8, or blank (every frame one
            flat colour).
    """
    frames = np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise UserError(f"frames must be (T, H, W, 3) uint8, got {frames.dtype} {frames.shape}", path=path)
    if frames.shape[0] < 2:
        raise UserError(f"has {frames.shape[0]} frame(s); the metrics compare frames, so at least 2 are needed",
                        path=path, fix="evaluate a video, not a still image")
    if min(frames.shape[1:3]) < MIN_SIDE:  # OpenCV's DIS flow refuses smaller images at its coarsest level
        raise UserError(f"is {frames.shape[2]}x{frames.shape[1]}; the metrics need at least {MIN_SIDE} pixels a side",
                        path=path, fix="evaluate the full-size video, not a thumbnail")
    clip = Clip(str(path), frames, np.stack([to_grey(f) for f in frames]), float(fps))
    if is_blank(clip.levels):
        # a sampler that produced NaNs decodes to black: drift 0 and a perfect PSNR would score it best
        raise UserError("every frame is one flat colour: there is no picture to measure", path=path,
                        fix="regenerate the video (a black one usually means NaNs in the sampler: run the model "
                            "in bf16 or fp32, not fp16), or leave it out")
    return clip


def load_clip(path: PathLike, *, default_fps: float = 16.0) -> Clip:
    """Decode a video file or frame folder once.

    Args:
        path: mp4/webm/gif/..., an animated WebP or PNG, or a folder of image frames.
        default_fps: used when the container states no rate (frame folders).

    Returns:
        The decoded :class:`Clip`.

    Raises:
        UserError: missing, corrupt, unreadable, no frames, a single frame, or blank.
    """
    p = Path(path)
    if not p.exists():
        raise UserError("video not found", path=p, fix="check the path")
    if p.is_dir():
        # what is_frame_folder asks, each image file opened once: no animation among the frames
        if animations_in(p):
            raise UserError("folder holds animated images, which are videos, not one video's frames", path=p,
                            fix="pass the folder to `circle-rotate eval` as a folder of videos")
        if not frame_files(p):
            raise UserError("folder holds no image frames", path=p, fix="pass a video file or a folder of frames")
    frames, rate, notes = decode_all(p)
    cut = [n for n in notes if n.startswith(GIF_CUT_NOTE)]
    if cut and len(frames) < 2:
        raise UserError(cut[0], path=p, fix="download or export it again")
    if not frames:
        raise UserError("video has no decodable frames", path=p, fix="check the file plays; re-export it")
    sizes = {f.shape for f in frames}
    if len(sizes) > 1:
        odd = next(i for i, f in enumerate(frames) if f.shape != frames[0].shape)
        which = f"; first: {frame_files(p)[odd].name}" if p.is_dir() else f"; first: frame {odd}"
        raise UserError(f"frames differ in size ({', '.join(str(s[1]) + 'x' + str(s[0]) for s in sorted(sizes))}"
                        f"{which} is {frames[odd].shape[1]}x{frames[odd].shape[0]})",
                        path=p, fix="re-export the video (or frames) at one size")
    fps = rate if rate > 0 else default_fps
    if rate <= 0:
        notes = [*notes, f"no frame rate stated (a folder of frames): read at {default_fps:g} fps, which speeds in "
                         f"deg/s scale with"]
    clip = clip_from_frames(np.stack(frames), fps=fps, path=str(p))
    forward = pingpong_length(clip.grey)
    if forward is not None:  # VideoHelperSuite's pingpong: the camera's turn back is the editing's
        notes = [*notes, f"a ping-pong video (played forward then back): measured on its first half "
                         f"({forward} of {clip.count} frames)"]
        clip = dataclasses.replace(clip, frames=clip.frames[:forward], grey=clip.grey[:forward])
    return dataclasses.replace(clip, notes=tuple(notes))
