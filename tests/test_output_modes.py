"""Outputs are ordinary files: mode 0o666 less the umask, and a replaced file keeps its mode.

Each kind the project writes is made through its real command under umask 022: a prepared
clip, its caption, manifest and summary plot, a dataset TOML, a merged model, a converted LoRA, and an eval report
(JSON, CSV, PNG). ``mkstemp`` alone would leave every one of them 0600.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from circle_rotate.cli.main import main
from circle_rotate.kernel.atomic import write_text
from circle_rotate.kernel.wan_arch import tiny_config
from circle_rotate.selfcheck.synthetic.lora import write_random_lora
from circle_rotate.selfcheck.synthetic.tiny_wan import write_tiny_wan
from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec, write_footage


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_kind_of_output_is_0644_under_umask_022(tmp_path, umask_022):
    raw = tmp_path / "raw" / "mug"
    video = write_footage(TurntableSpec(name="take", width=160, height=96, frames=30, total_angle_deg=30, seed=3), raw)
    prepared = tmp_path / "prepared"
    assert main(["-q", "prepare", str(raw.parent), "-o", str(prepared), "--frames", "9", "--resolution", "64x64"]) == 0
    assert main(["-q", "caption", str(prepared)]) == 0
    assert main(["-q", "config", str(prepared), "-o", str(tmp_path / "dataset.toml")]) == 0
    base = write_tiny_wan(tmp_path / "base.safetensors", dtype="fp16", seed=1)
    lora = write_random_lora(tmp_path / "lora.safetensors", tiny_config(), rank=4, alpha=1.0, seed=7)
    assert main(["-q", "merge", str(base), "--lora", str(lora), "-o", str(tmp_path / "merged.safetensors")]) == 0
    assert main(["-q", "convert", str(lora), "-o", str(tmp_path / "comfy.safetensors"), "--format", "comfy"]) == 0
    assert main(["-q", "eval", str(video), "--metrics", "drift", "--out", str(tmp_path / "r.json"),
                 "--csv"]) == 0

    clips = sorted(prepared.rglob("*.mp4"))
    written = {
        "clip": clips[0] if clips else None,
        "caption": next(prepared.rglob("*.txt"), None),
        "manifest": prepared / "manifest.jsonl",
        "prepare summary": prepared / "prepare_summary.json",
        "prepare plot": prepared / "prepare_summary.png",
        "toml": tmp_path / "dataset.toml",
        "merged model": tmp_path / "merged.safetensors",
        "converted lora": tmp_path / "comfy.safetensors",
        "json report": tmp_path / "r.json",
        "csv report": tmp_path / "r.csv",
        "png report": tmp_path / "r.png",
    }
    missing = sorted(k for k, p in written.items() if p is None or not p.is_file())
    assert not missing, f"not written: {missing}"
    modes = {k: oct(mode(p)) for k, p in written.items()}
    assert modes == {k: "0o644" for k in written}


def test_a_replaced_file_keeps_its_mode_and_a_new_one_follows_the_umask(tmp_path, umask_022):
    out = tmp_path / "notes.txt"
    write_text(out, "one\n")
    assert mode(out) == 0o644
    os.chmod(out, 0o640)
    write_text(out, "two\n")
    assert mode(out) == 0o640 and out.read_text() == "two\n"
    os.umask(0o077)
    write_text(tmp_path / "private.txt", "x\n")
    assert mode(tmp_path / "private.txt") == 0o600


def test_force_keeps_the_mode_of_the_replaced_lora(tmp_path, umask_022):
    lora = write_random_lora(tmp_path / "lora.safetensors", tiny_config(), rank=4, alpha=1.0, seed=7)
    out = tmp_path / "comfy.safetensors"
    assert main(["-q", "convert", str(lora), "-o", str(out), "--format", "comfy"]) == 0
    os.chmod(out, 0o664)
    assert main(["-q", "convert", str(lora), "-o", str(out), "--format", "comfy", "--force"]) == 0
    assert mode(out) == 0o664
