"""Preflight: every known mistake caught from headers and configs, each as one line with the file and the fix."""

from __future__ import annotations

import os
import subprocess
from collections import namedtuple
import sys
from pathlib import Path

import pytest

from circle_rotate.kernel.wan_arch import tiny_config
from circle_rotate.musubi.recipe_reader import edit_options
from circle_rotate.selfcheck.synthetic.tiny_wan import write_tiny_wan
from circle_rotate.selfcheck.tiny_task import TINY_TASK

CLIP = dict(width=32, height=32, frames=5, fps=16.0)


def tiny_task(command):
    """The recipe's command for the tiny task (the tiny checkpoints' shapes); nothing else changes."""
    return command.with_args(edit_options(command.args, {"--task": [TINY_TASK]}))


def write_clips(clips: Path, names=("orbit_a", "orbit_b"), caption: str = "a box, the camera orbits right") -> Path:
    from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec, write_turntable

    clips.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        write_turntable(TurntableSpec(name=name, seed=i, **CLIP), clips, preset="ultrafast")
        (clips / f"{name}.txt").write_text(caption, encoding="utf-8")
    return clips


def write_config(root: Path, clips: Path) -> Path:
    """A dataset config for ``clips`` with its own cache folder under ``root``."""
    config = root / "dataset.toml"
    config.write_text(f'[general]\nresolution = [32, 32]\ncaption_extension = ".txt"\nbatch_size = 1\n\n[[datasets]]\n'
                      f'video_directory = "{clips.as_posix()}"\ncache_directory = "{(root / "cache").as_posix()}"\n'
                      f'target_frames = [5]\nframe_extraction = "head"\n', encoding="utf-8")
    return config


def write_dataset(root: Path) -> Path:
    return write_config(root, write_clips(root / "clips"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return write_clips(tmp_path_factory.mktemp("clips"))


@pytest.fixture
def ws(musubi, tmp_path, clips, tiny_wan_dir, write_musubi_caches):
    """A workspace that passes preflight: tiny fp16 experts named like the downloads, dataset, i2v caches."""
    from circle_rotate.musubi.cache_plan import plan_cache

    config = write_config(tmp_path, clips)
    write_musubi_caches(plan_cache(config))
    vae = tmp_path / "Wan2.1_VAE.pth"  # a pickle VAE is only checked for existence, never opened
    vae.write_bytes(b"\0" * 1024)
    return {"DIT_LOW": str(tiny_wan_dir / "wan2.2_i2v_low_noise_14B_fp16.safetensors"),
            "DIT_HIGH": str(tiny_wan_dir / "wan2.2_i2v_high_noise_14B_fp16.safetensors"),
            "VAE": str(vae), "DATASET_CONFIG": str(config),
            "OUTPUT_DIR_LOW": str(tmp_path / "out" / "low"), "OUTPUT_DIR_HIGH": str(tmp_path / "out" / "high")}


def run_preflight(env, *, experts=("low", "high"), **kw):
    from circle_rotate.musubi.preflight import preflight
    from circle_rotate.musubi.preflight_findings import TrainTarget
    from circle_rotate.musubi.train import TrainRequest, plan_training

    plan = plan_training(TrainRequest(experts, env=tuple(env.items())), transform=tiny_task)
    return preflight([TrainTarget(r.expert, r.command) for r in plan.runs], for_run=False, **kw)


def only_error(report, needle: str, path) -> str:
    """The one error containing ``needle``: one line, naming ``path``, with a fix."""
    hits = [p for p in report.errors if needle in p.message]
    assert len(hits) == 1, [p.one_line() for p in report.problems]
    line = hits[0].one_line()
    assert "\n" not in line and str(path) in line and "; fix: " in line
    return line


def test_a_good_workspace_passes_with_vram_advice(ws):
    report = run_preflight(ws)
    assert report.ok, [p.one_line() for p in report.problems]
    assert dict(report.identities)["high"]["expert"] == "high"
    notes = "\n".join(report.notes)
    for budget in ("24 GB", "48 GB", "80 GB"):
        assert budget in notes
    assert "VRAM estimate" in notes and "checkpoints need about" in notes


def test_vram_advice_is_the_least_each_card_needs_whatever_the_command_sets(ws):
    import re

    notes = "\n".join(run_preflight(ws).notes)  # the published settings: checkpointing, offload, 30 blocks swapped
    assert re.search(r"VRAM estimate .* with fp8_base, gradient checkpointing \+ CPU offload, 30 blocks swapped", notes)
    eighty = next(line for line in notes.splitlines() if line.strip().startswith("80 GB"))
    assert "BLOCKS_TO_SWAP=0" in eighty and "GRADIENT_CHECKPOINTING_CPU_OFFLOAD=0" in eighty, eighty


def test_the_step_count_is_not_guessed_without_clips(ws, tmp_path):
    import re

    empty = tmp_path / "no_clips"
    empty.mkdir()
    config = tmp_path / "no_clips.toml"
    config.write_text(f'[general]\nresolution = [32, 32]\ncaption_extension = ".txt"\nbatch_size = 1\n\n[[datasets]]\n'
                      f'video_directory = "{empty.as_posix()}"\ncache_directory = "{(tmp_path / "c").as_posix()}"\n'
                      f'target_frames = [5]\nframe_extraction = "head"\n', encoding="utf-8")
    notes = "\n".join(run_preflight({**ws, "DATASET_CONFIG": str(config)}).notes)
    assert "steps unknown until the config finds clips" in notes and "step(s)" not in notes
    assert re.search(r"low: \d+ epoch\(s\), \d+ step\(s\)", "\n".join(run_preflight(ws).notes))


def test_cpu_offload_without_checkpointing_is_named(ws):
    from circle_rotate.musubi.preflight import preflight
    from circle_rotate.musubi.preflight_findings import TrainTarget
    from circle_rotate.musubi.train import TrainRequest, plan_training

    def offload_alone(command):  # as a hand-edited recipe might pass it (ours add it only with checkpointing)
        command = tiny_task(command)
        return command.with_args(edit_options(command.args, {"--gradient_checkpointing": None,
                                                             "--gradient_checkpointing_cpu_offload": []}))

    plan = plan_training(TrainRequest(("low",), env=tuple(ws.items())), transform=offload_alone)
    report = preflight([TrainTarget(r.expert, r.command) for r in plan.runs], for_run=False)
    (line,) = [p.one_line() for p in report.problems if "cpu_offload" in p.one_line()]
    assert "does nothing without --gradient_checkpointing" in line and "GRADIENT_CHECKPOINTING_CPU_OFFLOAD=0" in line
    plain = run_preflight({**ws, "GRADIENT_CHECKPOINTING": "0", "GRADIENT_CHECKPOINTING_CPU_OFFLOAD": "1"}, experts=("low",))
    assert not [p for p in plain.problems if "cpu_offload" in p.one_line()]  # the recipe drops it with checkpointing


def test_swapped_experts(ws):
    report = run_preflight({**ws, "DIT_LOW": ws["DIT_HIGH"], "DIT_HIGH": ws["DIT_LOW"]})
    lines = [p.one_line() for p in report.errors if "swapped" in p.message]
    assert len(lines) == 2
    assert ws["DIT_HIGH"] in lines[0] and "swap DIT_LOW and DIT_HIGH" in lines[0]


def test_expert_told_by_metadata_beats_a_neutral_name(ws, tmp_path):
    neutral = write_tiny_wan(tmp_path / "expert_a.safetensors", config=tiny_config(), dtype="fp16", expert="high")
    only_error(run_preflight({**ws, "DIT_LOW": str(neutral)}, experts=("low",)), "swapped", neutral)
    unnamed = write_tiny_wan(tmp_path / "expert_b.safetensors", config=tiny_config(), dtype="fp16")
    report = run_preflight({**ws, "DIT_LOW": str(unnamed)}, experts=("low",))
    assert report.ok and any("which expert" in p.message for p in report.problems)


def test_t2v_checkpoint(ws, tmp_path):
    t2v = write_tiny_wan(tmp_path / "wan2.2_t2v_low_noise_14B_fp16.safetensors", config=tiny_config(i2v=False))
    only_error(run_preflight({**ws, "DIT_LOW": str(t2v)}), "T2V checkpoint", t2v)


def test_the_release_shards_pass_as_musubi_takes_them(ws, tmp_path):
    from circle_rotate.kernel.shards import read_checkpoint
    from circle_rotate.selfcheck.synthetic.tiny_wan import write_release_shards

    first = write_release_shards(Path(ws["DIT_LOW"]), tmp_path / "Wan2.2-I2V-A14B" / "low_noise_model", shards=4)
    holder = read_checkpoint(first).header_of("blocks.0.cross_attn.k.weight").path
    report = run_preflight({**ws, "DIT_LOW": str(holder)}, experts=("low",))
    assert report.ok, [p.one_line() for p in report.problems]
    assert dict(report.identities)["low"]["expert"] == "low"  # told by the release's low_noise_model/ folder


def test_a_diffusers_layout_expert(ws, tmp_path):
    from model_files import diffusers_layout

    d = diffusers_layout(Path(ws["DIT_LOW"]), tmp_path / "wan2.2_i2v_low_noise_diffusers.safetensors")
    assert "Wan-AI/Wan2.2-I2V-A14B" in only_error(run_preflight({**ws, "DIT_LOW": str(d)}, experts=("low",)),
                                                 "Diffusers-format", d)


def test_fp8_scaled_checkpoint(ws, tiny_wan_dir):
    fp8 = tiny_wan_dir / "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors"
    line = only_error(run_preflight({**ws, "DIT_LOW": str(fp8)}), "fp8_scaled", fp8)
    assert "fp16 expert" in line


def test_bf16_expert_with_fp16_mixed_precision(ws, tiny_wan_dir):
    bf16 = tiny_wan_dir / "wan2.2_i2v_low_noise_14B_bf16.safetensors"
    only_error(run_preflight({**ws, "DIT_LOW": str(bf16)}), "--mixed_precision", bf16)


def test_latents_cached_without_i2v(ws, write_musubi_caches):
    from circle_rotate.musubi.cache_plan import plan_cache

    plan = plan_cache(Path(ws["DATASET_CONFIG"]))
    write_musubi_caches(plan, i2v=False)  # what wan_cache_latents.py writes without --i2v
    line = only_error(run_preflight(ws), "without --i2v", plan.items[0].latent_files[0].parent)
    assert "latents_image" in line and "--refresh-stale" in line


def test_missing_cache(ws):
    config = Path(ws["DATASET_CONFIG"])
    for f in (config.parent / "cache").glob("orbit_b_*"):
        f.unlink()
    line = only_error(run_preflight(ws), "no cache", config)
    assert "1 of 2 clips" in line and "circle-rotate cache" in line


def test_bad_toml(ws):
    config = Path(ws["DATASET_CONFIG"])
    config.write_text(config.read_text().replace('frame_extraction = "head"', 'frame_extraction = "head"\nsource_fps = 30'))
    report = run_preflight(ws)
    assert not report.ok
    lines = [p.one_line() for p in report.errors]
    assert any(str(config) in line and "fix:" in line for line in lines), lines


def test_musubi_missing(ws, monkeypatch):
    import circle_rotate.musubi.preflight as preflight

    monkeypatch.setattr(preflight, "musubi_available", lambda: False)
    line = only_error(run_preflight(ws), "musubi-tuner is not installed", "")
    assert "pip install" in line


def test_same_file_for_both_experts(ws):
    only_error(run_preflight({**ws, "DIT_HIGH": ws["DIT_LOW"]}), "given for both experts", ws["DIT_LOW"])


def test_i2v_sample_prompts_need_a_first_frame(ws, tmp_path):
    prompts = tmp_path / "prompts.txt"
    image = tmp_path / "first.png"
    image.write_bytes(b"png")
    prompts.write_text(f"a car, the camera orbits left --i {image}\na mug on a table, orbit right\n")
    line = only_error(run_preflight({**ws, "SAMPLE_PROMPTS": str(prompts), "T5": str(tmp_path / "t5.pth")}),
                      "carry no first frame", prompts)
    assert "--i" in line


def test_short_disk_for_checkpoints(ws, monkeypatch):
    import circle_rotate.kernel.disk_space as disk_space

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(disk_space.shutil, "disk_usage", lambda p: usage(10**12, 10**12 - 10**7, 10**7))
    only_error(run_preflight(ws), "checkpoints but only", Path(ws["OUTPUT_DIR_LOW"]).parents[1])


def test_finished_output_needs_force(ws):
    out = Path(ws["OUTPUT_DIR_LOW"])
    out.mkdir(parents=True)
    (out / "circle_rotate_l.safetensors").write_bytes(b"x")
    only_error(run_preflight(ws), "already there", out / "circle_rotate_l.safetensors")
    assert run_preflight(ws, force=True).ok


def test_vae_checked_against_musubis_architecture(ws, tmp_path, tiny_musubi_models):
    from safetensors.torch import save_file
    import torch

    assert run_preflight({**ws, "VAE": str(tiny_musubi_models.vae)}).ok
    wrong = tmp_path / "wan2.2_vae.safetensors"
    save_file({"encoder.conv1.weight": torch.zeros(160, 12, 3, 3, 3)}, str(wrong))
    only_error(run_preflight({**ws, "VAE": str(wrong)}), "not the Wan2.1 VAE", wrong)


def test_cli_prints_each_problem_on_one_line_and_exits_2(ws):
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "circle_rotate", "train", "both", "--dry-run",
                           "--dit-low", ws["DIT_HIGH"], "--dit-high", ws["DIT_LOW"], "--vae", ws["VAE"],
                           "--dataset-config", ws["DATASET_CONFIG"], "-o", str(Path(ws["OUTPUT_DIR_LOW"]).parent)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    swapped = [line for line in proc.stdout.splitlines() if "swapped" in line and "blocks swapped" not in line]
    assert len(swapped) == 2 and all(line.startswith("error: ") and "fix: swap" in line for line in swapped)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("circle-rotate train: error:") and "fix:" in last


def test_timestep_ranges_per_expert():
    """Wan2.2 I2V runs the high-noise expert for t >= 900 only: a swapped range is an error."""
    import argparse

    from circle_rotate.musubi.preflight import check_timesteps
    from circle_rotate.musubi.preflight_findings import Findings

    def run(expert, lo, hi):
        f = Findings()
        check_timesteps(f, argparse.Namespace(min_timestep=lo, max_timestep=hi, dit="x.safetensors"), expert=expert,
                        boundary=900)
        return f

    assert not run("high", 900, 1000).problems and not run("low", 0, 900).problems
    published = run("high", None, None)
    assert not published.problems and "as published" in published.notes[0] and "900-1000" in published.notes[0]
    swapped = run("high", 0, 900).problems
    assert [p.severity for p in swapped] == ["error"] and "ranges are swapped" in swapped[0].message
    assert swapped[0].fix.startswith("--min_timestep 900 --max_timestep 1000")
    assert run("low", 900, 1000).problems[0].severity == "error"
    assert run("low", 0, 875).problems[0].severity == "warning"


def test_the_vae_shape_probe_logs_nothing_and_leaves_logging_as_it_was(musubi, caplog):
    """musubi logs "loading <file>" on the root logger when it builds the VAE; for the probe's own
    empty file that is noise (it was a stray INFO line on every train, generate and cache dry run)."""
    import logging

    from circle_rotate.musubi.preflight import vae_shapes

    root = logging.getLogger()
    filters = list(root.filters)
    with caplog.at_level(logging.DEBUG):
        shapes = vae_shapes()
        logging.info("the root logger after the probe")
    assert shapes["encoder.conv1.weight"] == (96, 3, 3, 3, 3)
    assert not [r for r in caplog.records if "empty.safetensors" in r.getMessage()]
    assert "the root logger after the probe" in caplog.text and root.filters == filters


def test_a_dry_run_with_a_safetensors_vae_prints_no_probe_line(ws, tiny_musubi_models):
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "circle_rotate", "train", "both", "--dry-run",
                           "--dit-low", ws["DIT_LOW"], "--dit-high", ws["DIT_HIGH"], "--vae", str(tiny_musubi_models.vae),
                           "--dataset-config", ws["DATASET_CONFIG"], "-o", str(Path(ws["OUTPUT_DIR_LOW"]).parent)],
                          capture_output=True, text=True, env=env)
    assert "Wan2.1 VAE" not in proc.stdout  # the VAE was checked against musubi's shapes, and passed
    assert "empty.safetensors" not in proc.stderr and "INFO root" not in proc.stderr, proc.stderr
