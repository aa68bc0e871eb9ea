"""``circle-rotate demo``: the whole kit on an embedded default, from nothing, on a CPU.

Every step runs a public command (the CLI's ``main``, which the ``demo`` command hands down)
exactly as a user would type it, so the demo is also the end-to-end test. Each step's own output goes to
``OUT/logs/<step>.log`` (child processes included); the demo prints what each step made and
where, and ends with the report's path and the headline drift numbers next to the ground
truth the generator wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.write_checks import check_output_dir
from circle_rotate.selfcheck.synthetic.turntable import DriftPath, TurntableSpec, load_truth, write_turntable

#: Raw footage: varied frame rates and lengths, a phone video, a pan the orbit QC must reject.
RAW_SOURCES: Tuple[Tuple[TurntableSpec, int], ...] = (
    (TurntableSpec(name="toy_car_24fps", width=416, height=240, fps=24.0, frames=72, subject="car", direction="right",
                   total_angle_deg=70, seed=11), 0),
    (TurntableSpec(name="figure_2997fps", width=416, height=240, fps=29.97, frames=80, subject="figure", direction="left",
                   total_angle_deg=60, speed_profile="ease", clutter=2, seed=12), 0),
    (TurntableSpec(name="phone_vase_30fps", width=320, height=240, fps=30.0, frames=75, subject="cylinder",
                   direction="right", total_angle_deg=60, background="studio", seed=13), 90),
    (TurntableSpec(name="pan_25fps", width=416, height=240, fps=25.0, frames=60, camera="pan", total_angle_deg=30,
                   subject="box", seed=14), 0),
)
#: Evaluation sets: the same orbits, the "baseline" with the subject drifting in the image (the
#: failure the study measures), the "LoRA" steady. Sizes and lengths keep the demo within minutes.
EVAL_SPECS: Tuple[TurntableSpec, ...] = tuple(
    TurntableSpec(name=f"orbit_{i}", width=640, height=368, frames=25, subject=s, direction=d, total_angle_deg=a,
                  clutter=c, seed=100 + i, start_azimuth_deg=50 * i)
    for i, (s, d, a, c) in enumerate((("car", "right", 60, 1), ("figure", "left", 50, 2), ("cylinder", "right", 60, 0),
                                      ("lshape", "left", 45, 1), ("box", "right", 50, 1)))
)
BASELINE_DRIFT = (DriftPath("random_walk", 25.0), DriftPath("sine", 20.0, angle_deg=20), DriftPath("linear", 30.0, angle_deg=160),
                  DriftPath("circle", 14.0), DriftPath("sine", 18.0, angle_deg=100))
STEPS = 7


@dataclass
class DemoResult:
    out: Path
    report: Path
    headline: str
    measured: Dict[str, float]  # baseline / lora mean drift (px), relative change
    truth: Dict[str, float]
    produced: List[Tuple[str, str]] = field(default_factory=list)  # (step, what)
    seconds: float = 0.0


@contextlib.contextmanager
def _captured(log: Path) -> Iterator[None]:
    """Send this process's stdout/stderr (and its children's) to ``log`` for the block."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a", encoding="utf-8") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


class _Runner:
    """Runs public commands in-process, logging each, and reports progress lines."""

    def __init__(self, out: Path, echo: Callable[[str], None], run_command: Callable[[Sequence[str]], int]):
        self.out = out
        self.run_command = run_command
        self.echo = echo
        self.step = 0

    def header(self, title: str) -> None:
        self.step += 1
        self.echo(f"[{self.step}/{STEPS}] {title}")

    def command(self, argv: Sequence[str], *, log: str, ok_codes: Tuple[int, ...] = (0,)) -> int:
        self.echo(f"      $ circle-rotate {' '.join(shlex.quote(str(a)) for a in argv)}")
        path = self.out / "logs" / f"{log}.log"
        with _captured(path):
            print(f"$ circle-rotate {' '.join(shlex.quote(str(a)) for a in argv)}", flush=True)
            code = self.run_command([str(a) for a in argv])
        if code not in ok_codes:
            tail = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
            raise UserError(f"demo step '{log}' failed (exit {code}): {' | '.join(tail)}", path=path,
                            fix="read the log; `circle-rotate doctor` says what this machine lacks")
        return code


def _synthesize(raw: Path) -> List[str]:
    made = []
    for spec, rotation in RAW_SOURCES:
        files = write_turntable(spec, raw / "_truth", rotation=rotation)
        files.video.replace(raw / files.video.name)
        made.append(f"{files.video.name} ({spec.fps:g} fps, {spec.frames} frames{', rotated 90' if rotation else ''})")
    broken = raw / "broken_upload.mp4"
    data = (raw / f"{RAW_SOURCES[0][0].name}.mp4").read_bytes()
    broken.write_bytes(data[: len(data) // 5])  # an interrupted upload
    made.append(f"{broken.name} (truncated)")
    return made


def _eval_sets(root: Path) -> Dict[str, float]:
    truth = {}
    for side in ("baseline", "lora"):
        for spec, drift in zip(EVAL_SPECS, BASELINE_DRIFT):
            s = spec if side == "lora" else TurntableSpec(**{**spec.__dict__, "drift": drift})
            files = write_turntable(s, root / side)
            truth[f"{side}/{spec.name}"] = float(load_truth(files.truth)["drift"])
            for extra in (files.truth, files.masks):  # keep the folders to videos; truth beside
                extra.replace(root / f"{side}_{extra.name}")
    return truth


def _lora_files(out: Path, smoke_ran: bool) -> Dict[str, Path]:
    if smoke_ran:
        return {e: out / "smoke" / "outputs" / e / f"circle_rotate_{e[0]}.safetensors" for e in ("high", "low")}
    from circle_rotate.kernel.wan_arch import tiny_config
    from circle_rotate.selfcheck.synthetic.lora import write_random_lora

    loras = out / "loras"
    return {e: write_random_lora(loras / f"circle_rotate_{e[0]}.safetensors", tiny_config(), rank=8, seed=i)
            for i, e in enumerate(("high", "low"))}


def run_demo(out: Path, *, run_command: Callable[[Sequence[str]], int], smoke: Optional[bool] = None,
             echo: Callable[[str], None] = print) -> DemoResult:
    """Run the demo into ``out`` (created; must be empty or absent).

    Args:
        out: the demo folder.
        run_command: runs one public command from its argv and returns its exit status (the CLI's ``main``).
        smoke: run the real CPU training chain through musubi-tuner (default: when it is installed).
        echo: where progress lines go.
    """
    from circle_rotate.kernel.musubi_env import musubi_available
    from circle_rotate.selfcheck.synthetic.tiny_wan import write_tiny_wan

    start = time.perf_counter()
    out = check_output_dir(Path(out).absolute(), flag="--out")  # the paths it prints work from anywhere
    if out.exists() and any(out.iterdir()):
        raise UserError("demo folder is not empty", path=out, fix="pass --out NEW_DIR, or delete it")
    out.mkdir(parents=True, exist_ok=True)
    run = _Runner(out, echo, run_command)
    result = DemoResult(out=out, report=out / "report" / "report.html", headline="", measured={}, truth={})

    run.header("synthesize raw turntable footage")
    made = _synthesize(out / "raw")
    echo("      " + "; ".join(made))

    run.header("prepare: probe, cut 4n+1 clips at 16 fps, orbit QC")
    prepared = out / "prepared"
    run.command(["prepare", out / "raw", "-o", prepared, "--frames", "33", "--resolution", "320x192", "--keep-going"],
                log="prepare")
    summary = json.loads((prepared / "prepare_summary.json").read_text())
    echo(f"      {summary['clips_accepted']} clips accepted, {summary['clips_rejected']} rejected by orbit QC, "
         f"{len(summary['failed'])} source failed -> {prepared / 'manifest.jsonl'}")
    for failed in summary["failed"]:
        echo(f"      failed: {failed}")

    run.header("caption (Circle-Rotate tags, trajectory from the measured orbit)")
    run.command(["caption", prepared, "--subject", "a toy model", "--context", "Studio Turntable"], log="caption")
    captions = sorted((prepared / "videos").glob("*.txt"))
    if captions:
        echo(f"      {len(captions)} captions, e.g. {captions[0].name}: {captions[0].read_text().strip()}")

    run.header("config + check-config (musubi-tuner's own validator too, when installed)")
    run.command(["config", prepared], log="config")
    run.command(["check-config", prepared / "dataset.toml"], log="check-config")
    echo(f"      {prepared / 'dataset.toml'} passes check-config")

    smoke = musubi_available() if smoke is None else smoke
    if smoke:
        run.header("cache + train both experts for real on CPU (musubi-tuner's scripts, tiny models)")
        run.command(["smoke", "-o", out / "smoke", "--keep"], log="smoke")
        echo(f"      LoRAs: {out / 'smoke' / 'outputs'}/{{high,low}}; recipe differences listed in logs/smoke.log")
    else:
        why = "--no-smoke" if musubi_available() else "musubi-tuner is not installed"
        run.header(f"cache + train: the exact musubi-tuner commands for this dataset ({why})")
        from circle_rotate.musubi.recipe_reader import read_recipe

        env = {"DATASET_CONFIG": str(prepared / "dataset.toml")}
        for name in ("cache.sh", "reproduce_low.sh", "reproduce_high.sh"):
            for command in read_recipe(name, env=env):
                echo(f"      {command.shell()}")
    loras = _lora_files(out, bool(smoke))

    run.header("merge into a tiny Wan-shaped expert (fp16, fp8_scaled) and convert for ComfyUI")
    models = out / "models"
    base = write_tiny_wan(models / "wan2.2_i2v_high_noise_14B_fp16.safetensors", dtype="fp16", seed=1)
    merged = out / "merged"
    for dtype in ("fp16", "fp8_scaled"):
        run.command(["merge", base, "--lora", loras["high"], "-o", merged / f"high_merged_{dtype}.safetensors",
                     "--dtype", dtype], log=f"merge_{dtype}")
    comfy = merged / "circle_rotate_h_comfy.safetensors"
    run.command(["convert", loras["high"], "-o", comfy, "--format", "comfy"], log="convert")
    echo(f"      {merged}/high_merged_fp16.safetensors, high_merged_fp8_scaled.safetensors, {comfy.name}")

    run.header("evaluate: baseline (drifting subject) vs LoRA (steady subject)")
    truth = _eval_sets(out / "eval")
    run.command(["eval", "compare", out / "eval" / "baseline", out / "eval" / "lora", "--out", out / "report"],
                log="eval")
    summary = json.loads((out / "report" / "compare.json").read_text())
    drift = next((m for m in summary["metrics"] if m["column"] == "drift"), None)
    # the truth over the same pairs the drift statistics used (unreliable readings left out)
    kept = [spec.name for spec in EVAL_SPECS if spec.name not in summary.get("drift_left_out", {})] \
        or [spec.name for spec in EVAL_SPECS]
    base_truth = sum(truth[f"baseline/{n}"] for n in kept) / len(kept)
    lora_truth = sum(truth[f"lora/{n}"] for n in kept) / len(kept)
    result.truth = {"baseline": base_truth, "lora": lora_truth, "relative_change": (lora_truth - base_truth) / base_truth}
    if drift is not None:
        result.measured = {"baseline": drift["baseline_mean"], "lora": drift["lora_mean"],
                           "relative_change": drift["relative_change"]}
        result.headline = next(h for h in summary["headline"] if h.startswith("drift"))
    else:
        result.headline = "drift: every pair's reading was marked unreliable (the report says why)"
    result.seconds = time.perf_counter() - start
    echo(f"      measured: {result.headline}")
    echo(f"      ground truth: drift {result.truth['relative_change']:+.0%} ({base_truth:.2f} -> {lora_truth:.2f} px)"
         f"{'' if len(kept) == len(EVAL_SPECS) else f' over the {len(kept)} pairs read reliably'}")
    echo(f"report: {result.report}  ({result.seconds:.0f} s)")
    return result
