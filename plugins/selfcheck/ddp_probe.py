"""Evidence from inside musubi's training loop, for the CPU data-parallel proof (tiny runs only).

Two opt-in hooks, installed by the tiny runner (:mod:`circle_rotate.selfcheck.tiny_task`) when their
environment variable is set; neither changes what musubi computes unless asked to:

- ``CIRCLE_ROTATE_DDP_TRACE=DIR``: each process appends one JSON line per micro-batch to
  ``DIR/rank<R>.jsonl``: a fingerprint of the latents it trained on (which clip), of the noise
  it drew, and the timesteps, read where musubi turns them into the noisy input.
- ``CIRCLE_ROTATE_RNG_REPLAY=K``: every K consecutive micro-batches start from the same torch and
  Python RNG state. musubi seeds every rank alike (``set_seed(args.seed)``), so in a K-process
  run each rank draws the same noise and timesteps for its own sample; a 1-process run with
  gradient accumulation K draws fresh ones per micro-batch instead. Replaying makes that
  1-process run draw what the K ranks draw, so the two can be compared number for number.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Dict, List

TRACE_ENV = "CIRCLE_ROTATE_DDP_TRACE"
REPLAY_ENV = "CIRCLE_ROTATE_RNG_REPLAY"


def fingerprint(tensor) -> List[float]:
    """Sum and absolute sum in float64, rounded: names a latent or noise tensor across processes."""
    t = tensor.detach().double()
    return [round(float(t.sum()), 4), round(float(t.abs().sum()), 4)]


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def install_trace(directory: Path) -> None:
    """Record every micro-batch's clip, noise and timesteps of this process to ``directory/rank<R>.jsonl``."""
    from musubi_tuner.wan_train_network import WanNetworkTrainer

    original = WanNetworkTrainer.get_noisy_model_input_and_timesteps
    if getattr(original, "circle_rotate_trace", False):
        return
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"rank{_rank()}.jsonl"
    counter: Dict[str, int] = {"micro": 0}

    def traced(self, args, noise, latents, timesteps, noise_scheduler, device, dtype):
        noisy, t = original(self, args, noise, latents, timesteps, noise_scheduler, device, dtype)
        line = {"rank": _rank(), "micro": counter["micro"], "latents": fingerprint(latents),
                "noise": fingerprint(noise), "timesteps": [round(float(x), 6) for x in t.flatten()]}
        counter["micro"] += 1
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
        return noisy, t

    traced.circle_rotate_trace = True
    WanNetworkTrainer.get_noisy_model_input_and_timesteps = traced


def install_replay(every: int) -> None:
    """Start each group of ``every`` micro-batches from the RNG state of its first one."""
    import torch
    from musubi_tuner.networks.lora import LoRANetwork

    original = LoRANetwork.on_step_start
    if getattr(original, "circle_rotate_replay", False):
        return
    state: Dict[str, object] = {"micro": 0}

    # on_step_start runs at the top of each micro-batch, before musubi draws its noise
    def on_step_start(self):
        if state["micro"] % every == 0:
            state["saved"] = (torch.get_rng_state(), random.getstate())
        else:
            torch_state, py_state = state["saved"]
            torch.set_rng_state(torch_state)
            random.setstate(py_state)
        state["micro"] += 1
        return original(self)

    on_step_start.circle_rotate_replay = True
    LoRANetwork.on_step_start = on_step_start


def install_from_env() -> None:
    """Install whichever hooks the environment asks for (none by default)."""
    if os.environ.get(TRACE_ENV):
        install_trace(Path(os.environ[TRACE_ENV]))
    if int(os.environ.get(REPLAY_ENV, "1") or 1) > 1:
        install_replay(int(os.environ[REPLAY_ENV]))
