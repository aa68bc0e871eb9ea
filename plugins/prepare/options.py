"""The settings of ``circle-rotate prepare``, as one typed value."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Optional

from circle_rotate.kernel.errors import UserError
from circle_rotate.media.orbit import DEFAULT_HFOV_DEG
from circle_rotate.media.orbit_qc import QC_MODES
from circle_rotate.prepare.clip_plan import SizePolicy, check_frames
from circle_rotate.prepare.manifest import stable_hash

#: Bump when clip placement or QC changes meaning, so re-runs redo finished sources.
ALGORITHM_VERSION = 1
#: The shortest clip that holds any motion (4n+1 with n >= 1).
MIN_FRAMES = 5
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


@dataclass(frozen=True)
class PrepareOptions:
    """What ``prepare`` makes of each source.

    Attributes:
        frames: frames per clip (4n+1; Wan2.2 trains on 81).
        fps: clip frame rate (Wan2.2 expects 16).
        size: resolution / bucket policy.
        trim_still: leave still heads, tails and pauses out of clips.
        max_clips: at most this many clips per source (None: all).
        qc: "strict" | "lenient" | "off" (see :mod:`circle_rotate.media.orbit_qc`).
        crf, preset: x264 quality (18 is visually lossless) and speed.
        jobs: worker processes (0: one per CPU core).
        encode_threads: x264 threads per clip (0: FFmpeg decides).
        keep_rejected: also write rejected clips (to ``rejected/``) for inspection.
        hfov_deg: assumed horizontal field of view (scales the measured speeds only).
        crop_bars: crop the black bars (letterbox, pillarbox) found on frames spread over a
            source off all of it before scaling, so the LoRA does not learn them.
    """

    frames: int = 81
    fps: float = 16.0
    size: SizePolicy = field(default_factory=SizePolicy)
    trim_still: bool = True
    max_clips: Optional[int] = None
    qc: str = "strict"
    crf: int = 18
    preset: str = "medium"
    jobs: int = 0
    encode_threads: int = 0
    keep_rejected: bool = False
    hfov_deg: float = DEFAULT_HFOV_DEG
    crop_bars: bool = False

    def validate(self) -> None:
        """Raise one UserError naming every bad setting."""
        bad = []
        if self.frames < MIN_FRAMES:  # 1 is 4n+1, but one frame is a still: no orbit to measure or learn
            bad.append(f"--frames {self.frames} is too few: a clip needs at least {MIN_FRAMES} frames to show an orbit "
                       f"(use {MIN_FRAMES}, {MIN_FRAMES + 4}, ... 81)")
        else:
            try:
                check_frames(self.frames)
            except UserError as exc:
                bad.append(str(exc))
        if not 1 <= self.fps <= 240:
            bad.append(f"--fps {self.fps:g} must be between 1 and 240")
        try:
            self.size.validate()
        except UserError as exc:
            bad.append(str(exc))
        if self.max_clips is not None and self.max_clips < 1:
            bad.append("--max-clips must be at least 1")
        if self.qc not in QC_MODES:
            bad.append(f"--qc {self.qc!r} is not one of {', '.join(QC_MODES)}")
        if not 0 <= self.crf <= 51:
            bad.append(f"--crf {self.crf} must be 0-51")
        if self.preset not in X264_PRESETS:
            bad.append(f"--preset {self.preset!r} is not an x264 preset")
        if self.jobs < 0:
            bad.append(f"--jobs {self.jobs} must be 0 (one per core) or more")
        if self.encode_threads < 0:
            bad.append(f"encode_threads {self.encode_threads} must be 0 or more")
        if not 10 <= self.hfov_deg <= 150:
            bad.append(f"--hfov {self.hfov_deg:g} must be 10-150 degrees")
        if bad:
            raise UserError("; ".join(bad), fix="see circle-rotate prepare --help")

    def workers(self, sources: int) -> int:
        return max(1, min(self.jobs or os.cpu_count() or 1, sources))

    def clip_key(self) -> str:
        """Hash of what decides a clip's pixels (a clip with the same key is reused)."""
        return stable_hash({"v": ALGORITHM_VERSION, "frames": self.frames, "fps": self.fps, "size": asdict(self.size),
                            "trim": self.trim_still, "crf": self.crf, "preset": self.preset,
                            **({"crop_bars": True} if self.crop_bars else {})})  # earlier runs' keys stand

    def settings_key(self) -> str:
        """Hash of every setting that changes the output (a source done with it is skipped)."""
        return stable_hash({"clip": self.clip_key(), "max": self.max_clips, "qc": self.qc,
                            "keep_rejected": self.keep_rejected, "hfov": self.hfov_deg})
