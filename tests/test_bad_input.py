"""Bad input, one row per case: what a careless or unlucky user types, and what must happen.

Each row runs the real CLI in-process (``circle_rotate.cli.main.main``) on files made once per
module (a tiny Wan2.2 expert pair ``B``, LoRAs ``L`` as the demo makes them, a prepared folder
``P`` cut from a synthetic turntable video, small evaluation sets) and asserts, for every case:

- the exit status: 2, or 1 where the command documents it (``eval``
  when a video cannot be evaluated, ``inspect`` on a LoRA holding NaN/inf);
- exactly one line on stderr, naming the file, key or value (and at most one "fix:");
- no traceback;
- where the row says so, the typed error (:mod:`circle_rotate.kernel.errors`) with its fields;
- nothing written, nothing changed: every file of the fixture tree (inputs, outputs, the
  working folder) is byte-identical before and after, and no file appears.

Issue 17's cases are marked ``#17`` in the row ids. A full disk is a real tmpfs filled to the
last block where this machine can mount one, else an injected ``ENOSPC`` at the final fsync.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional, Sequence

import numpy as np
import pytest

import circle_rotate.cli.main as cli_main
from circle_rotate.kernel import errors as E
from circle_rotate.kernel.musubi_env import musubi_available


@dataclass(frozen=True)
class Case:
    """One bad input: ``argv(w)`` builds the command line from the fixture namespace ``w``."""

    id: str
    argv: Callable[[SimpleNamespace], Sequence[object]]
    code: int = 2
    error: Optional[type] = None  # the typed error the command raised
    names: Callable[[SimpleNamespace], Sequence[object]] = lambda w: ()  # what the stderr line must name
    fields: Callable[[SimpleNamespace], dict] = lambda w: {}  # attributes the typed error must carry
    full_disk: bool = False
    needs_musubi: bool = False  # the command reads through musubi-tuner before it can refuse


# ---------------------------------------------------------------- fixtures, made once per module


def _mount_full_tmpfs(folder: Path) -> bool:
    """A 256 KiB tmpfs at ``folder``, filled to the last block; False where mounting is not allowed."""
    folder.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True).returncode:
        return False
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return True


def _toml(w: SimpleNamespace, name: str, old: str = "", new: str = "") -> Path:
    path = w.root / "tomls" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(w.good_toml.read_text().replace(old, new) if old else w.good_toml.read_text())
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from safetensors.torch import load_file, save_file
    import torch

    from circle_rotate.kernel.video_io import write_video
    from circle_rotate.kernel.wan_arch import tiny_config
    from circle_rotate.selfcheck.synthetic.lora import write_random_lora
    from circle_rotate.selfcheck.synthetic.tiny_wan import write_release_shards, write_tiny_wan
    from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec, write_turntable

    root = tmp_path_factory.mktemp("bad_input")
    w = SimpleNamespace(root=root, cwd=root / "cwd")
    w.cwd.mkdir()
    models = root / "models"
    w.Bh = write_tiny_wan(models / "wan2.2_i2v_high_noise_14B_fp16.safetensors", dtype="fp16", seed=1)
    w.Bl = write_tiny_wan(models / "wan2.2_i2v_low_noise_14B_fp16.safetensors", dtype="fp16", seed=2)
    w.Lh = write_random_lora(models / "circle_rotate_h.safetensors", tiny_config(), rank=8, seed=0)
    w.Ll = write_random_lora(models / "circle_rotate_l.safetensors", tiny_config(), rank=8, seed=1)
    tensors = load_file(str(w.Lh))
    up = next(k for k in sorted(tensors) if k.endswith("lora_up.weight"))
    alpha = next(k for k in sorted(tensors) if k.endswith(".alpha"))
    w.up_key, w.alpha_key = up, alpha
    for name, key, value in (("nan", up, float("nan")), ("inf", up, float("inf")), ("nanalpha", alpha, float("nan"))):
        bad = {k: v.clone() for k, v in tensors.items()}
        bad[key].view(-1)[0] = value
        path = models / f"lora_{name}.safetensors"
        save_file(bad, str(path))
        setattr(w, f"L{name}", path)
    w.Lhuge = write_random_lora(models / "huge_alpha.safetensors", tiny_config(), rank=8, seed=2, dtype=torch.float16,
                                alpha=1e12)  # finite, but folded into fp16 weights it overflows
    w.truncated = models / "truncated.safetensors"
    w.truncated.write_bytes(w.Lh.read_bytes()[:5000])
    w.pickle = models / "lora.pt"
    w.pickle.write_bytes(b"\x80\x04K\x01.")
    w.renamed_pickle = models / "renamed_pickle.safetensors"  # torch.save's zip under a safetensors name
    torch.save({"blocks.0.self_attn.q.weight": torch.zeros(2, 2)}, str(w.renamed_pickle))
    # an empty GGUF v3 file (magic, version, 0 tensors, 0 key-values), as ComfyUI-GGUF's experts start
    w.gguf = models / "wan2.2_i2v_high_noise_14B_Q8_0.gguf"
    w.gguf.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(16))
    # the official release's layout with its second shard lost (an interrupted download)
    first = write_release_shards(w.Bh, root / "Wan2.2-I2V-A14B" / "high_noise_model", shards=3)
    w.lost_shard = sorted(first.parent.glob("*-of-*.safetensors"))[1]
    w.lost_shard.unlink()
    w.first_shard = first

    raw = root / "raw"
    spec = TurntableSpec(name="toy", width=160, height=96, fps=16.0, frames=40, subject="car", direction="right",
                         total_angle_deg=70, seed=11)
    files = write_turntable(spec, root / "truth")
    raw.mkdir()
    w.raw_video = files.video.replace(raw / files.video.name)
    w.prep_args = ["--frames", "17", "--fps", "16", "--resolution", "160x96", "--qc", "off", "--jobs", "1"]
    w.P = root / "P"
    assert cli_main.main(["-q", "prepare", str(raw), "-o", str(w.P), *w.prep_args]) == 0
    w.raw = raw
    w.clip = sorted((w.P / "videos").glob("*.mp4"))[0]
    w.manifest = w.P / "manifest.jsonl"
    assert cli_main.main(["-q", "caption", str(w.P)]) == 0
    # The same folder with one clip's manifest line deleted (the clip itself still on disk).
    w.Pbad = root / "Pbad"
    shutil.copytree(w.P, w.Pbad)
    lines = (w.Pbad / "manifest.jsonl").read_text().splitlines(keepends=True)
    dropped = next(i for i, line in enumerate(lines) if json.loads(line).get("clip") == f"videos/{w.clip.name}")
    (w.Pbad / "manifest.jsonl").write_text("".join(lines[:dropped] + lines[dropped + 1:]))
    assert cli_main.main(["-q", "config", str(w.P), "-o", str(root / "good.toml")]) == 0
    w.good_toml = root / "good.toml"
    w.bad_folder_toml = root / "pbad.toml"
    w.bad_folder_toml.write_text(w.good_toml.read_text().replace(w.P.as_posix(), w.Pbad.as_posix()))
    w.unknown_key_toml = root / "unknown_key.toml"  # musubi logs its verdict at ERROR before raising it
    w.unknown_key_toml.write_text(w.good_toml.read_text() + "\n[extra]\nkey = 1\n")
    w.toml_folder = root / "dataset.toml"
    w.toml_folder.mkdir()

    ev = root / "eval"
    for side in ("a", "b"):
        write_turntable(TurntableSpec(name="o0", width=128, height=96, frames=9, subject="car", seed=0), ev / side)
    write_turntable(TurntableSpec(name="x9", width=128, height=96, frames=9, subject="box", seed=3), ev / "other")
    write_video(ev / "thumb" / "t16.mp4", [np.full((16, 16, 3), 20 * i, np.uint8) for i in range(8)], fps=16)
    w.ev = ev
    w.results = ev / "earlier" / "compare.json"  # a results file named like compare's own output
    assert cli_main.main(["-q", "eval", str(ev / "a"), "--out", str(w.results)]) == 0

    w.text = root / "notes.txt"
    w.text.write_text("not a model\n")
    w.binary = root / "blob.bin"
    w.binary.write_bytes(bytes(range(256)) * 8)
    w.quote_csv = root / "open_quote.csv"
    w.quote_csv.write_text('match,subject\ntoy,"red car\nother,blue car\n')
    w.empty = root / "empty"
    w.empty.mkdir()
    w.fifo = root / "pipe"
    os.mkfifo(w.fifo)
    w.existing = root / "existing.safetensors"
    w.existing.write_bytes(b"keep me")
    w.existing_json = root / "existing.json"
    w.existing_json.write_text("{}\n")
    w.full = root / "full"
    w.tmpfs = _mount_full_tmpfs(w.full)
    try:
        yield w
    finally:
        if w.tmpfs:
            subprocess.run(["umount", "-l", str(w.full)], check=False)  # lazy: a lingering worker may hold it


def _tree(root: Path) -> dict:
    """Every entry under ``root``: a regular file's SHA-256, else its kind (a FIFO is never opened)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            mode = p.lstat().st_mode
            if stat.S_ISREG(mode):
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[str(p)] = "dir" if stat.S_ISDIR(mode) else oct(stat.S_IFMT(mode))
    return out


# ---------------------------------------------------------------- the table

S = str  # readability in the rows below


def merge(w, *extra, lora=None, out=None, base=None):
    return ["merge", base or w.Bh, "--lora", lora or w.Lh, "--out", out or w.root / "out" / "m.safetensors", *extra]


CASES = [
    # 1. An input overwritten (never, --force or not)
    Case("#17 config -o the manifest --force", lambda w: ["config", w.P, "-o", w.manifest, "--force"],
         error=E.InputOverwriteError, names=lambda w: [w.manifest]),
    Case("#17 config -o a training clip --force", lambda w: ["config", w.P, "-o", w.clip, "--force"],
         error=E.InputOverwriteError, names=lambda w: [w.clip]),
    Case("merge --out the base --force", lambda w: merge(w, "--force", out=w.Bh), error=E.InputOverwriteError,
         names=lambda w: [w.Bh], fields=lambda w: {"source": S(w.Bh)}),
    Case("merge --out the LoRA --force", lambda w: merge(w, "--force", out=w.Lh), error=E.InputOverwriteError),
    Case("convert onto its source --force", lambda w: ["convert", w.Lh, "-o", w.Lh, "--format", "comfy", "--force"],
         error=E.InputOverwriteError),
    Case("combine onto an input --force", lambda w: ["combine", "--lora", w.Lh, "--lora", w.Ll, "--out", w.Ll, "--force"],
         error=E.InputOverwriteError),
    Case("resize onto its source --force", lambda w: ["resize", w.Lh, "-o", w.Lh, "--rank", "2", "--force"],
         error=E.InputOverwriteError),
    Case("caption --jsonl onto a clip --overwrite", lambda w: ["caption", w.P, "--jsonl", w.clip, "--force"],
         error=E.InputOverwriteError, names=lambda w: [w.clip]),
    Case("caption --jsonl onto the manifest", lambda w: ["caption", w.P, "--jsonl", w.manifest, "--force"],
         error=E.InputOverwriteError),
    Case("caption --ext .mp4 (would replace the clips)", lambda w: ["caption", w.P, "--ext", ".mp4", "--force"],
         names=lambda w: [".mp4"]),
    Case("eval compare --out over the results JSON it reads --force",
         lambda w: ["eval", "compare", w.results, w.ev / "b", "--out", w.results.parent, "--force"],
         error=E.InputOverwriteError, names=lambda w: [w.results]),

    # 2. Non-finite weights
    Case("#17 merge --lora L:1e309", lambda w: merge(w, lora=f"{w.Lh}:1e309"), names=lambda w: ["1e309", "strength"]),
    Case("#17 merge --lora L:nan", lambda w: merge(w, lora=f"{w.Lh}:nan"), names=lambda w: ["nan", "strength"]),
    Case("#17 merge --lora L:-inf", lambda w: merge(w, lora=f"{w.Lh}:-inf"), names=lambda w: ["-inf", "strength"]),
    Case("#17 merge --lora L:1e30 (overflows fp16)", lambda w: merge(w, lora=f"{w.Lh}:1e30"), error=E.BadStrengthError,
         names=lambda w: ["strength", "float16"], fields=lambda w: {"value": 1e30}),
    Case("#17 merge a LoRA holding NaN", lambda w: merge(w, lora=w.Lnan), error=E.NonFiniteError,
         names=lambda w: [w.Lnan, w.up_key], fields=lambda w: {"key": w.up_key}),
    Case("#17 merge a LoRA holding inf", lambda w: merge(w, lora=w.Linf), error=E.NonFiniteError,
         names=lambda w: [w.Linf], fields=lambda w: {"key": w.up_key}),
    Case("#17 merge a LoRA with a NaN alpha", lambda w: merge(w, lora=w.Lnanalpha), error=E.NonFiniteError,
         names=lambda w: [w.Lnanalpha], fields=lambda w: {"key": w.alpha_key}),
    Case("#17 combine --lora L:1e309", lambda w: ["combine", "--lora", f"{w.Lh}:1e309", "--lora", w.Ll,
                                                  "--out", w.root / "out" / "c.safetensors"], names=lambda w: ["1e309"]),
    Case("combine a NaN LoRA", lambda w: ["combine", "--lora", w.Lnan, "--lora", w.Ll, "--out", w.root / "out" / "c.safetensors"],
         error=E.NonFiniteError, names=lambda w: [w.Lnan]),
    Case("combine --lora L:1e40 (overflows its fp32)", lambda w: ["combine", "--lora", f"{w.Lh}:1e40", "--lora", w.Ll,
                                                                  "--out", w.root / "out" / "c.safetensors"],
         error=E.BadStrengthError, names=lambda w: ["strength"]),
    Case("#17 merge-pair --strength-high 1e309",
         lambda w: ["merge-pair", "--high", w.Bh, w.Lh, "--low", w.Bl, w.Ll, "--out", w.root / "out" / "pair",
                    "--strength-high", "1e309"], names=lambda w: ["--strength-high", "1e309"]),
    Case("merge-pair --strength-low nan",
         lambda w: ["merge-pair", "--high", w.Bh, w.Lh, "--low", w.Bl, w.Ll, "--out", w.root / "out" / "pair",
                    "--strength-low", "nan"], names=lambda w: ["--strength-low"]),
    Case("#17 merge --alpha-if-missing 1e309", lambda w: merge(w, "--alpha-if-missing", "1e309"),
         error=E.BadStrengthError, names=lambda w: ["--alpha-if-missing", "1e309"]),
    Case("merge --alpha-if-missing nan", lambda w: merge(w, "--alpha-if-missing", "nan"), error=E.BadStrengthError),
    Case("merge --alpha-if-missing -1", lambda w: merge(w, "--alpha-if-missing", "-1"), error=E.BadStrengthError),
    Case("merge --alpha-if-missing abc", lambda w: merge(w, "--alpha-if-missing", "abc"), error=E.BadStrengthError,
         names=lambda w: ["abc"]),
    Case("#17 inspect flags a NaN LoRA (exit 1 after the report)", lambda w: ["inspect", w.Lnan], code=1,
         names=lambda w: [w.Lnan, w.up_key]),
    Case("#17 resize a NaN LoRA (was LinAlgError)", lambda w: ["resize", w.Lnan, "-o", w.root / "out" / "r.safetensors",
                                                               "--rank", "2"], error=E.NonFiniteError),
    Case("convert to diffusers: the folded alpha overflows fp16", lambda w: ["convert", w.Lhuge, "-o", w.root / "out" / "d.safetensors",
                                                                            "--format", "diffusers"],
         error=E.NonFiniteError, names=lambda w: ["overflows"]),
    Case("convert a NaN LoRA", lambda w: ["convert", w.Lnan, "-o", w.root / "out" / "c.safetensors", "--format", "comfy"],
         error=E.NonFiniteError),

    # 3. --force replaces regular files only
    Case("#17 merge --out a FIFO --force (was /dev/full)", lambda w: merge(w, "--force", out=w.fifo),
         error=E.NotARegularFileError, names=lambda w: [w.fifo], fields=lambda w: {"kind": "pipe"}),
    Case("merge --out a folder --force", lambda w: merge(w, "--force", out=w.empty), error=E.NotARegularFileError,
         fields=lambda w: {"kind": "folder"}),
    Case("convert --out a FIFO --force", lambda w: ["convert", w.Lh, "-o", w.fifo, "--format", "comfy", "--force"],
         error=E.NotARegularFileError),
    Case("config -o a FIFO --force", lambda w: ["config", w.P, "-o", w.fifo, "--force"], error=E.NotARegularFileError),

    # 4. Tracebacks instead of one line
    Case("#17 merge --out under a regular file", lambda w: merge(w, out=w.text / "m.safetensors"),
         error=E.UnwritableOutputError, names=lambda w: [w.text]),
    Case("#17 merge-pair --out under a regular file",
         lambda w: ["merge-pair", "--high", w.Bh, w.Lh, "--low", w.Bl, w.Ll, "--out", w.text / "pair"],
         error=E.UnwritableOutputError, names=lambda w: [w.text]),
    Case("#17 prepare RAW FILE", lambda w: ["prepare", w.raw, "-o", w.text, *w.prep_args], error=E.UnwritableOutputError,
         names=lambda w: [w.text]),
    Case("#17 eval compare --out under a file", lambda w: ["eval", "compare", w.ev / "a", w.ev / "b", "--out", w.text / "r"],
         error=E.UnwritableOutputError, names=lambda w: [w.text]),
    Case("eval --out under a file", lambda w: ["eval", w.ev / "a", "--out", w.text / "r.json"], error=E.UnwritableOutputError),
    Case("#17 merge --out under /proc", lambda w: merge(w, out="/proc/m.safetensors"), error=E.UnwritableOutputError,
         names=lambda w: ["/proc"]),
    Case("#17 config -o under /proc", lambda w: ["config", w.P, "-o", "/proc/dataset.toml"], error=E.UnwritableOutputError,
         names=lambda w: ["/proc"]),
    Case("#17 merge, disk full", lambda w: merge(w, out=w.full / "m.safetensors"), error=E.DiskFullError,
         names=lambda w: [w.full / "m.safetensors", "no space left on"], full_disk=True),
    Case("#17 convert, disk full", lambda w: ["convert", w.Lh, "-o", w.full / "c.safetensors", "--format", "comfy"],
         error=E.DiskFullError, names=lambda w: [w.full / "c.safetensors"], full_disk=True),
    Case("#17 config, disk full", lambda w: ["config", w.P, "-o", w.full / "d.toml"], error=E.DiskFullError,
         names=lambda w: [w.full / "d.toml"], full_disk=True),
    Case("#17 prepare, disk full", lambda w: ["prepare", w.raw, "-o", w.full / "prep", *w.prep_args], error=E.DiskFullError,
         names=lambda w: [w.full], full_disk=True),
    Case("#17 eval, disk full", lambda w: ["eval", w.ev / "a", "--out", w.full / "r.json"], error=E.DiskFullError,
         names=lambda w: [w.full / "r.json"], full_disk=True),
    Case("eval compare, disk full", lambda w: ["eval", "compare", w.ev / "a", w.ev / "b", "--out", w.full / "rep"],
         error=E.DiskFullError, names=lambda w: [w.full / "rep"], full_disk=True),
    Case("combine, disk full", lambda w: ["combine", "--lora", w.Lh, "--lora", f"{w.Lh}:0.5", "--out", w.full / "c.safetensors"],
         error=E.DiskFullError, full_disk=True),
    Case("#17 check-config a binary file", lambda w: ["check-config", w.binary, "--no-musubi"], names=lambda w: [w.binary]),
    Case("#17 check-config caption_extension without a dot",
         lambda w: ["check-config", _toml(w, "ext.toml", 'caption_extension = ".txt"', 'caption_extension = "txt"'),
                    "--no-musubi"], names=lambda w: ["caption_extension", "ext.toml"]),
    Case("#17 check-config source_fps = 0.0",
         lambda w: ["check-config", _toml(w, "fps.toml", "source_fps = 16.0", "source_fps = 0.0"), "--no-musubi"],
         names=lambda w: ["source_fps", "fps.toml"]),
    Case("#17 check-config resolution = [0, -5]",
         lambda w: ["check-config", _toml(w, "res.toml", "resolution = [160, 96]", "resolution = [0, -5]"), "--no-musubi"],
         names=lambda w: ["resolution", "[0, -5]"]),
    Case("check-config batch_size = 0",
         lambda w: ["check-config", _toml(w, "batch.toml", "batch_size = 1", "batch_size = 0"), "--no-musubi"],
         names=lambda w: ["batch_size"]),
    Case("check-config target_frames = [0]",
         lambda w: ["check-config", _toml(w, "frames.toml", "target_frames = [17]", "target_frames = [0]"), "--no-musubi"],
         names=lambda w: ["target_frames"]),
    Case("#17 config --ext txt", lambda w: ["config", w.P, "--ext", "txt"], error=E.ConfigValueError,
         names=lambda w: ["--ext", "txt"], fields=lambda w: {"key": "--ext", "value": "txt"}),
    Case("#17 caption --map a binary file", lambda w: ["caption", w.P, "--map", w.binary], names=lambda w: [w.binary]),
    Case("#17 eval a 16x16 video (exit 1: an error row)", lambda w: ["eval", w.ev / "thumb"], code=1,
         names=lambda w: ["t16.mp4", "16x16"]),

    # 5. Validate first, write last (the default output P/dataset.toml must not appear)
    Case("#17 config --repeats 0", lambda w: ["config", w.P, "--repeats", "0"], error=E.ConfigValueError,
         names=lambda w: ["--repeats"], fields=lambda w: {"key": "--repeats", "value": 0}),
    Case("#17 config --batch-size -1", lambda w: ["config", w.P, "--batch-size", "-1"], error=E.ConfigValueError,
         names=lambda w: ["--batch-size", "-1"]),
    Case("#17 config --relative-to a missing folder", lambda w: ["config", w.P, "--relative-to", w.root / "nowhere"],
         error=E.ConfigValueError, names=lambda w: [w.root / "nowhere"]),
    Case("#17 prepare an empty folder (writes nothing)", lambda w: ["prepare", w.empty, "-o", w.root / "out" / "prep"],
         names=lambda w: [w.empty]),
    Case("#17 eval compare with no common names (paired first)",
         lambda w: ["eval", "compare", w.ev / "a", w.ev / "other", "--out", w.root / "out" / "rep"],
         names=lambda w: ["namesake"]),

    # 6. Prepared-folder consistency (a clip's manifest line deleted)
    Case("#17 caption on a folder missing a manifest line", lambda w: ["caption", w.Pbad], error=E.ManifestMismatchError,
         names=lambda w: [w.Pbad / "manifest.jsonl", w.clip.name, "--repair"],
         fields=lambda w: {"unlisted": (f"videos/{w.clip.name}",)}),
    Case("#17 config on a folder missing a manifest line", lambda w: ["config", w.Pbad], error=E.ManifestMismatchError,
         names=lambda w: [w.clip.name]),
    Case("#17 check-config on a folder missing a manifest line", lambda w: ["check-config", w.bad_folder_toml, "--no-musubi"],
         names=lambda w: [w.clip.name, "--repair"]),
    Case("#17 prepare re-run on a folder missing a manifest line", lambda w: ["prepare", w.raw, "-o", w.Pbad, *w.prep_args],
         error=E.ManifestMismatchError, names=lambda w: [w.clip.name, "--repair"]),
    Case("#17 caption --map with an unterminated quote", lambda w: ["caption", w.P, "--map", w.quote_csv],
         names=lambda w: [w.quote_csv, "quote"]),

    # 7. Messages that mislead
    Case("#17 --lora FILE:abc names the strength", lambda w: merge(w, lora=f"{w.Lh}:abc"), names=lambda w: ["abc", "strength"]),
    Case("#17 a folder given as --base", lambda w: ["merge", w.empty, "--lora", w.Lh, "--out", w.root / "out" / "m.safetensors"],
         error=E.NotARegularFileError, names=lambda w: [w.empty], fields=lambda w: {"kind": "folder"}),
    Case("#17 a folder given to inspect", lambda w: ["inspect", w.empty], error=E.NotARegularFileError),
    Case("merge into a sharded expert with a shard missing", lambda w: merge(w, base=w.first_shard),
         names=lambda w: [w.first_shard, w.lost_shard.name, "shard 2 of"]),
    Case("inspect a sharded expert's folder with a shard missing", lambda w: ["inspect", w.first_shard.parent],
         names=lambda w: [w.lost_shard.name]),
    Case("a folder given as --lora", lambda w: merge(w, lora=w.empty), error=E.NotARegularFileError),
    Case("a FIFO given as --map", lambda w: ["caption", w.P, "--map", w.fifo], error=E.NotARegularFileError),
    Case("#17 prepare --jobs -1 names --jobs only", lambda w: ["prepare", w.raw, "-o", w.root / "out" / "prep", "--jobs", "-1"],
         names=lambda w: ["--jobs -1"]),
    Case("#17 eval --jobs -1 refused as prepare does", lambda w: ["eval", w.ev / "a", "--jobs", "-1"],
         error=E.ConfigValueError, names=lambda w: ["--jobs"]),
    Case("#17 one 'fix:' per line (prepare --frames 80)", lambda w: ["prepare", w.raw, "-o", w.root / "out" / "prep",
                                                                    "--frames", "80"], names=lambda w: ["--frames"]),

    # Other mistakes a careless user makes, command by command
    Case("merge: base missing", lambda w: ["merge", w.root / "nope.safetensors", "--lora", w.Lh,
                                           "--out", w.root / "out" / "m.safetensors"],
         names=lambda w: ["nope.safetensors"]),
    Case("merge: LoRA missing", lambda w: merge(w, lora=w.root / "gone.safetensors"), names=lambda w: ["gone.safetensors"]),
    Case("merge: output exists, no --force", lambda w: merge(w, out=w.existing), names=lambda w: [w.existing, "--force"]),
    Case("merge: base and LoRA swapped", lambda w: ["merge", w.Lh, "--lora", w.Bh, "--out", w.root / "out" / "m.safetensors"],
         names=lambda w: [w.Lh]),
    Case("merge: a text file as the LoRA", lambda w: merge(w, lora=w.text), names=lambda w: [w.text]),
    Case("merge: a truncated LoRA", lambda w: merge(w, lora=w.truncated), names=lambda w: [w.truncated]),
    Case("merge: a pickle LoRA", lambda w: merge(w, lora=w.pickle), names=lambda w: [w.pickle]),
    Case("merge: a torch.save checkpoint named .safetensors", lambda w: merge(w, lora=w.renamed_pickle),
         names=lambda w: [w.renamed_pickle, "pickle"]),
    Case("merge: a GGUF expert", lambda w: ["merge", w.gguf, "--lora", w.Lh, "--out", w.root / "out" / "m.safetensors"],
         names=lambda w: [w.gguf, "GGUF", "LoraLoaderModelOnly"]),
    Case("merge: unknown --dtype", lambda w: merge(w, "--dtype", "fp64"), names=lambda w: ["fp64"]),
    Case("merge: no --lora", lambda w: ["merge", w.Bh, "--out", w.root / "out" / "m.safetensors"],
         names=lambda w: ["--lora"]),
    Case("merge-pair: experts swapped",
         lambda w: ["merge-pair", "--high", w.Bl, w.Lh, "--low", w.Bh, w.Ll, "--out", w.root / "out" / "pair"],
         names=lambda w: ["--high"]),
    Case("merge-pair: an expert missing",
         lambda w: ["merge-pair", "--high", w.root / "no_high.safetensors", w.Lh, "--low", w.Bl, w.Ll,
                    "--out", w.root / "out" / "pair"], names=lambda w: ["no_high.safetensors"]),
    Case("convert: source missing", lambda w: ["convert", w.root / "gone.safetensors", "-o", w.root / "out" / "c.safetensors",
                                               "--format", "comfy"], names=lambda w: ["gone.safetensors"]),
    Case("convert: output exists, no --force", lambda w: ["convert", w.Lh, "-o", w.existing, "--format", "comfy"],
         names=lambda w: [w.existing]),
    Case("convert: unknown --to", lambda w: ["convert", w.Lh, "-o", w.root / "out" / "c.safetensors", "--format", "kohya"],
         names=lambda w: ["kohya"]),
    Case("convert: a base model as the LoRA", lambda w: ["convert", w.Bh, "-o", w.root / "out" / "c.safetensors", "--format", "comfy"],
         names=lambda w: [w.Bh]),
    Case("resize: --rank 0", lambda w: ["resize", w.Lh, "-o", w.root / "out" / "r.safetensors", "--rank", "0"],
         names=lambda w: ["--rank"]),
    Case("resize: --rank abc", lambda w: ["resize", w.Lh, "-o", w.root / "out" / "r.safetensors", "--rank", "abc"],
         names=lambda w: ["abc"]),
    Case("combine: one LoRA only", lambda w: ["combine", "--lora", w.Lh, "--out", w.root / "out" / "c.safetensors"],
         names=lambda w: ["two"]),
    Case("inspect: a missing file", lambda w: ["inspect", w.root / "gone.safetensors"], names=lambda w: ["gone.safetensors"]),
    Case("inspect: a text file", lambda w: ["inspect", w.text], names=lambda w: [w.text]),
    Case("config: a folder prepare never wrote", lambda w: ["config", w.raw], names=lambda w: [w.raw]),
    Case("config: a missing folder", lambda w: ["config", w.root / "nowhere"], names=lambda w: ["nowhere"]),
    Case("config: output exists, no --force", lambda w: ["config", w.P, "-o", w.existing], names=lambda w: [w.existing]),
    Case("config: --jsonl missing", lambda w: ["config", w.P, "--jsonl", w.root / "none.jsonl"],
         names=lambda w: ["none.jsonl"]),
    Case("config: --resolution 0x480", lambda w: ["config", w.P, "--resolution", "0x480"], names=lambda w: ["0x480"]),
    Case("check-config: a missing file", lambda w: ["check-config", w.root / "none.toml"], names=lambda w: ["none.toml"]),
    Case("check-config: a folder", lambda w: ["check-config", w.empty], error=E.NotARegularFileError),
    Case("check-config: broken TOML", lambda w: ["check-config", _toml(w, "broken.toml", "[general]", "[general"),
                                                 "--no-musubi"], names=lambda w: ["broken.toml"]),
    Case("caption: a folder prepare never wrote", lambda w: ["caption", w.raw], names=lambda w: [w.raw]),
    Case("caption: --map missing", lambda w: ["caption", w.P, "--map", w.root / "none.csv"], names=lambda w: ["none.csv"]),
    Case("caption: --ext without a dot", lambda w: ["caption", w.P, "--ext", "txt"], names=lambda w: ["--ext"]),
    Case("caption: --lang unknown", lambda w: ["caption", w.P, "--lang", "fr"], names=lambda w: ["fr"]),
    Case("prepare: raw folder missing", lambda w: ["prepare", w.root / "noraw", "-o", w.root / "out" / "prep"],
         names=lambda w: ["noraw"]),
    Case("prepare: output is the raw folder", lambda w: ["prepare", w.raw, "-o", w.raw], names=lambda w: [w.raw]),
    Case("prepare: a prepared folder's clips as the raw footage", lambda w: ["prepare", w.P / "videos", "-o", w.P, *w.prep_args],
         names=lambda w: [w.P / "videos"]),
    Case("prepare: --fps 0", lambda w: ["prepare", w.raw, "-o", w.root / "out" / "prep", "--fps", "0"], names=lambda w: ["--fps"]),
    Case("prepare: --resolution abc", lambda w: ["prepare", w.raw, "-o", w.root / "out" / "prep", "--resolution", "abc"],
         names=lambda w: ["abc"]),
    Case("prepare with no output folder", lambda w: ["prepare", w.raw], names=lambda w: ["-o"]),
    Case("prepare --dry-run on an empty folder", lambda w: ["prepare", w.empty, "-o", w.root / "out" / "prep", "--dry-run"],
         names=lambda w: [w.empty]),
    Case("eval: an empty folder", lambda w: ["eval", w.empty], names=lambda w: [w.empty]),
    Case("eval: a missing video (a usage error, as a missing folder is)", lambda w: ["eval", w.root / "gone.mp4"],
         names=lambda w: ["gone.mp4"]),
    Case("eval: --out exists, no --force", lambda w: ["eval", w.ev / "a", "--out", w.existing_json],
         names=lambda w: [w.existing_json, "--force"]),
    Case("eval: --out not .json", lambda w: ["eval", w.ev / "a", "--out", w.root / "out" / "r.txt"], names=lambda w: ["r.txt"]),
    Case("eval: --csv without --out", lambda w: ["eval", w.ev / "a", "--csv"], names=lambda w: ["--csv"]),
    Case("eval: unknown metric", lambda w: ["eval", w.ev / "a", "--metrics", "sharpness"], names=lambda w: ["sharpness"]),
    Case("eval compare: one side missing", lambda w: ["eval", "compare", w.ev / "a", w.root / "nolora"],
         names=lambda w: ["nolora"]),
    Case("eval compare: one side only", lambda w: ["eval", "compare", w.ev / "a"], names=lambda w: ["compare"]),
    Case("demo: --out not empty", lambda w: ["demo", "--out", w.P, "--no-smoke"], names=lambda w: [w.P]),
    Case("demo: --out a file", lambda w: ["demo", "--out", w.text, "--no-smoke"], error=E.UnwritableOutputError,
         names=lambda w: [w.text]),
    Case("smoke: --work a file", lambda w: ["smoke", "-o", w.text], error=E.UnwritableOutputError, names=lambda w: [w.text]),
    Case("train: a binary dataset config", lambda w: ["train", "both", "--dataset-config", w.binary, "--dry-run"],
         names=lambda w: [w.binary]),
    Case("generate: --prompts missing", lambda w: ["generate", w.root / "none.txt", "--out", w.root / "out" / "gen",
                                                   "--dry-run"], names=lambda w: ["none.txt"], needs_musubi=True),
    Case("generate: --prompts a binary file", lambda w: ["generate", w.binary, "--out", w.root / "out" / "gen",
                                                         "--dry-run"], names=lambda w: [w.binary], needs_musubi=True),
    Case("cache: a binary dataset config", lambda w: ["cache", "--dataset-config", w.binary, "--dry-run"],
         names=lambda w: [w.binary], needs_musubi=True),
    Case("cache: a folder named as the dataset config", lambda w: ["cache", "--dataset-config", w.toml_folder,
                                                                   "--dry-run"],
         names=lambda w: [w.toml_folder, "is a folder, not a dataset TOML"]),
    Case("cache: a table musubi does not know", lambda w: ["cache", "--dataset-config", w.unknown_key_toml,
                                                          "--dry-run"],
         names=lambda w: [w.unknown_key_toml, "extra"], needs_musubi=True),
]


def _run(argv, capfd):
    """``main(argv)`` in-process: (exit status, stderr, the exception the command raised, if any)."""
    raised = []
    real = cli_main.build_parser

    def spying_parser():  # records the command's exception on its way to main's handler
        parser = real()
        parse = parser.parse_args

        def parse_args(args=None, namespace=None):
            ns = parse(args, namespace)
            func = getattr(ns, "func", None)
            if func is not None:
                def run(a, _f=func):
                    try:
                        return _f(a)
                    except BaseException as exc:
                        raised.append(exc)
                        raise
                ns.func = run
            return ns

        parser.parse_args = parse_args
        return parser

    cli_main.build_parser = spying_parser
    try:
        code = cli_main.main(["-q", *map(str, argv)])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    finally:
        cli_main.build_parser = real
    return code, capfd.readouterr().err, (raised[0] if raised else None)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, world, capfd, monkeypatch):
    if case.needs_musubi and not musubi_available():
        pytest.skip("musubi-tuner not installed: this command reads its input through it")
    monkeypatch.chdir(world.cwd)
    if case.full_disk and not world.tmpfs:  # no tmpfs here: the disk fills at the final fsync
        def enospc(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(os, "fsync", enospc)
    argv = case.argv(world)
    capfd.readouterr()
    before = _tree(world.root)
    code, err, raised = _run(argv, capfd)
    after = _tree(world.root)
    for new in sorted(set(after) - set(before), reverse=True):  # a failing row must not spoil the next ones
        p = Path(new)
        p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == case.code, f"exit {code}, stderr: {err}"
    assert len(lines) == 1, f"stderr must be one line, got: {err!r}"
    line = lines[0]
    assert "Traceback" not in err and line.startswith("circle-rotate ")
    assert line.count("fix:") <= 1, line
    for name in case.names(world):
        assert str(name) in line, f"{name} not named in: {line}"
    if case.error is not None:
        assert isinstance(raised, case.error), f"raised {raised!r}, expected {case.error.__name__}"
        for attr, value in case.fields(world).items():
            assert getattr(raised, attr) == value, f"{attr}: {getattr(raised, attr)!r} != {value!r}"
    assert after == before, f"files changed: {sorted(set(after.items()) ^ set(before.items()))[:4]}"


# ---------------------------------------------------------------- what the table cannot say in one row


def test_musubis_own_complaint_about_a_config_does_not_precede_ours(world):
    """musubi logs its verdict at ERROR, in two languages, from its own logger: in a real process
    (not this one's captured logging) only our line may reach stderr."""
    if not musubi_available():
        pytest.skip("musubi-tuner not installed: the config is read through it")
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "circle_rotate", "cache", "--dataset-config",
                          str(world.unknown_key_toml), "--dry-run"], capture_output=True, text=True, timeout=300)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("circle-rotate cache: error: "), run.stderr


def test_prepare_repair_restores_the_deleted_line(world, tmp_path, capfd):
    folder = tmp_path / "P"
    shutil.copytree(world.Pbad, folder)
    raw_before = _tree(world.raw)
    assert cli_main.main(["-q", "prepare", str(world.raw), "-o", str(folder), *world.prep_args, "--repair"]) == 0
    from circle_rotate.prepare.prepared_folder import check_prepared

    records = check_prepared(folder)  # consistent again: every clip on disk has its line
    assert f"videos/{world.clip.name}" in {r.get("clip") for r in records}
    assert (folder / "videos" / world.clip.name).is_file()
    assert _tree(world.raw) == raw_before
    capfd.readouterr()
    assert cli_main.main(["-q", "config", str(folder)]) == 0  # readers accept it again


def test_repair_moves_a_clip_no_source_claims_out_of_videos(world, tmp_path):
    folder = tmp_path / "P"
    shutil.copytree(world.P, folder)
    stray = folder / "videos" / "stray_000_deadbeef.mp4"
    shutil.copy(world.clip, stray)
    assert cli_main.main(["-q", "config", str(folder)]) == 2
    assert cli_main.main(["-q", "prepare", str(world.raw), "-o", str(folder), *world.prep_args]) == 2
    assert cli_main.main(["-q", "prepare", str(world.raw), "-o", str(folder), *world.prep_args, "--repair"]) == 0
    assert not stray.exists()  # musubi would train on it; someone may want it back
    assert (folder / "set_aside" / "videos" / stray.name).read_bytes() == world.clip.read_bytes()


def _command_raising(monkeypatch, exc: BaseException) -> None:
    """Make every command's ``run`` raise ``exc`` (parsing stays real)."""
    def failing(args):
        raise exc

    real = cli_main.build_parser

    def parser():
        p = real()
        parse = p.parse_args

        def parse_args(args=None, namespace=None):
            ns = parse(args, namespace)
            ns.func = failing
            return ns

        p.parse_args = parse_args
        return p

    monkeypatch.setattr(cli_main, "build_parser", parser)


def test_interrupt_silences_later_log_lines(monkeypatch, capfd):
    _command_raising(monkeypatch, KeyboardInterrupt())
    try:
        assert cli_main.main(["inspect", "x"]) == 130
        assert not logging.getLogger("torch").isEnabledFor(logging.INFO)  # torch's teardown INFO would follow the line
    finally:
        logging.disable(logging.NOTSET)
    assert capfd.readouterr().err.strip().splitlines()[-1].endswith("interrupted; no partial output was kept")


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_sigterm_or_a_closed_terminal_mid_merge_leaves_no_partial_model(tiny_wan_dir, tiny_loras, tmp_path, monkeypatch,
                                                                        capfd, signame):
    """``timeout``, ``docker stop`` or a closed terminal: the signal arrives while the output is being
    written (after its first tensor), and the hidden temporary file goes with the process, as on Ctrl-C."""
    import signal

    from circle_rotate.kernel.safetensors_io import SafetensorsWriter

    real, calls = SafetensorsWriter.write_raw, []

    def write_raw(self, name, chunks):
        real(self, name, chunks)
        calls.append(name)
        if len(calls) == 1:
            os.kill(os.getpid(), getattr(signal, signame))

    monkeypatch.setattr(SafetensorsWriter, "write_raw", write_raw)
    before = signal.signal(getattr(signal, signame), signal.SIG_DFL)  # as a terminal starts it (not nohup)
    out = tmp_path / "out"
    code = cli_main.main(["merge", str(tiny_wan_dir / "wan2.2_i2v_high_noise_14B_fp16.safetensors"), "--lora",
                          str(tiny_loras["high"]), "-o", str(out / "merged.safetensors")])
    logging.disable(logging.NOTSET)
    restored = signal.signal(getattr(signal, signame), before)
    assert code == 128 + getattr(signal, signame)
    assert len(calls) == 1  # stopped mid-file
    assert not [p for p in out.rglob("*") if p.is_file()]  # no model, no hidden .part file
    word = {"SIGTERM": "terminated (SIGTERM)", "SIGHUP": "terminal closed (SIGHUP)"}[signame]
    assert capfd.readouterr().err.strip().splitlines()[-1] == f"circle-rotate merge: {word}; no partial output was kept"
    assert restored is signal.SIG_DFL  # handlers restored after the command


def test_a_merge_started_under_nohup_outlives_its_terminal(tiny_wan_dir, tiny_loras, tmp_path, monkeypatch):
    """``nohup circle-rotate merge ... &``: SIGHUP was ignored when the process started, and stays so."""
    import signal

    from circle_rotate.kernel.safetensors_io import SafetensorsWriter

    real, calls = SafetensorsWriter.write_raw, []

    def write_raw(self, name, chunks):
        real(self, name, chunks)
        calls.append(name)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGHUP)

    monkeypatch.setattr(SafetensorsWriter, "write_raw", write_raw)
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        code = cli_main.main(["-q", "merge", str(tiny_wan_dir / "wan2.2_i2v_high_noise_14B_fp16.safetensors"),
                              "--lora", str(tiny_loras["high"]), "-o", str(tmp_path / "merged.safetensors")])
    finally:
        signal.signal(signal.SIGHUP, before)
    assert code == 0 and len(calls) > 1 and (tmp_path / "merged.safetensors").stat().st_size > 0


def test_a_full_disk_met_by_a_library_is_one_line_and_a_broken_pipe_stays_quiet(monkeypatch, capfd, tmp_path):
    _command_raising(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x.bin")))
    assert cli_main.main(["inspect", "x"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left on" in err[0] and str(tmp_path / "x.bin") in err[0]
    _command_raising(monkeypatch, BrokenPipeError())
    saved = os.dup(1)
    try:
        assert cli_main.main(["inspect", "x"]) == 0
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def test_disk_full_message_names_device_and_size(tmp_path, monkeypatch):
    from circle_rotate.kernel.atomic import write_bytes

    def enospc(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(E.DiskFullError) as info:
        write_bytes(tmp_path / "x.bin", b"0" * 1000)
    assert info.value.device and str(tmp_path / "x.bin") in str(info.value)
    assert "no space left on" in str(info.value) and "or write to another disk" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # the temporary file went too


def test_compare_pairs_names_before_evaluating(world, monkeypatch, tmp_path):
    import circle_rotate.eval.runner as runner
    from circle_rotate.eval.compare import run_compare

    def no_evaluating(*args, **kwargs):
        raise AssertionError("a side was evaluated before the names were paired")

    monkeypatch.setattr(runner, "evaluate", no_evaluating)
    with pytest.raises(E.UserError):  # not the AssertionError: pairing failed first
        run_compare(world.ev / "a", world.ev / "other", out_dir=tmp_path / "rep")
    assert not (tmp_path / "rep").exists()
