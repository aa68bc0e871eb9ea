"""What this machine can do, for each user job: the facts behind ``circle-rotate doctor``."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

import circle_rotate
from circle_rotate.kernel.musubi_env import INSTALL_HINT, musubi_import_problem, musubi_version

#: VRAM the reproduce recipes need with fp8_base and block swap (see recipes/README.md).
MIN_TRAIN_VRAM_GB = 24


@dataclass(frozen=True)
class JobStatus:
    job: str
    ok: bool
    reason: str


@dataclass
class DoctorReport:
    circle_rotate: str
    python: str
    platform: str
    torch: str
    cuda: bool
    gpus: List[Dict[str, object]]
    musubi_tuner: Optional[str]
    musubi_import: Optional[str]  # why musubi-tuner's scripts do not import (its requirements), or None
    accelerate: Optional[str]
    bitsandbytes: Optional[str]
    pyav: str
    opencv: str
    encoders: Dict[str, bool]  # PyAV encoders we use
    cv2_writers: Dict[str, bool]  # fourcc -> cv2.VideoWriter can open it
    decode_roundtrip: Dict[str, bool]  # an H.264 clip we write decodes with PyAV / OpenCV
    free_disk_gb: float
    disk_path: str
    jobs: List[JobStatus] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@contextlib.contextmanager
def _silence_stderr():
    # OpenCV's FFmpeg backend prints encoder failures straight to fd 2; a probe expects them.
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cv2_writers(tmp: Path) -> Dict[str, bool]:
    import cv2

    out = {}
    with _silence_stderr():
        for fourcc, ext in (("avc1", "mp4"), ("mp4v", "mp4"), ("VP90", "webm"), ("MJPG", "avi")):
            path = tmp / f"probe_{fourcc}.{ext}"
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 16, (64, 64))
            out[fourcc] = bool(writer.isOpened())
            writer.release()
    return out


def _roundtrip(tmp: Path) -> Dict[str, bool]:
    import cv2

    from circle_rotate.kernel.video_io import read_video, write_video

    frames = [np.full((64, 64, 3), 20 * i, np.uint8) for i in range(9)]
    path = tmp / "probe.mp4"
    result = {"pyav": False, "opencv": False}
    try:
        write_video(path, frames, fps=16)
    except Exception:
        return result
    try:
        result["pyav"] = len(read_video(path)) == 9
    except Exception:
        pass
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    result["opencv"] = n == 9
    return result


def _jobs(r: DoctorReport) -> List[JobStatus]:
    video_ok = r.encoders.get("libx264", False) and r.decode_roundtrip.get("pyav", False)
    vram = max((g.get("vram_gb", 0) for g in r.gpus), default=0)
    train_missing = [n for n, v in (("accelerate", r.accelerate), ("bitsandbytes", r.bitsandbytes)) if not v]
    no_gpu = "" if r.cuda else "no CUDA GPU, and "
    # musubi first: without it (or its requirements) train --dry-run, preflight and smoke stop too,
    # so the no-GPU line below, which says they work here, would send the user to a refusal
    if not r.musubi_tuner:
        train = JobStatus("reproduce / retrain (GPU training)", False,
                          f"{no_gpu}musubi-tuner is not installed (`train --dry-run`, preflight and `smoke` need it "
                          f"too): {INSTALL_HINT}")
    elif r.musubi_import:
        train = JobStatus("reproduce / retrain (GPU training)", False,
                          f"{no_gpu}musubi-tuner {r.musubi_tuner} does not import (`train --dry-run`, preflight and "
                          f"`smoke` stop too): {r.musubi_import}")
    elif not r.cuda:
        train = JobStatus("reproduce / retrain (GPU training)", False,
                          "no CUDA GPU; `circle-rotate train --dry-run` and preflight still work here")
    elif train_missing:
        train = JobStatus("reproduce / retrain (GPU training)", False,
                          f"missing {', '.join(train_missing)}: in the circle-rotate clone, pip install -e \".[train]\"")
    elif vram < MIN_TRAIN_VRAM_GB:
        train = JobStatus("reproduce / retrain (GPU training)", False, f"largest GPU has {vram:.0f} GB; {MIN_TRAIN_VRAM_GB} GB is the minimum")
    else:
        train = JobStatus("reproduce / retrain (GPU training)", True, f"CUDA, {vram:.0f} GB VRAM, musubi-tuner {r.musubi_tuner}")
    return [
        train,
        JobStatus("prepare own footage (prepare, caption, config)", video_ok,
                  "H.264 encode and decode work" if video_ok else "PyAV cannot encode/decode H.264 here: reinstall `av`"),
        JobStatus("merge / convert for ComfyUI", True, "CPU only, streaming; needs free disk the size of the output"),
        JobStatus("evaluate videos", r.decode_roundtrip.get("pyav", False),
                  "CPU metrics, no weights" if r.decode_roundtrip.get("pyav") else "video decoding fails here"),
    ]


def collect(*, disk_path: Path = Path(".")) -> DoctorReport:
    """Probe this machine (a few small temporary files; a second or so)."""
    import av
    import cv2
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "vram_gb": round(p.total_memory / 2**30, 1)})
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        writers = _cv2_writers(tmp)
        roundtrip = _roundtrip(tmp)
    target = disk_path if disk_path.exists() else Path(".")
    report = DoctorReport(
        circle_rotate=circle_rotate.__version__,
        python=platform.python_version(),
        platform=f"{platform.system()} {platform.machine()}",
        torch=torch.__version__,
        cuda=torch.cuda.is_available(),
        gpus=gpus,
        musubi_tuner=musubi_version(),
        # the real import: the package can be there without its requirements (pip install --no-deps)
        musubi_import=musubi_import_problem(),
        accelerate=_version("accelerate"),
        bitsandbytes=_version("bitsandbytes") if importlib.util.find_spec("bitsandbytes") else None,
        pyav=av.__version__,
        opencv=cv2.__version__,
        encoders={name: name in av.codecs_available for name in ("libx264", "libvpx-vp9", "gif")},
        cv2_writers=writers,
        decode_roundtrip=roundtrip,
        free_disk_gb=round(shutil.disk_usage(target).free / 2**30, 1),
        disk_path=str(target.resolve()),
    )
    report.jobs = _jobs(report)
    return report
