"""Data parallel on a CPU: musubi's real wan_train_network.py as 2 accelerate processes (gloo) against 1 process.

The claim tested: 2 processes at batch 1 are the same optimizer steps as 1 process with gradient
accumulation 2 (global batch 2 both), sample for sample, to the last bit of the saved LoRA, once
the one thing that differs by design is lined up. That thing is the random draws: musubi seeds
every rank with the same ``--seed``, so both ranks draw the same noise and timesteps for their
own sample, while one process draws fresh ones per micro-batch. The reference run replays its RNG
per optimizer step (``CIRCLE_ROTATE_RNG_REPLAY``, :mod:`circle_rotate.selfcheck.ddp_probe`) to draw what the
ranks draw; without the replay the LoRAs differ by more than the update itself.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from circle_rotate.selfcheck.ddp_probe import REPLAY_ENV, TRACE_ENV
from test_preflight import write_clips

#: Stated tolerance, relative to the largest LoRA-up weight: allreduce sums the two ranks'
#: gradients in another order than accumulation does (float32 rounding); measured: 0 (bit-identical).
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def runs(musubi, tiny_musubi_models, write_musubi_caches, tmp_path_factory):
    from circle_rotate.musubi.cache_plan import plan_cache
    from circle_rotate.musubi.parallel_plan import ParallelRequest
    from circle_rotate.musubi.train import TrainRequest, train
    from circle_rotate.musubi.train_parallel import MathsChoice
    from circle_rotate.selfcheck.smoke import _script_server, scale_down

    root = tmp_path_factory.mktemp("ddp")
    clips = write_clips(root / "clips")
    config = root / "dataset.toml"
    # batch 1, each clip twice: 4 batches an epoch, so both optimizer steps fall in one epoch
    config.write_text(f'[general]\nresolution = [32, 32]\ncaption_extension = ".txt"\nbatch_size = 1\n'
                      f'num_repeats = 2\n\n[[datasets]]\nvideo_directory = "{clips.as_posix()}"\n'
                      f'cache_directory = "{(root / "cache").as_posix()}"\ntarget_frames = [5]\n'
                      f'frame_extraction = "head"\n', encoding="utf-8")
    write_musubi_caches(plan_cache(config))
    m = tiny_musubi_models
    out = {}

    def run(name, server, parallel=None, maths=MathsChoice(), env=(), folder=None):
        folder = root / (folder or name)

        def transform(command):  # the 2-process run starts fresh interpreters; 1-process runs fork the server
            return scale_down(command, workdir=m.tokenizer_root, server=server).with_env(
                **{TRACE_ENV: str(folder / "trace"), **dict(env)})

        request = TrainRequest(("low",), env=(("DIT_LOW", str(m.dit_low)), ("VAE", str(m.vae)),
                                              ("DATASET_CONFIG", str(config)), ("OUTPUT_DIR_LOW", str(folder))),
                               gpus=("",), parallel=parallel, maths=maths)
        result = train(request, dry_run=False, echo=lambda line: None, transform=transform)
        out[name] = (folder, result)

    with _script_server(lambda line: None) as server:
        run("ddp", server, parallel=ParallelRequest(gpus=("0", "1")))
        run("replayed", server, maths=MathsChoice(accumulation=2), env=((REPLAY_ENV, "2"),))
        run("plain", server, maths=MathsChoice(accumulation=2))
    # two "nodes" of one process each, both this machine: the per-node commands, launched for real
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("circle_rotate.musubi.accelerate_launch.NODE_LOCAL", ())  # this machine's /tmp is shared by its "nodes"
        port = _free_port()
        nodes = [threading.Thread(target=run, args=(f"nodes{rank}", None), kwargs={"parallel": ParallelRequest(
            gpus=("0",), nodes=2, node_rank=rank, main_address=f"127.0.0.1:{port}"), "folder": "nodes"})
            for rank in (0, 1)]
        for t in nodes:
            t.start()
        for t in nodes:
            t.join()
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _trace(folder: Path, rank: int):
    return [json.loads(line) for line in (folder / "trace" / f"rank{rank}.jsonl").read_text().splitlines()]


def test_two_ranks_step_on_different_samples_and_one_lora_is_saved(runs):
    folder, result = runs["ddp"]
    command = result.plan.runs[0].command
    assert "accelerate.commands.launch" in command.argv and "--num_processes" in command.argv
    # the launch line's --gpu_ids all keeps its CUDA_VISIBLE_DEVICES over a config's gpu_ids; accelerate runs it
    assert command.argv[command.argv.index("--gpu_ids") + 1] == "all"
    assert sorted(p.name for p in folder.glob("*.safetensors")) == ["circle_rotate_l.safetensors"]
    rank0, rank1 = _trace(folder, 0), _trace(folder, 1)
    assert len(rank0) == len(rank1) == 2  # 2 optimizer steps, one micro-batch per rank each
    for a, b in zip(rank0, rank1):
        assert a["latents"] != b["latents"]  # different clips
        assert a["noise"] == b["noise"] and a["timesteps"] == b["timesteps"]  # same seed on every rank
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "finished" and record["data_parallel"]["processes"] == 2
    assert record["batch_maths"]["global_batch"] == 2 and record["batch_maths"]["steps_per_epoch"] == 2
    assert record["batch_maths"]["published"]["steps_per_epoch"] == 4
    assert (folder / "accelerate-low.yaml").is_file()


def test_same_samples_per_step_as_one_process_with_accumulation(runs):
    ddp, _ = runs["ddp"]
    ref = _trace(runs["replayed"][0], 0)
    assert len(ref) == 4
    ranks = _trace(ddp, 0), _trace(ddp, 1)
    for step in range(2):
        assert sorted([ranks[0][step]["latents"], ranks[1][step]["latents"]]) == sorted(
            [ref[2 * step]["latents"], ref[2 * step + 1]["latents"]])
        assert ref[2 * step]["noise"] == ref[2 * step + 1]["noise"] == ranks[0][step]["noise"]
    record = json.loads((runs["replayed"][0] / "run.json").read_text())
    assert record["batch_maths"]["gradient_accumulation"] == 2 and record["batch_maths"]["global_batch"] == 2


def test_two_processes_equal_one_with_accumulation_within_tolerance(runs):
    from safetensors.torch import load_file

    ddp = load_file(str(runs["ddp"][0] / "circle_rotate_l.safetensors"))
    scale = max(float(v.abs().max()) for k, v in ddp.items() if k.endswith("lora_up.weight"))
    assert scale > 0  # the LoRA moved

    def worst(name):
        other = load_file(str(runs[name][0] / "circle_rotate_l.safetensors"))
        assert other.keys() == ddp.keys()
        return max(float((ddp[k] - other[k]).abs().max()) for k in ddp)

    assert worst("replayed") <= TOLERANCE * scale
    # without lining up the random draws the two runs are different training runs
    assert worst("plain") > 0.5 * scale


def test_per_node_commands_run_as_two_nodes_and_train_the_same_lora(runs):
    """Node 0 and node 1 (both this machine) each launch their own line; together they are the 2-process run."""
    from safetensors.torch import load_file

    assert "nodes0" in runs and "nodes1" in runs, "a node's train() raised"
    folder, first = runs["nodes0"]
    _, second = runs["nodes1"]
    (a,), (b,) = first.plan.runs, second.plan.runs
    assert " ".join(a.command.argv).replace("--machine_rank 0", "--machine_rank 1") == " ".join(b.command.argv)
    assert a.record and not b.record  # node 0 writes run.json; the other node's record would race it
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "finished" and record["data_parallel"]["node_ranks"] == [0, 1]
    assert sorted(p.name for p in folder.glob("*.safetensors")) == ["circle_rotate_l.safetensors"]
    ddp = load_file(str(runs["ddp"][0] / "circle_rotate_l.safetensors"))
    nodes = load_file(str(folder / "circle_rotate_l.safetensors"))
    assert max(float((ddp[k] - nodes[k]).abs().max()) for k in ddp) == 0
