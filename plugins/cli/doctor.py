"""``circle-rotate doctor``: what this machine can do."""

from __future__ import annotations

import argparse
from pathlib import Path

from circle_rotate.cli._common import new_parser, print_json

ORDER = 0


def add_parser(sub) -> None:
    p = new_parser(sub, "doctor", help="report what this machine can do for each job",
                   description="Report Python/torch/CUDA, musubi-tuner, video encode/decode support, free disk, "
                               "and for each user job whether it can run here.",
                   examples="  circle-rotate doctor\n  circle-rotate doctor --json --disk /data\n")
    p.add_argument("--disk", type=Path, default=Path("."), help="where outputs will go (free space is checked there)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _musubi(r) -> str:
    from circle_rotate.kernel.musubi_env import INSTALL_HINT

    if not r.musubi_tuner:
        return f"not installed ({INSTALL_HINT})"
    if r.musubi_import:  # installed, but its scripts do not import: the version alone would read as fine
        return f"{r.musubi_tuner}, but it does not import: {r.musubi_import}"
    return r.musubi_tuner


def run(args: argparse.Namespace) -> int:
    from circle_rotate.musubi.doctor import collect

    r = collect(disk_path=args.disk)
    if args.json:
        print_json(r.to_dict())
        return 0
    gpus = ", ".join(f"{g['name']} ({g['vram_gb']} GB)" for g in r.gpus) or "none"
    rows = [
        ("circle-rotate", r.circle_rotate),
        ("python", f"{r.python} ({r.platform})"),
        ("torch", f"{r.torch}, CUDA {_yes(r.cuda)}"),
        ("GPUs", gpus),
        ("musubi-tuner", _musubi(r)),
        ("accelerate", r.accelerate or "not installed"),
        ("bitsandbytes", r.bitsandbytes or "not installed (needed for adamw8bit)"),
        ("PyAV encoders", ", ".join(f"{k} {_yes(v)}" for k, v in r.encoders.items())),
        ("OpenCV writers", f"{r.opencv}: " + ", ".join(f"{k} {_yes(v)}" for k, v in r.cv2_writers.items())),
        ("H.264 decode", ", ".join(f"{k} {_yes(v)}" for k, v in r.decode_roundtrip.items())),
        ("free disk", f"{r.free_disk_gb} GB at {r.disk_path}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("\njobs:")
    for j in r.jobs:
        print(f"  [{'ok' if j.ok else '--'}] {j.job}: {j.reason}")
    return 0
