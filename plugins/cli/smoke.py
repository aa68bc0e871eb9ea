"""``circle-rotate smoke``: the whole chain through musubi-tuner's real scripts on a CPU, in seconds."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from circle_rotate.cli._common import add_alias, add_out, new_parser, print_json

ORDER = 43


def add_parser(sub) -> None:
    p = new_parser(sub, "smoke", help="run prepare -> cache -> train both -> load/merge on tiny models, on a CPU",
                   description="Before renting a GPU: tiny random models (a tiny Wan2.2 I2V task registered in "
                               "musubi's configs, musubi's real VAE architecture, a tiny T5), tiny orbit clips through "
                               "prepare/caption/config, then cache (--i2v), train both for 2 steps per expert with the "
                               "recipe's settings scaled down, and both LoRAs loaded back by musubi's LoRA code and "
                               "merged by ours. Lists every setting that differs from the recipe and why.",
                   examples="  circle-rotate smoke\n  circle-rotate smoke --recipe recommended -o /tmp/smoke --keep\n")
    p.add_argument("--recipe", choices=("reproduce", "recommended"), default="reproduce", help="recipe to scale down")
    add_out(p, metavar="DIR", help="work folder, kept (default: a temporary one, removed afterwards)")
    add_alias(p, "--work", dest="out", new="-o/--out", type=Path)
    p.add_argument("--models-dir", type=Path, help="where the tiny models are cached (default ~/.cache/circle-rotate/...)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=run)


def _values(values) -> str:
    return "(absent)" if values is None else (" ".join(values) or "(switch)")


def run(args: argparse.Namespace) -> int:
    from circle_rotate.cli.main import main
    from circle_rotate.selfcheck.smoke import SmokeRequest, run_smoke

    request = SmokeRequest(recipe=args.recipe, work_dir=args.out, models_dir=args.models_dir, keep=args.keep)
    if not args.json:
        report = run_smoke(request, run_command=main)
    else:  # musubi's own output goes to stderr so stdout is only the JSON
        saved = os.dup(1)
        os.dup2(2, 1)
        try:
            report = run_smoke(request, run_command=main, echo=lambda line: None)
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        print_json({"seconds": report.seconds, "steps": report.steps, "loras": report.loras, "work_dir": report.work_dir,
                    "differences": [d.__dict__ for d in report.differences]})
        return 0
    print(f"\nsmoke run passed in {report.seconds:.1f} s. Settings that differ from recipes/cache.sh and "
          f"recipes/{args.recipe}_*.sh:")
    for d in report.differences:
        print(f"  {d.option}: {_values(d.before)} -> {_values(d.after)}  ({d.why})")
    return 0
