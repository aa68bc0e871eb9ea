"""Bad input and stopped runs never cost the user a file: download, bench workdirs, caption, config, merge.

Each test builds real files in ``tmp_path``; a full disk is an injected ``ENOSPC`` (as in
test_bad_input.py), a kill a real ``SIGKILL`` of a child process (as in test_prepare_folder_safety.py).
"""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from circle_rotate.cli.main import main
from circle_rotate.kernel import errors
from circle_rotate.kernel.atomic import exclusive_folder
from circle_rotate.kernel.video_io import write_video
from circle_rotate.prepare.manifest import MANIFEST_NAME, read_manifest, write_manifest
from circle_rotate.prepare.prepared_folder import JOURNAL_NAME

# --- download -o DIR never replaces the user's own file ---------------------------------------


@pytest.fixture()
def lora_cache(tmp_path) -> Path:
    from hub_cache import populate

    from circle_rotate.musubi.downloads import FILES

    cache = tmp_path / "hub"
    for f in FILES["lora"]:
        populate(cache, f.repo_id, f.repo_type, {f.filename: b"released lora " + f.key.encode()})
    return cache


def _download(*args, cache: Path, cwd: Path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(cache.parent / "hf_home")}
    return subprocess.run([sys.executable, "-m", "circle_rotate", "download", *args, "--cache-dir", str(cache)],
                          capture_output=True, text=True, env=env, cwd=cwd)


def test_download_refuses_to_replace_the_users_own_file_and_links_nothing(lora_cache, tmp_path):
    out = tmp_path / "dl"
    out.mkdir()
    mine = out / "circle_rotate_h.safetensors"
    mine.write_text("MY OWN TRAINED LORA")
    run = _download("lora", "-o", str(out), cache=lora_cache, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and str(mine) in run.stderr and "--force" in run.stderr
    assert not mine.is_symlink() and mine.read_text() == "MY OWN TRAINED LORA"
    assert not (out / "circle_rotate_l.safetensors").exists()  # every destination checked before any link
    forced = _download("lora", "-o", str(out), "--force", cache=lora_cache, cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert mine.is_symlink() and mine.read_bytes() == b"released lora lora_high"
    again = _download("lora", "-o", str(out), cache=lora_cache, cwd=tmp_path)  # its own links: replaced freely
    assert again.returncode == 0, again.stderr


def test_download_to_a_file_or_over_a_folder_is_one_line(lora_cache, tmp_path):
    (tmp_path / "afile").write_text("x")
    run = _download("lora", "-o", str(tmp_path / "afile"), cache=lora_cache, cwd=tmp_path)
    assert run.returncode == 2 and "is not a folder" in run.stderr and run.stderr.count("\n") == 1
    (tmp_path / "d" / "circle_rotate_l.safetensors").mkdir(parents=True)
    run = _download("lora", "-o", str(tmp_path / "d"), "--force", cache=lora_cache, cwd=tmp_path)
    assert run.returncode == 2 and "never replaced" in run.stderr and run.stderr.count("\n") == 1


def test_not_cached_says_unset_hf_hub_offline_only_when_it_is_set(monkeypatch, tmp_path):
    import huggingface_hub.constants

    from circle_rotate.musubi.downloads import _not_cached

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert "HF_HUB_OFFLINE" not in str(_not_cached("org/x", tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert "unset HF_HUB_OFFLINE" in str(_not_cached("org/x", tmp_path))


# --- bench --workdir / --dir ------------------------------------------------------------------


def test_bench_prepare_never_clears_a_folder_it_did_not_make(tmp_path, capsys):
    work = tmp_path / "bw"
    (work / "raw").mkdir(parents=True)
    (work / "out").mkdir()
    (work / "raw" / "my_footage.mp4").write_bytes(b"the user's own footage")
    (work / "raw" / "b.mp4").write_bytes(b"more")  # two videos, --sources 1: the old code re-rendered raw/
    (work / "out" / "notes.txt").write_text("precious")
    args = ["--sources", "1", "--frames", "17", "--size", "64x48", "--repeat", "1"]
    assert main(["bench", "prepare", "--workdir", str(work), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(work) in err and "did not make" in err
    assert (work / "raw" / "my_footage.mp4").read_bytes() == b"the user's own footage"
    assert (work / "out" / "notes.txt").read_text() == "precious"
    (tmp_path / "afile").write_text("x")
    assert main(["bench", "prepare", "--workdir", str(tmp_path / "afile"), *args]) == 2
    assert main(["bench", "prepare", "--workdir", "/proc/circle_rotate_bench", *args]) == 2  # takes no files
    assert "Traceback" not in capsys.readouterr().err


def test_bench_prepare_reuses_and_clears_its_own_workdir(tmp_path, capsys):
    work = tmp_path / "mine"
    args = ["--frames", "17", "--size", "64x48", "--repeat", "1"]
    assert main(["bench", "prepare", "--workdir", str(work), "--sources", "1", *args]) == 0
    assert main(["bench", "prepare", "--workdir", str(work), "--sources", "2", *args]) == 0  # its own: re-rendered
    assert len(list((work / "raw").glob("*.mp4"))) == 2


def test_bench_merge_dir_that_takes_no_files_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    for bad in (str(tmp_path / "afile"), "/proc/circle_rotate_bench"):
        assert main(["bench", "merge", "--layers", "1", "--repeat", "1", "--dir", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and bad in err


# --- every UserError crosses a process boundary ------------------------------------------------


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


EXAMPLES = {
    errors.UserError: lambda: errors.UserError("bad", path="/x/a.toml", fix="fix it"),
    errors.InputOverwriteError: lambda: errors.InputOverwriteError("/x/a", source="/x/b"),
    errors.NotARegularFileError: lambda: errors.NotARegularFileError("/dev/null", kind="character device"),
    errors.UnwritableOutputError: lambda: errors.UnwritableOutputError("/proc/x", reason="read-only"),
    errors.DiskFullError: lambda: errors.DiskFullError("/x/m.safetensors", device="/dev/sda1 (/)", need_gb=2.5),
    errors.ConfigValueError: lambda: errors.ConfigValueError("--repeats", 0, "must be 1 or more", path="/x", fix="1"),
    errors.BadStrengthError: lambda: errors.BadStrengthError("--lora a strength", float("inf")),
    errors.NonFiniteError: lambda: errors.NonFiniteError("/x/l.safetensors", key="blocks.0.w", count=3),
    errors.ManifestMismatchError: lambda: errors.ManifestMismatchError("/x/manifest.jsonl", unlisted=("a.mp4",)),
}


def _raise(name: str):
    raise EXAMPLES[getattr(errors, name)]()


def test_every_user_error_pickles_with_its_message_path_fix_and_fields():
    assert set(_all_subclasses(errors.UserError)) <= set(EXAMPLES), "add the new UserError subclass to EXAMPLES"
    for cls, make in EXAMPLES.items():
        err = make()
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is cls and str(back) == str(err) and back.args == err.args
        assert vars(back) == vars(err)
        assert (back.path, back.fix, back.problem) == (err.path, err.fix, err.problem)


def test_a_disk_full_in_a_worker_process_reaches_the_parent_as_itself():
    with ProcessPoolExecutor(1) as pool:
        with pytest.raises(errors.DiskFullError) as info:
            pool.submit(_raise, "DiskFullError").result()
    assert info.value.need_gb == 2.5 and "no space left on /dev/sda1" in str(info.value)


# --- caption: stopped runs, locks, inputs ------------------------------------------------------


@pytest.fixture
def pc(tmp_path) -> Path:
    """A prepared folder with four accepted clips."""
    out = tmp_path / "pc"
    frames = [np.full((32, 48, 3), v, np.uint8) for v in (40, 120, 200, 90, 60)]
    recs = [{"type": "source", "source": "red_car/a.mp4", "status": "ok"}]
    for i in range(4):
        clip = f"videos/a_{i:03d}_x.mp4"
        write_video(out / clip, frames, fps=16)
        recs.append({"type": "clip", "id": str(i), "clip": clip, "source": "red_car/a.mp4", "frames": 5, "fps": 16.0,
                     "width": 48, "height": 32, "verdict": "accept", "reasons": [], "caption": None,
                     "orbit": {"motion": "orbit", "direction": "right", "speed_cv": 0.5, "angular_speed_deg_s": 20}})
    write_manifest(out / MANIFEST_NAME, recs)
    return out


def _captions(pc: Path) -> list:
    return [p.read_text() for p in sorted((pc / "videos").glob("*.txt"))]


def _stop_at_third_caption(monkeypatch, exc: BaseException) -> None:
    from circle_rotate.prepare import caption

    real, seen = caption.write_text, []

    def write_text(path, text):
        if str(path).endswith(".txt"):
            seen.append(path)
            if len(seen) == 3:
                raise exc
        return real(path, text)

    monkeypatch.setattr(caption, "write_text", write_text)


def _rerun_takes_the_new_subject(pc: Path, capsys) -> None:
    assert main(["caption", str(pc), "--subject", "truck"]) == 0
    out = capsys.readouterr().out
    assert "0 kept" in out, out
    assert len(_captions(pc)) == 4 and all("truck" in t and "car" not in t for t in _captions(pc))


def test_a_caption_run_stopped_by_a_full_disk_leaves_its_captions_ours(pc, monkeypatch, capsys):
    _stop_at_third_caption(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "x"))
    assert main(["caption", str(pc), "--subject", "car"]) == 2
    assert "no space left" in capsys.readouterr().err
    assert len(_captions(pc)) == 2
    monkeypatch.undo()
    _rerun_takes_the_new_subject(pc, capsys)


def test_ctrl_c_in_caption_says_what_it_kept_and_the_rerun_follows_the_new_subject(pc, monkeypatch, capsys):
    _stop_at_third_caption(monkeypatch, KeyboardInterrupt())
    assert main(["caption", str(pc), "--subject", "car"]) == 130
    err = capsys.readouterr().err
    assert "no partial output" not in err and "2 caption file(s) written before it stopped are recorded" in err
    generated = [r.get("generated_caption") for r in read_manifest(pc / MANIFEST_NAME) if r.get("clip")]
    assert sum(1 for g in generated if g and "car" in g) == 2
    monkeypatch.undo()
    _rerun_takes_the_new_subject(pc, capsys)


_KILL_AT_THIRD = """
import os, signal, sys
from circle_rotate.cli.main import main
from circle_rotate.prepare import caption
real, seen = caption.write_text, []

def write_text(path, text):  # SIGKILL: no handler, no finally, no tidying runs
    if str(path).endswith(".txt"):
        seen.append(path)
        if len(seen) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(path, text)

caption.write_text = write_text
sys.exit(main(sys.argv[1:]))
"""


def test_a_caption_run_killed_outright_leaves_its_captions_ours(pc, capsys):
    run = subprocess.run([sys.executable, "-c", _KILL_AT_THIRD, "caption", str(pc), "--subject", "car"],
                         capture_output=True, text=True)
    assert run.returncode == -9, run.stderr
    assert len(_captions(pc)) == 2
    _rerun_takes_the_new_subject(pc, capsys)


def test_caption_and_config_wait_for_a_run_still_writing_the_folder(pc, capsys):
    with exclusive_folder(pc, command="prepare"):
        assert main(["caption", str(pc), "--subject", "car"]) == 2
        assert "still writing" in capsys.readouterr().err
        assert main(["config", str(pc)]) == 2
        assert "still writing" in capsys.readouterr().err
    assert _captions(pc) == [] and not (pc / "dataset.toml").exists()


def test_caption_while_prepare_is_still_running_does_not_say_it_was_stopped(tmp_path, capsys):
    folder = tmp_path / "PQ"
    (folder / "videos").mkdir(parents=True)
    (folder / JOURNAL_NAME).write_text("videos/a_000_x.mp4\n")  # a first run, no manifest line yet
    with exclusive_folder(folder, command="prepare"):
        assert main(["caption", str(folder)]) == 2
        err = capsys.readouterr().err
    assert "still writing" in err and "was stopped" not in err
    assert main(["caption", str(folder)]) == 2  # no one at work: now it was stopped
    assert "was stopped" in capsys.readouterr().err


def test_caption_jsonl_over_its_own_subject_map_is_refused(pc, tmp_path, capsys):
    cmap = tmp_path / "map.csv"
    cmap.write_text("match,subject\nred_car,a red car\n")
    assert main(["caption", str(pc), "--map", str(cmap), "--jsonl", str(cmap), "--force"]) == 2
    assert str(cmap) in capsys.readouterr().err
    assert cmap.read_text() == "match,subject\nred_car,a red car\n"


def test_a_map_with_many_bad_rows_names_the_first_few_and_a_count(tmp_path):
    from circle_rotate.prepare.subject_map import read_subject_map

    cmap = tmp_path / "map.csv"
    cmap.write_text("match,subject\nvase,a vase\n" + "".join(f"vase,a jug {i}\n" for i in range(40)))
    with pytest.raises(errors.UserError) as info:
        read_subject_map(cmap)
    text = str(info.value)
    assert "line 3 repeats" in text and "and 37 more problem(s)" in text and len(text) < 500


# --- config -----------------------------------------------------------------------------------


def test_config_rejected_by_check_config_is_not_written(pc, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"video_path": "/nowhere/clip.mp4", "caption": "x"}\n')
    out = tmp_path / "x.toml"
    assert main(["config", str(pc), "--jsonl", str(bad), "-o", str(out)]) == 2
    printed = capsys.readouterr().out
    assert not out.exists() and "not written" in printed and str(out) in printed
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x")]  # no temporary file left
    assert main(["-q", "caption", str(pc)]) == 0
    assert main(["config", str(pc), "-o", str(out)]) == 0  # the rerun needs no --force


def test_config_cache_that_is_a_file_is_refused(pc, tmp_path, capsys):
    assert main(["config", str(pc), "-o", str(tmp_path / "c.toml"), "--cache", str(pc / MANIFEST_NAME)]) == 2
    assert "--cache" in capsys.readouterr().err and not (tmp_path / "c.toml").exists()


# --- merge checks the free space first ----------------------------------------------------------


def test_merge_refuses_up_front_when_the_disk_is_short_and_names_the_shortfall(tmp_path, monkeypatch, capsys):
    import shutil

    from circle_rotate.kernel import disk_space, wan_arch
    from circle_rotate.selfcheck.synthetic.lora import write_random_lora
    from circle_rotate.selfcheck.synthetic.tiny_wan import write_tiny_wan

    cfg = wan_arch.tiny_config()
    base = write_tiny_wan(tmp_path / "base.safetensors", config=cfg)
    lora = write_random_lora(tmp_path / "lora.safetensors", cfg, rank=2, seed=1)
    real = shutil.disk_usage
    monkeypatch.setattr(disk_space.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    out = tmp_path / "m.safetensors"
    assert main(["merge", str(base), "--lora", str(lora), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no space left on" in err and str(out) in err and err.count("\n") == 1
    assert "free 0.001 GB" in err  # the shortfall (a few kB here), not the whole file
    assert not out.exists() and not list(tmp_path.glob(".m*"))


def test_two_caption_runs_killed_in_a_row_leave_no_caption_taken_for_a_hand_edit(pc, capsys):
    first = _KILL_AT_THIRD.replace("len(seen) == 3", "len(seen) == int(os.environ['KILL_AT'])")
    for subject, kill_at in (("bus", "3"), ("van", "1")):  # the second dies before it writes any caption
        run = subprocess.run([sys.executable, "-c", first, "caption", str(pc), "--subject", subject],
                             capture_output=True, text=True, env={**os.environ, "KILL_AT": kill_at})
        assert run.returncode == -9, run.stderr
    assert sum("bus" in t for t in _captions(pc)) == 2  # what the first wrote, now named by no run but its own
    _rerun_takes_the_new_subject(pc, capsys)
