"""What stops musubi-tuner 0.3.4 from training data parallel on CPUs, and the one rule that fixes it.

Measured with accelerate 1.6.0 (musubi's pin) and torch 2.13 CPU, two processes launched by
``accelerate launch --multi_gpu --num_processes 2`` on a machine without CUDA (accelerate then
runs ``DistributedType.MULTI_CPU`` over gloo): musubi's trainer calls
``accelerator.prepare(transformer)`` on the DiT it froze (``transformer.requires_grad_(False)``,
``trainer_base.py``). On GPUs accelerate wraps a model in ``DistributedDataParallel`` only
``if any(p.requires_grad for p in model.parameters())``; its ``MULTI_CPU`` branch has no such
test, so it wraps the frozen DiT and torch refuses on every rank: "DistributedDataParallel is
not needed when a module doesn't have any parameter that requires a gradient". Nothing in
musubi is CPU-specific here: the process group, the LoRA network's DDP, the data-loader
sharding and the saving all run once this one step is past.

:func:`install` gives ``MULTI_CPU`` the GPU branch's rule (a frozen model is prepared like an
evaluation model: placed and cast, not wrapped); trainable models, the LoRA network among
them, still get DDP. The tiny runner (:mod:`circle_rotate.selfcheck.tiny_task`) installs it only in
multi-process CPU runs; GPU runs never see it.
"""

from __future__ import annotations

import os

_MARK = "circle_rotate_cpu_ddp"


def needed() -> bool:
    """True in a multi-process run on a machine without CUDA (what accelerate runs as MULTI_CPU)."""
    import torch

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def install() -> None:
    """Make accelerate's MULTI_CPU ``prepare_model`` skip DDP for frozen models, as MULTI_GPU does (idempotent)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    original = Accelerator.prepare_model
    if getattr(original, _MARK, False):
        return

    def prepare_model(self, model, device_placement=None, evaluation_mode=False):
        if self.distributed_type == DistributedType.MULTI_CPU and not any(p.requires_grad for p in model.parameters()):
            evaluation_mode = True
        return original(self, model, device_placement=device_placement, evaluation_mode=evaluation_mode)

    setattr(prepare_model, _MARK, True)
    Accelerator.prepare_model = prepare_model
