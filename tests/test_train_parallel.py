"""``train --data-parallel`` / ``--nodes``: default plans, batch maths, per-node commands, one-line checks."""

from __future__ import annotations

import argparse
import subprocess
from collections import namedtuple
from pathlib import Path

import pytest

from circle_rotate.cli._recipe_args import gpu_list
from circle_rotate.musubi.accelerate_launch import check_config, config_text, read_config
from circle_rotate.musubi.parallel_plan import BatchMaths, ParallelRequest, place_experts
from circle_rotate.musubi.recipe_reader import recipe_path
from test_train_cli import real_ws  # noqa: F401  (fixture)

RECIPES = Path(recipe_path("common.sh")).parent


def test_gpu_lists_take_ranges():
    assert gpu_list("0-7") == tuple(str(i) for i in range(8))
    assert gpu_list("0-1,4,6-7") == ("0", "1", "4", "6", "7")
    for bad in ("3-1", "a", "0-x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            gpu_list(bad)


def test_default_plans_split_the_hardware_between_the_experts():
    eight = tuple(str(i) for i in range(8))
    low, high = place_experts(("low", "high"), ParallelRequest(gpus=eight))
    assert (low.gpus, high.gpus) == (eight[:4], eight[4:]) and low.processes == high.processes == 4
    assert (low.port, high.port) == (29500, 29501) and low.chain != high.chain  # side by side, own rendezvous
    low, high = place_experts(("low", "high"), ParallelRequest(gpus=eight, nodes=2))
    assert (low.node_ranks, high.node_ranks) == ((0,), (1,)) and low.machines == high.machines == 1
    (only,) = place_experts(("low",), ParallelRequest(gpus=eight, nodes=2, main_address="node0:29400"))
    assert only.node_ranks == (0, 1) and only.processes == 16 and (only.host, only.port) == ("node0", 29400)
    turns = place_experts(("low", "high"), ParallelRequest(gpus=eight, experts_in_turn=True))
    assert [p.gpus for p in turns] == [eight, eight] and turns[0].chain == turns[1].chain
    with pytest.raises(ValueError, match="address of node 0"):
        place_experts(("low",), ParallelRequest(gpus=eight, nodes=2))


def test_global_batch_and_steps_of_the_published_dataset():
    # 2,168 clips at batch 1 (the published run), 8 GPUs
    m = BatchMaths(batch_size=1, processes=8, accumulation=1, batches_per_epoch=2168, learning_rate=2e-4,
                   lr_rule="linear")
    assert (m.global_batch, m.steps_per_epoch, m.published_steps_per_epoch) == (8, 271, 2168)
    assert m.scaled_learning_rate == pytest.approx(1.6e-3)
    assert BatchMaths(1, 8, 1, 2168, learning_rate=2e-4, lr_rule="sqrt").scaled_learning_rate == pytest.approx(5.657e-4,
                                                                                                              rel=1e-3)
    same = BatchMaths(1, 4, 2, 2168)
    assert same.global_batch == 8 and same.steps_per_epoch == 271
    text = "\n".join(m.describe())
    assert "global batch 8 = batch_size 1 x 8 process(es) x 1 accumulation" in text and "--grad-accumulation 8" in text


def test_template_and_written_configs_load_in_accelerate(tmp_path):
    from accelerate.commands.config.config_args import ClusterConfig

    template = RECIPES / "accelerate_multi_node.yaml"
    assert ClusterConfig.from_yaml_file(str(template)).num_processes == 16
    eight = tuple(str(i) for i in range(8))
    assert check_config(read_config(template), template, ParallelRequest(gpus=eight, nodes=2)) == []
    (wrong,) = check_config(read_config(template), template, ParallelRequest(gpus=eight[:4], nodes=2))
    assert "num_processes is 16 but nodes x GPUs is 2 x 4 = 8" in wrong.one_line() and "fix:" in wrong.one_line()
    (pl,) = place_experts(("low",), ParallelRequest(gpus=eight, nodes=2, main_address="n0:29500"))
    written = tmp_path / "a.yaml"
    written.write_text(config_text(pl))
    loaded = ClusterConfig.from_yaml_file(str(written))
    assert (loaded.num_machines, loaded.num_processes, loaded.main_process_ip) == (2, 16, "n0")


def test_a_config_accelerate_would_refuse_for_an_unknown_key_is_refused(tmp_path):
    typo = tmp_path / "acc.yaml"
    typo.write_text((RECIPES / "accelerate_multi_node.yaml").read_text() + "num_procesess: 2\n")
    with pytest.raises(ValueError, match=r"accelerate refuses it: .*unknown keys \(\['num_procesess'\]\)"):
        read_config(typo)


def _dry_run(ws, capsys, *extra):
    from circle_rotate.cli.main import main

    code = main(["train", *extra, "--dry-run", "--dit-low", str(ws["low"]), "--dit-high", str(ws["high"]),
                 "--vae", str(ws["vae"]), "--dataset-config", str(ws["config"]), "-o", str(ws["out"])])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def roomy(monkeypatch):
    import circle_rotate.kernel.disk_space as disk_space

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(disk_space.shutil, "disk_usage", lambda p: usage(10**13, 0, 10**13))


def _node_commands(out):
    lines = out.splitlines()
    return {int(line.split()[2]): lines[i + 1] for i, line in enumerate(lines) if line.startswith("# node ")}


def test_two_node_dry_run_prints_each_nodes_exact_command(real_ws, capsys, roomy, monkeypatch):
    import shlex

    from circle_rotate.musubi.args import check_command
    from circle_rotate.musubi.recipe_reader import _split_command

    # pytest's folders stand in for shared storage here; the /tmp check has its own test below
    monkeypatch.setattr("circle_rotate.musubi.accelerate_launch.NODE_LOCAL", ())
    code, out, err = _dry_run(real_ws, capsys, "low", "--gpus", "0-3", "--nodes", "2", "--main-address", "node0:29500")
    assert code == 0, out + err
    nodes = _node_commands(out)
    assert sorted(nodes) == [0, 1]
    assert nodes[0].replace("--machine_rank 0", "--machine_rank 1") == nodes[1]
    for line in nodes.values():
        env, rest = line.split(" ", 1)
        assert env == "CUDA_VISIBLE_DEVICES=0,1,2,3"
        command = _split_command(shlex.split(rest), "dry run")
        check_command(command)  # accelerate's own launch parser and musubi's parser accept it
        assert "--num_processes 8 --num_machines 2" in line and "--main_process_ip node0" in line
    assert "global batch 8 = batch_size 1 x 8 process(es)" in out and "every node must see these" in out
    code, out, err = _dry_run(real_ws, capsys, "both", "--gpus", "0-3", "--nodes", "2")
    nodes = _node_commands(out)
    assert code == 0 and "circle_rotate_l" in nodes[0] and "circle_rotate_h" in nodes[1]
    assert all("--num_machines 1" in line for line in nodes.values())


@pytest.mark.parametrize("extra, expected", [
    (("--node-rank", "2"), "error: --node-rank 2 is out of range for --nodes 2; fix: use 0 to 1"),
    (("--main-address", "node0:70000"), "error: --main-address: port '70000' of 'node0:70000' is not a port number"),
    (("--accelerate-config", "template"),
     "num_processes is 16 but nodes x GPUs is 2 x 4 = 8; fix: set num_processes: 8"),
])
def test_each_bad_request_is_one_line_with_its_fix_and_exit_2(real_ws, capsys, roomy, monkeypatch, extra, expected):
    monkeypatch.setattr("circle_rotate.musubi.accelerate_launch.NODE_LOCAL", ())
    extra = tuple(str(RECIPES / "accelerate_multi_node.yaml") if e == "template" else e for e in extra)
    address = () if "--main-address" in extra else ("--main-address", "node0:29500")
    code, out, err = _dry_run(real_ws, capsys, "low", "--gpus", "0-3", "--nodes", "2", *address, *extra)
    assert code == 2
    (line,) = [line for line in out.splitlines() if expected in line]
    assert "fix:" in line and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_output_under_tmp_is_refused_for_several_nodes(real_ws, capsys, roomy):
    code, out, err = _dry_run(real_ws, capsys, "low", "--gpus", "0-3", "--nodes", "2", "--main-address", "n0:29500")
    assert code == 2 and str(real_ws["out"]).startswith("/tmp/")
    (line,) = [line for line in out.splitlines() if line.startswith(f"error: {real_ws['out'] / 'low'}:")]
    assert "low output is under /tmp, which is local to each node; fix: put it on shared storage" in line
    code, out, _ = _dry_run(real_ws, capsys, "low", "--gpus", "0-3", "--data-parallel")
    assert code == 0 and "under /tmp" not in out  # one machine: /tmp is fine


def test_slurm_example_is_valid_bash_with_the_header():
    sbatch = RECIPES / "slurm_train.sbatch"
    assert subprocess.run(["bash", "-n", str(sbatch)]).returncode == 0
    text = sbatch.read_text()
    assert "Needs:" in text and "Run:" in text and "--node-rank \"$SLURM_NODEID\"" in text
    assert "#SBATCH --nodes=2" in text and text.count("srun ") == 2


_FAKES = {  # stand-ins on PATH: each logs its arguments; srun runs its command once, as node 0
    "circle-rotate": '#!/bin/bash\nprintf "%s\\n" "$*" >> "$LOG"\n',
    "scontrol": '#!/bin/bash\necho node-a\n',
    "srun": '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nSLURM_NODEID=0 "$@"\n',
}


@pytest.mark.parametrize("allocation, nodes, gpus", [({}, "2", "0-7"),
                                                     ({"SLURM_NNODES": "3", "SLURM_GPUS_ON_NODE": "4"}, "3", "0-3")])
def test_slurm_example_follows_the_allocation_and_resumes_when_resubmitted(tmp_path, allocation, nodes, gpus):
    import os

    for name, text in _FAKES.items():
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    log = tmp_path / "calls.log"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}, **allocation, "LOG": str(log),
           "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node-[a-c]"}
    sbatch = RECIPES / "slurm_train.sbatch"
    for extra in (["--dry-run"], []):
        log.unlink(missing_ok=True)
        done = subprocess.run(["bash", str(sbatch), *extra], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        calls = log.read_text().splitlines()
        train = [c for c in calls if c.startswith("train ")]
        assert train and all(f"--nodes {nodes}" in c and f"--gpus {gpus}" in c for c in calls)
        assert all("--save-state --resume-if-saved" in c for c in train)


def test_a_multi_node_dry_run_checks_every_nodes_inputs(real_ws, capsys, roomy, monkeypatch, tmp_path):
    from circle_rotate.cli.main import main

    monkeypatch.setattr("circle_rotate.musubi.accelerate_launch.NODE_LOCAL", ())
    missing = tmp_path / "absent_high_noise_14B_fp16.safetensors"  # node 1's expert
    code = main(["train", "both", "--gpus", "0-3", "--nodes", "2", "--dry-run", "--dit-low", str(real_ws["low"]),
                 "--dit-high", str(missing), "--vae", str(real_ws["vae"]), "--dataset-config", str(real_ws["config"]),
                 "-o", str(real_ws["out"])])
    out = capsys.readouterr().out
    assert code == 2 and any(line.startswith(f"error: {missing}") for line in out.splitlines()), out
    assert "high: " in out and "low: " in out  # both experts' checkpoint notes: each checked once


def test_json_dry_run_keeps_every_nodes_command(real_ws, capfd, roomy, monkeypatch):
    import json

    from circle_rotate.cli.main import main

    monkeypatch.setattr("circle_rotate.musubi.accelerate_launch.NODE_LOCAL", ())
    assert main(["train", "low", "--gpus", "0-3", "--nodes", "2", "--main-address", "node0:29500", "--dry-run",
                 "--json", "--dit-low", str(real_ws["low"]), "--vae", str(real_ws["vae"]),
                 "--dataset-config", str(real_ws["config"]), "-o", str(real_ws["out"])]) == 0
    commands = json.loads(capfd.readouterr().out)["commands"]
    assert list(commands) == ["low"] and len(commands["low"]) == 2
    assert ["--machine_rank 0" in commands["low"][0], "--machine_rank 1" in commands["low"][1]] == [True, True]


def test_gpu_ids_of_the_users_config_must_agree_with_gpus(tmp_path):
    config = tmp_path / "acc.yaml"
    config.write_text((RECIPES / "accelerate_multi_node.yaml").read_text().replace("gpu_ids: all", "gpu_ids: 0,1,2,3"))
    eight = tuple(str(i) for i in range(8))
    (problem,) = check_config(read_config(config), config, ParallelRequest(gpus=eight, nodes=2))
    line = problem.one_line()
    assert "gpu_ids 0,1,2,3 disagrees with --gpus 0,1,2,3,4,5,6,7: accelerate would run on gpu_ids" in line
    assert "fix: set gpu_ids: all" in line
    same = check_config(read_config(config), config, ParallelRequest(gpus=("3", "2", "1", "0"), nodes=2))
    assert not [p for p in same if "gpu_ids" in p.message]


def test_swapped_blocks_of_every_process_are_weighed_against_the_hosts_ram():
    from circle_rotate.musubi.recipe_reader import train_command
    from circle_rotate.musubi.train_parallel import swap_ram_problems
    from circle_rotate.musubi.vram import GB

    published = [train_command("reproduce", "low")]  # 30 blocks swapped, as published
    (warning,) = swap_ram_problems(published, 8, ram=64 * GB)
    assert "8 processes per node each keep 30 swapped blocks" in warning.message and "~79 GiB" in warning.message
    assert "--blocks-to-swap 0" in warning.fix
    assert swap_ram_problems(published, 8, ram=1024 * GB) == []  # room enough
    assert swap_ram_problems(published, 1, ram=8 * GB) == []  # one process: the recipe's own setting
    assert swap_ram_problems([train_command("reproduce", "low", env={"BLOCKS_TO_SWAP": "0"})], 8, ram=8 * GB) == []
