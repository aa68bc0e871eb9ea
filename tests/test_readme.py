"""Every command the README shows is exercised: the runnable ones run verbatim in a sandbox
laid out as the README assumes (offline hub cache, footage, LoRAs, experts, videos); the ones
that need a GPU are parsed by the real CLI and their dry runs are tested where named."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from circle_rotate.kernel.wan_arch import tiny_config
from circle_rotate.musubi.downloads import DATASET_REPO, FILES
from circle_rotate.selfcheck.synthetic.lora import write_random_lora
from circle_rotate.selfcheck.synthetic.tiny_wan import write_release_shards, write_tiny_wan
from circle_rotate.selfcheck.synthetic.turntable import DriftPath, TurntableSpec, load_masks, write_turntable
from hub_cache import populate

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")

#: README commands that cannot run here, and where their behaviour is tested instead.
NOT_RUN_HERE: Dict[str, str] = {
    "circle-rotate smoke": "tests/test_smoke.py runs the smoke chain",
    "circle-rotate cache --dataset-config datasets/circle/circle.toml --gpus 0,1": "GPU; dry run: test_cache.py",
    "circle-rotate cache --dataset-config datasets/circle/circle.toml --dry-run": "needs the real VAE; test_cache.py",
    "circle-rotate cache --dataset-config data/prepared/dataset.toml": "GPU; dry run: test_cache.py",
    "circle-rotate train both --recipe reproduce --dry-run": "14B experts + caches; test_train_cli.py",
    "circle-rotate train both --recipe reproduce --gpus 0,1 --save-state": "GPU",
    "circle-rotate train both --recipe recommended --dataset-config data/prepared/dataset.toml -o outputs --dry-run":
        "14B experts + caches; test_train_cli.py",
    "circle-rotate train both --recipe recommended --dataset-config data/prepared/dataset.toml -o outputs": "GPU",
    "circle-rotate generate prompts.txt -o videos/lora --lora-low outputs/low/circle_rotate_l.safetensors "
    "--lora-high outputs/high/circle_rotate_h.safetensors --dry-run": "14B experts; test_generate.py",
    "circle-rotate generate prompts.txt -o videos/base --dry-run": "14B experts; test_generate.py",
    "circle-rotate generate prompts.txt -o videos/lora --lora-low outputs/low/circle_rotate_l.safetensors "
    "--lora-high outputs/high/circle_rotate_h.safetensors": "GPU; test_generate.py",
    "circle-rotate eval compare videos/base videos/lora --out report/": "same command as section 4's compare",
}


def bash_blocks() -> List[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def commands(block: str) -> List[str]:
    """Logical command lines of a block: continuations joined, comments and blanks dropped."""
    joined = block.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(" ".join(words))
    return out


def readme_commands() -> List[str]:
    return [c for b in bash_blocks() for c in commands(b) if c.startswith("circle-rotate ")]


def test_first_command_sets_up_and_runs_the_demo_second_is_what_ci_runs():
    setup, tests = bash_blocks()[:2]
    assert "pip install" in setup and "circle-rotate demo" in setup
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    (test_command,) = commands(tests)
    assert test_command in ci, ".ci/run must run exactly the README's test command"


def test_every_readme_command_parses_with_the_real_cli():
    from circle_rotate.cli.main import build_parser, with_default_action

    parser = build_parser()
    for cmd in readme_commands():
        try:
            parser.parse_args(with_default_action(parser, shlex.split(cmd)[1:]))
        except SystemExit as exc:
            pytest.fail(f"README command does not parse (exit {exc.code}): {cmd}")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """A working folder laid out as the README's commands expect."""
    box = tmp_path_factory.mktemp("readme")
    src = tmp_path_factory.mktemp("readme_src")
    footage = []
    for i, (subject, direction) in enumerate((("car", "right"), ("figure", "left"))):
        spec = TurntableSpec(name=f"{subject}_orbit", width=320, height=192, fps=24.0, frames=132, subject=subject,
                             direction=direction, total_angle_deg=80, seed=40 + i)
        footage.append(write_turntable(spec, src / "footage").video)
    experts = {e: write_tiny_wan(src / f"wan2.2_i2v_{e}_noise_14B_fp16.safetensors", dtype="fp16", seed=s)
               for e, s in (("high", 1), ("low", 2))}
    loras = {e: write_random_lora(src / f"circle_rotate_{e[0]}.safetensors", tiny_config(), rank=8, seed=s)
             for e, s in (("high", 3), ("low", 4))}
    stand_in = {"dit_high": experts["high"], "dit_low": experts["low"], "vae": experts["low"], "t5": experts["low"],
                "lora_high": loras["high"], "lora_low": loras["low"]}
    for f in FILES["models"] + FILES["lora"]:
        populate(box / "hub", f.repo_id, f.repo_type, {f.filename: stand_in[f.key]})
    populate(box / "hub", DATASET_REPO, "dataset", {f"videos/{v.name}": v for v in footage})
    for v in footage:
        (box / "my_footage").mkdir(exist_ok=True)
        shutil.copyfile(v, box / "my_footage" / v.name)
    # the 4-step LoRA as the lightx2v files are made: pairs with alpha, and whole-tensor differences
    accel = write_random_lora(src / "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors", tiny_config(),
                              fmt="comfy", diffs=True, rank=4, alpha=4.0, seed=5)
    for p in list(experts.values()) + list(loras.values()) + [accel]:
        shutil.copyfile(p, box / p.name)
    write_release_shards(experts["high"], box / "Wan2.2-I2V-A14B" / "high_noise_model")  # the official layout
    (box / "datasets" / "custom").mkdir(parents=True)
    shutil.copyfile(ROOT / "datasets" / "custom" / "subjects.csv", box / "datasets" / "custom" / "subjects.csv")
    (box / "datasets" / "circle").mkdir(parents=True)
    shutil.copyfile(ROOT / "datasets" / "circle" / "circle.toml", box / "datasets" / "circle" / "circle.toml")
    for side, drift in (("baseline_videos", DriftPath("sine", 15.0)), ("lora_videos", DriftPath())):
        for i, subject in enumerate(("box", "cylinder")):
            spec = TurntableSpec(name=f"demo{i + 1}", width=256, height=160, frames=21, subject=subject, seed=60 + i,
                                 drift=drift)
            write_turntable(spec, src / side)
            (box / side).mkdir(exist_ok=True)
            shutil.copyfile(src / side / f"demo{i + 1}.mp4", box / side / f"demo{i + 1}.mp4")
    (box / "outputs").mkdir()
    for v in (box / "lora_videos").iterdir():
        shutil.copyfile(v, box / "outputs" / v.name)
    # the boxes a user drew, as the README shows them: the generator's exact boxes of outputs/demo1.mp4
    (boxes,) = [b for b in re.findall(r"```json\n(.*?)```", README, flags=re.S) if '"boxes"' in b]
    exact = load_masks(src / "lora_videos" / "demo1.masks.npz")
    for frame, drawn in json.loads(boxes)["demo1.mp4"]["boxes"].items():
        ys, xs = np.nonzero(exact[int(frame)])
        assert drawn == [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1], frame
    (box / "boxes.json").write_text(boxes, encoding="utf-8")
    return box


def _run(cmd: str, box: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(box / "hub"), "HF_HOME": str(box / "hf_home")}
    argv = [sys.executable, "-m", "circle_rotate", *shlex.split(cmd)[1:]]
    return subprocess.run(argv, cwd=box, env=env, capture_output=True, text=True)


def test_every_runnable_readme_command_runs_verbatim(sandbox):
    ran = []
    for cmd in readme_commands():
        if cmd in NOT_RUN_HERE:
            continue
        proc = _run(cmd, sandbox)
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        ran.append(cmd)
    # What the commands made is what the README says they make.
    assert (sandbox / "models" / "wan2.2_i2v_high_noise_14B_fp16.safetensors").is_file()
    assert sorted((sandbox / "datasets" / "circle" / "videos").glob("*.mp4"))
    assert sorted((sandbox / "data" / "prepared" / "videos").glob("*.txt"))
    assert (sandbox / "data" / "prepared" / "dataset.toml").is_file()
    assert (sandbox / "merged").is_dir() and (sandbox / "low_0.8.safetensors").is_file()
    assert (sandbox / "high_merged.safetensors").is_file()  # one file from the release's shards
    assert (sandbox / "high_fp8_scaled.safetensors").is_file()  # the same, converted only
    from safetensors.torch import load_file

    base, baked = (load_file(str(sandbox / n)) for n in ("wan2.2_i2v_high_noise_14B_fp16.safetensors", "high_4step.safetensors"))
    assert not any(base[k].equal(baked[k].to(base[k].dtype)) for k in ("blocks.0.modulation", "blocks.1.norm3.bias"))
    assert (sandbox / "results.json").is_file() and (sandbox / "results.csv").is_file()
    assert (sandbox / "report" / "report.html").is_file()
    assert len(ran) + len([c for c in readme_commands() if c in NOT_RUN_HERE]) == len(readme_commands())


def test_commands_not_run_here_are_still_in_the_readme():
    shown = set(readme_commands())
    stale = [c for c in NOT_RUN_HERE if c not in shown]
    assert not stale, f"NOT_RUN_HERE lists commands the README no longer shows: {stale}"


def test_troubleshooting_messages_are_what_the_tools_print():
    """Every message the troubleshooting table quotes stands in the package's source."""
    table = README.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    source = "\n".join(p.read_text(encoding="utf-8") for d in ("plugins", "tools", "eval") for p in (ROOT / d).rglob("*.py"))
    flat = re.sub(r"\s+", " ", source)
    quoted = []
    for row in table.splitlines()[4:]:
        cells = row.split("|")
        if len(cells) > 3:
            quoted += re.findall(r"`([^`]+)`", cells[2])
    messages = [q for q in quoted if not q.startswith(("train", "check-config", "circle-rotate inspect"))]
    assert len(messages) >= 10
    for m in messages:
        probe = m.split("<")[0].strip()
        assert probe in flat, f"the README quotes '{m}' but no tool prints it"
