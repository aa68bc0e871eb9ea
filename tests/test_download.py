"""`circle-rotate download` against a pre-populated huggingface_hub cache, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from circle_rotate.musubi.downloads import DATASET_REPO, FILES, FUN_INP_MODELS
from circle_rotate.selfcheck.synthetic.tiny_wan import write_tiny_wan
from hub_cache import populate

def _run(*args, cache: Path, cwd: Path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(cache.parent / "hf_home")}
    return subprocess.run([sys.executable, "-m", "circle_rotate", "download", *args, "--cache-dir", str(cache)],
                          capture_output=True, text=True, env=env, cwd=cwd)


@pytest.fixture()
def cache(tmp_path) -> Path:
    cache = tmp_path / "hub"
    expert = write_tiny_wan(tmp_path / "expert.safetensors")
    for f in FILES["models"] + FILES["lora"] + FUN_INP_MODELS:
        populate(cache, f.repo_id, f.repo_type, {f.filename: expert if f.filename.endswith(".safetensors") else b"pth"})
    populate(cache, DATASET_REPO, "dataset", {"videos/a.mp4": b"x" * 10, "videos/a.txt": b"caption"})
    return cache


def test_models_offline_links_and_prints_recipe_variables(cache, tmp_path):
    out = _run("models", "-o", str(tmp_path / "models"), cache=cache, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("cached") == 4
    exports = dict(line[len("export "):].split("=", 1) for line in out.stdout.splitlines() if line.startswith("export "))
    assert set(exports) == {"DIT_HIGH", "DIT_LOW", "VAE", "T5"}
    assert exports["DIT_HIGH"] == str(tmp_path / "models" / "wan2.2_i2v_high_noise_14B_fp16.safetensors")
    for value in exports.values():
        assert Path(value).is_file()
    # a second run finds the same files and replaces the links in place
    assert _run("models", "-o", str(tmp_path / "models"), cache=cache, cwd=tmp_path).returncode == 0


def test_fun_inp_variant_fetches_the_fun_inpaint_experts(cache, tmp_path):
    out = _run("models", "--variant", "fun-inp", "-o", str(tmp_path / "m"), cache=cache, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    exports = dict(line[len("export "):].split("=", 1) for line in out.stdout.splitlines() if line.startswith("export "))
    assert Path(exports["DIT_HIGH"]).name == "wan2.2_fun_inpaint_high_noise_14B_fp8_scaled.safetensors"
    assert Path(exports["DIT_LOW"]).name == "wan2.2_fun_inpaint_low_noise_14B_fp8_scaled.safetensors"
    assert Path(exports["T5"]).name == "umt5_xxl_fp8_e4m3fn_scaled.safetensors" and Path(exports["DIT_LOW"]).is_file()
    bad = _run("lora", "--variant", "fun-inp", cache=cache, cwd=tmp_path)
    assert bad.returncode == 2 and "--variant" in bad.stderr


def test_lora_and_dataset_offline(cache, tmp_path):
    out = _run("lora", cache=cache, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "export LORA_HIGH=" in out.stdout and "circle_rotate_h.safetensors" in out.stdout
    ds = _run("dataset", "-o", str(tmp_path / "data"), cache=cache, cwd=tmp_path)
    assert ds.returncode == 0, ds.stderr
    assert (tmp_path / "data" / "circle-rotate-dataset" / "videos" / "a.txt").read_text() == "caption"


def test_missing_from_cache_offline_is_a_one_line_error(tmp_path):
    out = _run("lora", cache=tmp_path / "empty", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "not in the local cache" in out.stderr and "HF_HUB_OFFLINE" in out.stderr


def test_dry_run_shows_sizes_and_refuses_when_disk_is_short(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from circle_rotate.kernel.errors import UserError
    from circle_rotate.musubi import downloads

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network in tests
    planned = downloads.plan("models", cache_dir=tmp_path / "nothing")
    assert [p.cached for p in planned] == [False] * 4
    assert sum(p.size for p in planned) > 60e9  # two 28.6 GB experts, VAE, T5
    monkeypatch.setattr(downloads.shutil, "disk_usage", lambda p: type("U", (), {"free": 10e9})())
    with pytest.raises(UserError, match="needs .* GB but only 10.0 GB"):
        downloads.check_disk(planned, cache_dir=tmp_path)


def test_copies_made_where_links_are_not_allowed_are_known_as_ours_on_a_rerun(cache, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from circle_rotate.kernel.errors import UserError
    from circle_rotate.musubi import downloads

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(downloads.os, "symlink", lambda *a, **k: (_ for _ in ()).throw(OSError("no links on exFAT")))
    to = tmp_path / "loras"
    for _ in range(2):  # the second run replaces its own copies without --force
        downloads.check_link_targets("lora", to=to, cache_dir=cache)
        paths = downloads.fetch("lora", to=to, cache_dir=cache)
    lora = Path(paths["LORA_HIGH"])
    assert lora.is_file() and not lora.is_symlink()
    high = lora.read_bytes()
    # the user's own run saved over it, the same size as the released file (same rank, same keys):
    # no longer the copy it made, refused again. Failed before, when the record held the size alone.
    time.sleep(0.01)
    lora.write_bytes(bytes(b ^ 1 for b in high))
    assert lora.stat().st_size == len(high)
    with pytest.raises(UserError, match="not a link into the download cache"):
        downloads.check_link_targets("lora", to=to, cache_dir=cache)
    lora.write_bytes(b"the user's own training run")
    with pytest.raises(UserError, match="not a link into the download cache"):
        downloads.check_link_targets("lora", to=to, cache_dir=cache)
    # a copy an older circle-rotate recorded by its size alone is named as such, with the way out
    (to / downloads.COPIES_RECORD).write_text(json.dumps({lora.name: lora.stat().st_size}))
    with pytest.raises(UserError, match="an older version's .*size alone.*pass --force"):
        downloads.check_link_targets("lora", to=to, cache_dir=cache)
