"""``circle-rotate demo``: the whole kit on an embedded default, on a CPU, in a few minutes."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

from circle_rotate.cli._common import add_out, new_parser, print_json

ORDER = 1


def add_parser(sub) -> None:
    p = new_parser(sub, "demo", help="run the whole kit end to end on synthetic data (CPU, a few minutes)",
                   description="From nothing: synthesize raw turntable footage (varied fps and lengths, a phone video, "
                               "a pan, a broken file), then run the real commands in order: prepare (orbit QC) -> "
                               "caption -> config -> check-config -> cache + train both experts (the real CPU smoke "
                               "run through musubi-tuner when it is installed, else the exact recipe commands) -> merge "
                               "into a tiny Wan-shaped expert (fp16, fp8_scaled) and convert for ComfyUI -> evaluate a "
                               "drifting 'baseline' set against a steady 'LoRA' set -> HTML report with plots.",
                   examples="  circle-rotate demo\n  circle-rotate demo -o demo-run --no-smoke\n")
    add_out(p, metavar="DIR", help="demo folder (default: a new folder under the system temp dir)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--smoke", dest="smoke", action="store_true", default=None,
                       help="run the real CPU training chain (default when musubi-tuner is installed)")
    group.add_argument("--no-smoke", dest="smoke", action="store_false", help="print the training commands only")
    p.add_argument("--json", action="store_true", help="progress to stderr; the result (report, drift measured and "
                                                       "true) as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from circle_rotate.cli.main import main
    from circle_rotate.selfcheck.demo import run_demo

    out = args.out or Path(tempfile.mkdtemp(prefix="circle-rotate-demo-"))
    echo = (lambda line: print(line, file=sys.stderr)) if args.json else print
    result = run_demo(out, smoke=args.smoke, run_command=main, echo=echo)
    if args.json:
        print_json(dataclasses.asdict(result))
    return 0 if result.report.exists() else 1
