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
from test_train_cli import _MULTI_GPU_DEFAULT, _accelerate_sees, real_ws  # noqa: F401  (fixture)

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
    for gpus in (eight, eight[:4]):
        request = ParallelRequest(gpus=gpus, nodes=2, main_address="n0:29500")
        problems = check_config(read_config(template), template, request, place_experts(("low",), request))
        if gpus == eight:
            assert problems == []
        else:
            (wrong,) = problems
            assert ("num_processes is 16 but the launch line of low passes --num_processes 8 (2 node(s) x 4 GPU(s))"
                    in wrong.one_line() and "fix: set num_processes: 8, or --gpus with 8 GPUs per node" in
                    wrong.one_line())
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
     "num_processes is 16 but the launch line of low passes --num_processes 8 (2 node(s) x 4 GPU(s)), which "
     "accelerate uses over the config; fix: set num_processes: 8"),
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


def test_gpu_ids_of_the_users_config_other_than_gpus_is_a_warning_as_gpus_decide(tmp_path):
    config = tmp_path / "acc.yaml"
    config.write_text((RECIPES / "accelerate_multi_node.yaml").read_text().replace("gpu_ids: all", "gpu_ids: 0,1,2,3"))
    eight = tuple(str(i) for i in range(8))
    request = ParallelRequest(gpus=eight, nodes=2, main_address="n0:29500")
    (problem,) = check_config(read_config(config), config, request, place_experts(("low",), request))
    line = problem.one_line()
    assert line.startswith(f"warning: {config}: gpu_ids 0,1,2,3 differs from --gpus 0,1,2,3,4,5,6,7; the launch "
                           "lines pass --gpu_ids all, so --gpus decides (low on 0,1,2,3,4,5,6,7)")
    assert "fix: set gpu_ids: all" in line
    request = ParallelRequest(gpus=("3", "2", "1", "0"), nodes=2, main_address="n0:29500")
    same = check_config(read_config(config), config, request, place_experts(("low",), request))
    assert not [p for p in same if "gpu_ids" in p.message]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _plan(tmp_path, experts, gpus, *, nodes=1, config=None, env=()):
    from circle_rotate.musubi.train import TrainRequest, plan_training

    outputs = (("OUTPUT_DIR_LOW", str(tmp_path / "low")), ("OUTPUT_DIR_HIGH", str(tmp_path / "high")))
    address = f"127.0.0.1:{_free_port()}" if nodes == 1 else "node0:29500"  # accelerate checks the port is free
    return plan_training(TrainRequest(experts, env=outputs + tuple(env), gpus=gpus, parallel=ParallelRequest(
        gpus=gpus, nodes=nodes, main_address=address, accelerate_config=config)))


@pytest.mark.parametrize("gpu_ids", [None, "all", "0,1,2,3,4,5,6,7"])  # None: the config train writes
def test_each_experts_processes_see_only_its_own_gpus_whatever_the_configs_gpu_ids(tmp_path, monkeypatch, gpu_ids):
    """accelerate's own parser, validation and child environment, as ``accelerate launch`` computes them:
    before ``--gpu_ids all`` on the line, ``gpu_ids: 0,...,7`` set CUDA_VISIBLE_DEVICES 0-7 for both experts."""
    import copy

    from accelerate.utils.launch import prepare_multi_gpu_env

    default = tmp_path / "default_config.yaml"  # the user's default config names gpu_ids too: never read
    default.write_text(_MULTI_GPU_DEFAULT)
    config = None
    if gpu_ids is not None:
        config = tmp_path / "acc.yaml"
        config.write_text(f"compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\ngpu_ids: {gpu_ids}\n"
                          "machine_rank: 0\nmain_training_function: main\nmixed_precision: 'no'\nuse_cpu: false\n")
    eight = tuple(str(i) for i in range(8))
    for experts, want in ((("low", "high"), {"low": "0,1,2,3", "high": "4,5,6,7"}), (("low",), {"low": "0,1,2,3,4,5,6,7"})):
        plan = _plan(tmp_path, experts, eight, config=config)
        assert not [p.one_line() for p in plan.problems if p.severity == "error"]
        seen = {}
        for run in plan.runs:
            for path, text in run.accelerate_config:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            args = _accelerate_sees(run.command.launcher, monkeypatch, default)
            assert args.multi_gpu and args.num_processes == len(want[run.expert].split(","))
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", run.command.env_dict["CUDA_VISIBLE_DEVICES"])  # the line's env
            seen[run.expert] = prepare_multi_gpu_env(copy.copy(args))["CUDA_VISIBLE_DEVICES"]
        assert seen == want


def test_a_users_config_is_judged_against_each_launch_line_not_all_gpus(tmp_path, monkeypatch):
    """Split plans: each launch line passes its expert's own --num_processes / --num_machines, and accelerate
    uses those over the config's; a config saying what runs is accepted, one saying nodes x all GPUs refused."""
    eight = tuple(str(i) for i in range(8))
    default = tmp_path / "default_config.yaml"
    default.write_text(_MULTI_GPU_DEFAULT)
    monkeypatch.setattr("circle_rotate.musubi.accelerate_launch.NODE_LOCAL", ())
    base = "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\ngpu_ids: all\nmachine_rank: 0\n"
    cases = [  # (nodes, num_machines, num_processes, the error or None)
        (1, 1, 4, None),
        (1, 1, 8, "num_processes is 8 but the launch line of low passes --num_processes 4 (1 node(s) x 4 GPU(s), "
                  "the experts splitting the hardware), which accelerate uses over the config; fix: set "
                  "num_processes: 4 (each launch line passes its own)"),
        (2, 1, 8, None),
        (2, 2, 8, "num_machines is 2 but the launch line of low passes --num_machines 1 (1 node(s) x 8 GPU(s), "
                  "the experts splitting the hardware), which accelerate uses over the config; fix: set "
                  "num_machines: 1 (each launch line passes its own)"),
        (2, 1, 16, "num_processes is 16 but the launch line of low passes --num_processes 8"),
    ]
    for k, (nodes, machines, processes, error) in enumerate(cases):
        config = tmp_path / f"acc{k}.yaml"
        config.write_text(f"{base}num_machines: {machines}\nnum_processes: {processes}\n")
        plan = _plan(tmp_path, ("low", "high"), eight, nodes=nodes, config=config)
        errors = [p.one_line() for p in plan.problems if p.path == str(config)]  # (not the recipe's relative paths)
        if error is None:
            assert errors == [], (k, errors)
        else:
            (line,) = errors
            assert line.startswith(f"error: {config}: {error}"), line
        for run in plan.runs:  # what runs: the launch line's values, whatever the config says
            args = _accelerate_sees(run.command.launcher, monkeypatch, default)
            placed = dict(run.details)["data_parallel"]
            assert (args.num_processes, args.num_machines) == (placed["processes"], placed["nodes"])


def test_musubi_applies_ddp_timeout_only_when_a_process_sees_several_gpus(musubi, monkeypatch):
    """The premise of the DDP_TIMEOUT warning, on musubi's own prepare_accelerator."""
    from types import SimpleNamespace

    import musubi_tuner.training.accelerator_setup as setup
    import torch

    from circle_rotate.musubi.args import parse_musubi_args
    from circle_rotate.musubi.recipe_reader import train_command

    args = parse_musubi_args("wan_train_network", train_command("reproduce", "low", env={"DDP_TIMEOUT": "60"}).args)
    assert args.ddp_timeout == 60
    handed = {}
    monkeypatch.setattr(setup, "Accelerator", lambda **kw: handed.update(kw) or SimpleNamespace(device="stub"))
    for count, timeout in ((1, None), (2, 60 * 60.0)):
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        setup.prepare_accelerator(args)
        groups = [h for h in handed["kwargs_handlers"] if isinstance(h, setup.InitProcessGroupKwargs)]
        assert [g.timeout.total_seconds() for g in groups] == ([] if timeout is None else [timeout])


def test_ddp_timeout_is_a_warning_where_each_process_sees_one_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr("circle_rotate.musubi.accelerate_launch.NODE_LOCAL", ())
    timeout = (("DDP_TIMEOUT", "60"),)

    def warnings(experts, gpus, nodes=1, env=timeout):
        return [p.one_line() for p in _plan(tmp_path, experts, gpus, nodes=nodes, env=env).problems
                if p.path == "DDP_TIMEOUT"]

    (line,) = warnings(("low",), ("0",), nodes=2)  # one GPU per node, two processes
    assert line.startswith("warning: DDP_TIMEOUT: --ddp_timeout 60 of low is ignored: musubi applies it only when a "
                           "process sees more than one GPU (torch.cuda.device_count() > 1), and each of its 2 "
                           "process(es) sees one (GPU 0); fix: give each node 2+ GPUs (--gpus)")
    side_by_side = warnings(("low", "high"), ("0", "1"))  # one process per expert
    assert [line.split(" is ignored")[0] for line in side_by_side] == [
        "warning: DDP_TIMEOUT: --ddp_timeout 60 of low", "warning: DDP_TIMEOUT: --ddp_timeout 60 of high"]
    assert all("fix: leave DDP_TIMEOUT unset" in line for line in side_by_side)
    assert warnings(("low",), ("0", "1")) == [] and warnings(("low", "high"), ("0", "1", "2", "3")) == []
    assert warnings(("low",), ("0",), nodes=2, env=()) == []  # not set: nothing to warn about


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
