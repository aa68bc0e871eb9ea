"""``circle-rotate smoke``: the real chain through musubi-tuner's own scripts on this CPU."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from circle_rotate.selfcheck.smoke import CACHE_WHY, PATH_WHY, SCALED_DOWN, script_threads_env

pytestmark = pytest.mark.slow  # the whole chain through musubi's scripts on a CPU (a minute or more)


@pytest.fixture(scope="module")
def smoke_run(musubi, tiny_musubi_models, tmp_path_factory):
    work = tmp_path_factory.mktemp("smoke")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "circle_rotate", "smoke", "-o", str(work),
                           "--models-dir", str(tiny_musubi_models.tokenizer_root), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    print(f"\nsmoke run: {time.perf_counter() - start:.1f} s wall, steps: "
          + ", ".join(f"{name} {seconds:.1f} s" for name, seconds, _ in report["steps"]))
    return work, report


def test_both_loras_trained_loaded_by_musubi_and_merged(smoke_run):
    work, report = smoke_run
    assert set(report["loras"]) == {"low", "high"}
    names = [name for name, _, _ in report["steps"]]
    assert names[-1].startswith("load back") and len(names) == 5
    detail = report["steps"][-1][2]
    assert detail.count("20 modules") == 2  # 10 targets x 2 blocks, read back by musubi's lora_wan
    for path in report["loras"].values():
        assert Path(path).is_file()
    assert (work / "merged_low.safetensors").is_file() and (work / "merged_high.safetensors").is_file()


def test_only_weight_independent_settings_differ(smoke_run):
    _, report = smoke_run
    paths = {"--dit", "--vae", "--t5", "--dataset_config", "--output_dir"}
    allowed = {f"wan_train_network: {o}" for o in set(SCALED_DOWN) | paths}
    allowed |= {f"{s}: {o}" for s in ("wan_cache_latents", "wan_cache_text_encoder_outputs")
                for o in set(CACHE_WHY) | paths}
    options = {d["option"] for d in report["differences"]}
    assert options <= allowed, options - allowed
    assert {f"wan_train_network: {o}" for o in ("--task", "--max_train_steps", "--fp8_base", "--optimizer_type")} <= options
    assert all(d["why"] for d in report["differences"])
    assert {d["why"] for d in report["differences"] if d["option"].endswith(": --dit")} == {PATH_WHY}


def test_run_json_beside_each_lora(smoke_run):
    _, report = smoke_run
    for expert, lora in report["loras"].items():
        record = json.loads((Path(lora).parent / "run.json").read_text())
        assert record["status"] == "finished" and record["expert"] == expert and record["seed"] == "42"
        assert record["musubi_tuner_version"] == "0.3.4" and record["circle_rotate_version"]
        assert len(record["dataset"]["manifest_sha256"]) == 64 and record["dataset"]["clips"] >= 2
        assert record["models"]["dit"]["header_sha256"] and "--max_train_steps" in record["command"]
        assert Path(lora).name in record["outputs"]
        assert {f"wan_train_network: {d['option']}" for d in record["smoke_differences_from_recipe"]} == {
            d["option"] for d in report["differences"] if d["option"].startswith("wan_train_network")}


def test_scripts_ran_as_forks_of_the_preloaded_server_with_their_thread_count(smoke_run):
    from circle_rotate.selfcheck.forkserver import supported

    _, report = smoke_run
    for lora in report["loras"].values():
        record = json.loads((Path(lora).parent / "run.json").read_text())
        launcher = ["-m", "circle_rotate.selfcheck.forkserver"] if supported() else ["-m", "circle_rotate.selfcheck.tiny_task"]
        assert record["command"][1:3] == launcher and "circle_rotate.selfcheck.tiny_task" in record["command"]
        assert record["environment"]["OMP_NUM_THREADS"] == script_threads_env()["OMP_NUM_THREADS"]


def test_source_clips_are_rendered_once_and_prepared_each_run(smoke_run, tiny_musubi_models):
    from circle_rotate.selfcheck.smoke_steps import DIRECTIONS, source_clips

    work, _ = smoke_run
    raw = source_clips(tiny_musubi_models.tokenizer_root)  # what the smoke run rendered
    videos = sorted(raw.glob("*.mp4"))
    assert [v.stem for v in videos] == sorted(f"orbit_{d}" for d in DIRECTIONS)
    stamps = [v.stat().st_mtime_ns for v in videos]
    assert source_clips(tiny_musubi_models.tokenizer_root) == raw
    assert [v.stat().st_mtime_ns for v in videos] == stamps
    assert len(list((work / "prepared" / "videos").glob("*.mp4"))) == len(DIRECTIONS)


def test_cache_was_complete_and_an_interrupted_pass_resumes(smoke_run, tiny_musubi_models):
    from circle_rotate.musubi.cache import CacheRequest, env_from_paths, prepare_cache, run_cache
    from circle_rotate.musubi.cache_plan import plan_cache
    from circle_rotate.musubi.cache_status import check_cache
    from circle_rotate.selfcheck.smoke import _cache_transform

    work, _ = smoke_run
    plan = plan_cache(work / "dataset.toml")
    status = check_cache(plan)
    assert status.count("cached") == len(plan.items) and not status.strays
    keep, lose = plan.items[0], plan.items[-1]
    before = keep.latent_files[0].stat().st_mtime_ns
    lose.te_file.unlink()  # as if the text pass had been interrupted
    m = tiny_musubi_models
    job = prepare_cache(CacheRequest(work / "dataset.toml", gpus=("",),
                                     env=env_from_paths(vae=m.vae, t5=m.t5, device="cpu")),
                        transform=_cache_transform(m.tokenizer_root))
    assert job.status.count("missing") == 1
    run_cache(job, scripts_in_parallel=True)
    assert check_cache(plan).count("cached") == len(plan.items)
    assert keep.latent_files[0].stat().st_mtime_ns == before  # --skip_existing left it alone


def test_a_second_run_into_the_kept_work_folder_replaces_the_first(smoke_run, tiny_musubi_models):
    """It told the user to pass --force, which smoke has not: the work folder is its own."""
    work, first = smoke_run
    proc = subprocess.run([sys.executable, "-m", "circle_rotate", "smoke", "-o", str(work),
                           "--models-dir", str(tiny_musubi_models.tokenizer_root), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["loras"] and len(json.loads(proc.stdout)["loras"]) == len(first["loras"])
