"""``circle-rotate train``: exact commands, GPUs, resume onto musubi's states, run.json."""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from collections import namedtuple
from dataclasses import replace

import pytest

from circle_rotate.kernel.errors import UserError
from circle_rotate.musubi.accelerate_launch import pin_config
from circle_rotate.musubi.recipe_reader import option_values, train_command
from circle_rotate.musubi.train import TrainRequest, plan_training, train
from test_preflight import tiny_task, write_dataset


@pytest.fixture
def real_ws(musubi, tmp_path, write_musubi_caches, real_size_experts):
    from circle_rotate.musubi.cache_plan import plan_cache

    config = write_dataset(tmp_path)
    write_musubi_caches(plan_cache(config))
    vae = tmp_path / "Wan2.1_VAE.pth"
    vae.write_bytes(b"\0" * 1024)
    return {**real_size_experts, "vae": vae, "config": config, "out": tmp_path / "outputs"}


def test_dry_run_prints_the_recipes_exact_commands(real_ws, capsys, monkeypatch):
    import circle_rotate.kernel.disk_space as disk_space
    from circle_rotate.cli.main import main

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(disk_space.shutil, "disk_usage", lambda p: usage(10**13, 0, 10**13))
    code = main(["train", "both", "--dry-run", "--dit-low", str(real_ws["low"]), "--dit-high", str(real_ws["high"]),
                 "--vae", str(real_ws["vae"]), "--dataset-config", str(real_ws["config"]),
                 "-o", str(real_ws["out"]), "--gradient-checkpointing"])
    out = capsys.readouterr().out
    assert code == 0, out
    env = {"DIT_LOW": str(real_ws["low"]), "DIT_HIGH": str(real_ws["high"]), "VAE": str(real_ws["vae"]),
           "DATASET_CONFIG": str(real_ws["config"]), "GRADIENT_CHECKPOINTING": "1",
           "OUTPUT_DIR_LOW": str(real_ws["out"] / "low"), "OUTPUT_DIR_HIGH": str(real_ws["out"] / "high")}
    lines = out.splitlines()
    for expert in ("low", "high"):  # the recipe's command, launched with the shipped one-process config
        command = train_command("reproduce", expert, env=env)
        assert replace(command, launcher=pin_config(command.launcher)).shell() in lines
    assert "error" not in out and "80 GB" in out and "--gradient_checkpointing" in out


def test_checkpointing_turned_off_takes_its_offload_along(real_ws, capsys, monkeypatch):
    import circle_rotate.kernel.disk_space as disk_space
    from circle_rotate.cli.main import main

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(disk_space.shutil, "disk_usage", lambda p: usage(10**13, 0, 10**13))
    code = main(["train", "low", "--dry-run", "--dit-low", str(real_ws["low"]), "--vae", str(real_ws["vae"]),
                 "--dataset-config", str(real_ws["config"]), "-o", str(real_ws["out"]), "--set",
                 "GRADIENT_CHECKPOINTING=0"])
    out = capsys.readouterr().out
    assert code == 0, out
    line = next(x for x in out.splitlines() if "wan_train_network.py" in x)
    assert "--gradient_checkpointing" not in line  # the offload default goes with it: musubi offloads only inside it


def test_an_estimate_above_every_card_is_a_warning(musubi):
    import argparse
    from types import SimpleNamespace

    from circle_rotate.musubi.preflight_data import vram_notes
    from circle_rotate.musubi.preflight_findings import Findings

    clip = SimpleNamespace(bucket=(832, 480), windows=[(0, 81)])  # the published config's 81 frames at 480x832
    plan = SimpleNamespace(items=[clip], datasets=[SimpleNamespace(section=())])
    for checkpointing, warned in ((False, True), (True, False)):
        f = Findings()
        vram_notes(f, argparse.Namespace(task="i2v-A14B", fp8_base=True, gradient_checkpointing=checkpointing,
                                         gradient_checkpointing_cpu_offload=False, blocks_to_swap=0, network_dim=32,
                                         optimizer_type="adamw8bit"), plan)
        lines = [p.one_line() for p in f.problems]
        assert bool([x for x in lines if "fits no card up to 80 GB" in x]) == warned, lines
        assert any(n.strip().startswith("80 GB: 50.0 GiB") for n in f.notes), f.notes  # the advice all the same


def test_both_experts_one_per_gpu_or_one_after_the_other():
    parallel = plan_training(TrainRequest(("low", "high"), gpus=("0", "1")))
    assert [label for label, _ in parallel.chains] == ["low@gpu0", "high@gpu1"]
    assert [r.command.env_dict["CUDA_VISIBLE_DEVICES"] for r in parallel.runs] == ["0", "1"]
    serial = plan_training(TrainRequest(("high", "low"), gpus=("3",)))
    assert serial.chains == (("train", (0, 1)),) and [r.expert for r in serial.runs] == ["low", "high"]
    assert {r.command.env_dict["CUDA_VISIBLE_DEVICES"] for r in serial.runs} == {"3"}


_MULTI_GPU_DEFAULT = """compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
gpu_ids: 0,1,2,3
machine_rank: 0
main_training_function: main
mixed_precision: bf16
num_machines: 1
num_processes: 4
use_cpu: false
"""


def _accelerate_sees(launcher, monkeypatch, default):
    """What accelerate's own validation makes of a launch line, with ``default`` as the user's default config."""
    import accelerate.commands.config.config_args as config_args
    import accelerate.commands.launch as launch

    monkeypatch.setattr(launch, "default_config_file", str(default))
    monkeypatch.setattr(config_args, "default_config_file", str(default))
    args = launch.launch_command_parser().parse_args([*launcher[2:], "train.py"])
    args, _, _ = launch._validate_launch_command(args)
    return args


def test_one_gpu_launch_lines_ignore_the_users_default_accelerate_config(tmp_path, monkeypatch):
    from accelerate.commands.launch import prepare_simple_launcher_cmd_env

    default = tmp_path / "default_config.yaml"
    default.write_text(_MULTI_GPU_DEFAULT)
    recipe = train_command("reproduce", "low")
    assert _accelerate_sees(recipe.launcher, monkeypatch, default).multi_gpu  # the bare recipe line: distributed
    plans = [plan_training(TrainRequest(("low", "high"), gpus=("0", "1"))), plan_training(TrainRequest(("low",)))]
    for run in (r for plan in plans for r in plan.runs):
        args = _accelerate_sees(run.command.launcher, monkeypatch, default)
        assert not args.multi_gpu and args.num_processes == 1 and args.gpu_ids == "all"
        assert args.mixed_precision == "no"  # musubi's own --mixed_precision decides
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", run.command.env_dict["CUDA_VISIBLE_DEVICES"])  # the line's env
        _, env = prepare_simple_launcher_cmd_env(args)
        assert env["CUDA_VISIBLE_DEVICES"] == run.command.env_dict["CUDA_VISIBLE_DEVICES"]  # the run's GPU stays


def test_save_state_and_memory_knobs_reach_the_command():
    (run,) = plan_training(TrainRequest(("high",), env=(("BLOCKS_TO_SWAP", "12"),), save_state=True)).runs
    values = option_values(run.command.args)
    assert values["--blocks_to_swap"] == ["12"] and "--save_state" in values


def test_file_identity_hashes_the_header_not_the_weights(real_ws, tmp_path):
    from circle_rotate.musubi.run_record import file_identity

    ident = file_identity(real_ws["low"])
    with open(real_ws["low"], "rb") as fh:
        head = fh.read(8)
        raw = head + fh.read(struct.unpack("<Q", head)[0])
    assert ident["header_sha256"] == hashlib.sha256(raw).hexdigest() and ident["size"] > 28e9
    assert file_identity(real_ws["high"])["header_sha256"] == ident["header_sha256"]  # same shapes, same header
    assert "head_tail_sha256" in file_identity(real_ws["vae"]) and not file_identity(tmp_path / "no")["exists"]


def test_dataset_hash_follows_captions(musubi, tmp_path):
    from circle_rotate.musubi.cache_plan import plan_cache
    from circle_rotate.musubi.run_record import dataset_hash

    config = write_dataset(tmp_path)
    first = dataset_hash(plan_cache(config))
    assert dataset_hash(plan_cache(config)) == first
    (tmp_path / "clips" / "orbit_a.txt").write_text("another caption")
    assert dataset_hash(plan_cache(config)) != first


def test_a_failed_run_is_recorded_and_reported(musubi, tmp_path, tiny_wan_dir, write_musubi_caches):
    from circle_rotate.musubi.cache_plan import plan_cache

    config = write_dataset(tmp_path)
    write_musubi_caches(plan_cache(config))
    (tmp_path / "vae.pth").write_bytes(b"\0")
    out = tmp_path / "out"
    env = {"DIT_LOW": str(tiny_wan_dir / "wan2.2_i2v_low_noise_14B_fp16.safetensors"), "VAE": str(tmp_path / "vae.pth"),
           "DATASET_CONFIG": str(config), "OUTPUT_DIR_LOW": str(out)}

    def failing(command):  # the tiny task's command, launched by a stand-in that exits 3
        return replace(tiny_task(command), launcher=(sys.executable, "-c", "import sys; sys.exit(3)"))

    with pytest.raises(UserError, match="training failed on train"):
        train(TrainRequest(("low",), env=tuple(env.items())), dry_run=False, echo=lambda s: None, transform=failing)
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "failed" and record["seed"] == "42" and record["expert"] == "low"
    assert record["models"]["dit"]["header_sha256"] and record["dataset"]["clips"] == 2
    assert record["command"][:2] == [sys.executable, "-c"] and record["musubi_tuner_version"]


@pytest.mark.parametrize("setting, says", [
    ("NETWORK_DIM=64", "--set NETWORK_DIM: reproduce_low.sh read no such variable, so it would change nothing"),
    ("SAMPLE_EVERY_N_EPOCHS=0", "SAMPLE_EVERY_N_EPOCHS=0: epochs between samples must be a whole number from 1"),
    ("GRADIENT_CHECKPOINTING=yes", "GRADIENT_CHECKPOINTING=yes: gradient checkpointing is 0 (off) or 1 (on); "
                                   "fix: e.g. --set GRADIENT_CHECKPOINTING=1"),
    ("VAE_CACHE_CPU=true", "VAE_CACHE_CPU=true: the VAE cache in CPU RAM is 0 (off) or 1 (on)"),
    ("NUM_PROCESSES=2", "--set NUM_PROCESSES: train sets the GPUs and processes from --gpus; fix: use --gpus 0,1 "
                        "(one expert per GPU), or --gpus 0-7 --data-parallel"),
    ("GPU=0,1", "--set GPU: train sets the GPUs and processes from --gpus; fix: use --gpus"),
    ("SAVE_LAST_N_EPOCHS=-3", "SAVE_LAST_N_EPOCHS=-3: epoch files kept must be a whole number"),
    ("BLOCKS_TO_SWAP=40", "BLOCKS_TO_SWAP=40: blocks swapped to the CPU (Wan2.2-A14B has 40) must be"),
])
def test_a_recipe_variable_no_recipe_reads_or_out_of_range_is_refused_first(setting, says, tmp_path, capsys):
    from circle_rotate.cli.main import main

    assert main(["train", "low", "--dry-run", "--set", setting, "-o", str(tmp_path / "out")]) == 2
    assert says in capsys.readouterr().err


def test_boundary_is_a_fraction_and_gpus_are_named_once(tmp_path, capsys):
    from circle_rotate.cli.main import main

    for value in ("1.5", "abc"):
        assert main(["train", "both", "--recipe", "recommended", "--dry-run", "--set", f"BOUNDARY={value}"]) == 2
        assert f"BOUNDARY={value}: the high/low expert boundary" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "both", "--dry-run", "--gpus", "0,0"])
    assert "names GPU 0 twice" in capsys.readouterr().err


def test_an_output_folder_that_is_a_file_is_refused_before_the_dry_run(tmp_path, capsys):
    from circle_rotate.cli.main import main

    (tmp_path / "outfile").write_text("x")
    assert main(["train", "both", "--dry-run", "-o", str(tmp_path / "outfile")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_json_dry_run_stdout_is_only_json(real_ws, capfd, monkeypatch):
    import json

    import circle_rotate.kernel.disk_space as disk_space
    from circle_rotate.cli.main import main

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(disk_space.shutil, "disk_usage", lambda p: usage(10**13, 0, 10**13))
    assert main(["train", "both", "--dry-run", "--json", "--dit-low", str(real_ws["low"]), "--dit-high",
                 str(real_ws["high"]), "--vae", str(real_ws["vae"]), "--dataset-config", str(real_ws["config"]),
                 "-o", str(real_ws["out"])]) == 0
    assert set(json.loads(capfd.readouterr().out)["commands"]) == {"low", "high"}  # musubi's import prints kept out


def test_more_gpus_than_experts_without_data_parallel_is_refused(capsys):
    from circle_rotate.cli.main import main

    assert main(["train", "low", "--dry-run", "--gpus", "0,1"]) == 2
    assert "--gpus 0,1 names 2 GPUs for 1 expert(s): each expert trains on one" in capsys.readouterr().err
