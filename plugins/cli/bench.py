"""``circle-rotate bench prepare|merge|merge-kinds|eval|accuracy|finder|follower|real|noise|fp8-merge|comfyui``: the benchmarks, each against its floor in one run."""

from __future__ import annotations

import argparse
import importlib

from circle_rotate.cli._common import new_parser

ORDER = 90

#: name -> (module with ``main(argv) -> int``, what it measures). Imported only when run.
BENCHES = {
    "prepare": ("circle_rotate.selfcheck.bench_prepare",
                "prepare against decoding and encoding the same clips (target <= 1.3x)"),
    "merge": ("circle_rotate.selfcheck.bench_merge",
              "merge against a file copy + fsync and a load-everything merge (14B-shaped blocks)"),
    "eval": ("circle_rotate.selfcheck.bench_eval",
             "the default metric set against decoding + one Farneback pass (motion magnitude alone)"),
    "accuracy": ("circle_rotate.selfcheck.bench_accuracy",
                 "subject drift against the synthetic truth on the development or held-out orbit set"),
    "finder": ("circle_rotate.selfcheck.bench_finder",
               "the first-frame subject search alone against the exact masks (--set) or labelled boxes (--real)"),
    "follower": ("circle_rotate.selfcheck.bench_follower",
                 "the follower from the exact first mask, its motion estimated and true: which of the two "
                 "limits it (--labels: and what evidence the cut would need)"),
    "real": ("circle_rotate.selfcheck.bench_real",
             "subject drift on real videos against hand-labelled boxes (--folder ../shared/eval-real; "
             "--boxes [all]: given the first or every labelled box)"),
    "noise": ("circle_rotate.selfcheck.bench_noise",
              "how far re-encoding (H.264 at several CRFs) moves the subject-drift reading of each video in --folder"),
    "merge-kinds": ("circle_rotate.selfcheck.bench_merge_kinds",
                    "the merge's per-tensor arithmetic for LoRA, LoHa, LoKr and whole-tensor differences (14B shapes)"),
    "fp8-merge": ("circle_rotate.selfcheck.bench_fp8_merge",
                  "pre-merged fp8_scaled weights against ComfyUI's load-time LoRA, both against the fp32 truth"),
    "comfyui": ("circle_rotate.selfcheck.check_comfyui",
                "merged files and workflows through a real ComfyUI checkout's loader and validator (--comfyui PATH)"),
}


def add_parser(sub) -> None:
    p = new_parser(sub, "bench", help="benchmarks: prepare, merge and eval against their floors (prints figures)",
                   description="Each benchmark makes its own synthetic inputs, runs the command and the work no "
                               "tool can avoid side by side in one run (so a busy machine slows both alike), and "
                               "prints the medians and their ratio. The options after the name are the benchmark's "
                               "own: circle-rotate bench NAME --help.",
                   examples="  circle-rotate bench prepare --sources 4 --repeat 3\n"
                            "  circle-rotate bench merge --layers 3\n"
                            "  circle-rotate bench eval --videos 4 --jobs 2\n")
    names = p.add_subparsers(dest="bench", metavar="NAME", required=True)
    for name, (_, what) in BENCHES.items():
        # '+' as the option prefix: every '-' option (--help included) goes to the benchmark's own parser
        b = names.add_parser(name, help=what, description=what, add_help=False, prefix_chars="+")
        b.add_argument("options", nargs="*", help="the benchmark's options")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHES[args.bench][0])
    if args.bench == "comfyui":  # it writes workflows through the real command; the library never imports the CLI
        from circle_rotate.cli.main import main as cli_main

        return int(module.main(list(args.options), run_cli=cli_main) or 0)
    return int(module.main(list(args.options)) or 0)
