"""Where each expert trains when there are several GPUs or machines, and what that does to the maths.

musubi-tuner trains through accelerate's DistributedDataParallel (its ``prepare_accelerator``
says DeepSpeed is not supported). With P processes and gradient accumulation A each optimizer
step averages the gradients of ``batch_size x P x A`` samples, and an epoch has
``ceil(batches / P / A)`` steps (``trainer_base.py``: ``len(train_dataloader) /
accelerator.num_processes / args.gradient_accumulation_steps``). The published run used one
GPU and batch 1, so any data-parallel run takes fewer, larger steps: :func:`batch_maths`
states by how much, and the learning-rate rules (:data:`LR_RULES`) are the usual corrections.

The two experts never exchange anything, so the default plans split the hardware between
them: with both experts and 2N GPUs on one machine, N GPUs each at the same time; with two
machines, one expert per machine, nothing crossing the network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

DEFAULT_PORT = 29500
#: learning-rate rule -> factor as a function of (global batch / published global batch)
LR_RULES = {"none": lambda r: 1.0, "linear": lambda r: float(r), "sqrt": lambda r: math.sqrt(r)}


@dataclass(frozen=True)
class ParallelRequest:
    """Hardware for ``train --data-parallel``: GPUs per node, nodes, and this node's rank."""

    gpus: Tuple[str, ...]  # CUDA devices on each node
    nodes: int = 1
    node_rank: Optional[int] = None  # None: plan (and print) every node
    main_address: Optional[str] = None  # "HOST:PORT" of node 0, needed when one run spans nodes
    accelerate_config: Optional[Path] = None  # the user's accelerate config; else one is written
    experts_in_turn: bool = False  # both experts one after the other, each on all the hardware


@dataclass(frozen=True)
class Placement:
    """One ``accelerate launch``: an expert over ``gpus`` on each of ``node_ranks``."""

    expert: str
    node_ranks: Tuple[int, ...]
    gpus: Tuple[str, ...]
    host: str
    port: int
    chain: str  # runs in turn with the placements sharing its chain label on a node

    @property
    def machines(self) -> int:
        return len(self.node_ranks)

    @property
    def processes(self) -> int:
        return len(self.gpus) * len(self.node_ranks)


def parse_address(text: str) -> Tuple[str, int]:
    """``HOST:PORT`` -> (host, port); raises ValueError naming what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"'{text}' is not HOST:PORT")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port '{port}' of '{text}' is not a port number (1-65535)")
    return host, int(port)


def place_experts(experts: Sequence[str], request: ParallelRequest) -> List[Placement]:
    """The default plan (see the module docstring); ``main_address`` must parse when a run spans nodes.

    Raises:
        ValueError: a run spans several nodes and ``main_address`` is missing or malformed.
    """
    gpus, nodes = tuple(request.gpus), request.nodes
    base = parse_address(request.main_address)[1] if request.main_address else DEFAULT_PORT

    def spanning(expert: str) -> Placement:
        if nodes == 1:
            return Placement(expert, (0,), gpus, "127.0.0.1", base, "all")
        if not request.main_address:
            raise ValueError(f"{expert} spans {nodes} nodes: it needs the address of node 0")
        host, port = parse_address(request.main_address)
        return Placement(expert, tuple(range(nodes)), gpus, host, port, "all")

    if len(experts) == 2 and not request.experts_in_turn:
        if nodes == 1 and len(gpus) >= 2 and len(gpus) % 2 == 0:
            half = len(gpus) // 2
            # two launches on one machine: each needs its own rendezvous port
            return [Placement(e, (0,), gpus[k * half:(k + 1) * half], "127.0.0.1", base + k, e)
                    for k, e in enumerate(experts)]
        if nodes == 2:
            return [Placement(e, (k,), gpus, "127.0.0.1", base, e) for k, e in enumerate(experts)]
    return [spanning(e) for e in experts]


@dataclass(frozen=True)
class BatchMaths:
    """Global batch and steps of a run against the published one (1 process, the recipe's accumulation)."""

    batch_size: int
    processes: int
    accumulation: int
    batches_per_epoch: Optional[int]  # dataset batches per epoch (after buckets and repeats); None: unknown
    published_accumulation: int = 1
    learning_rate: float = 0.0
    lr_rule: str = "none"

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.processes * self.accumulation

    @property
    def published_global_batch(self) -> int:
        return self.batch_size * self.published_accumulation

    @property
    def steps_per_epoch(self) -> Optional[int]:
        if self.batches_per_epoch is None:
            return None
        return math.ceil(self.batches_per_epoch / self.processes / self.accumulation)

    @property
    def published_steps_per_epoch(self) -> Optional[int]:
        if self.batches_per_epoch is None:
            return None
        return math.ceil(self.batches_per_epoch / self.published_accumulation)

    @property
    def ratio(self) -> float:
        return self.global_batch / self.published_global_batch

    @property
    def scaled_learning_rate(self) -> float:
        return self.learning_rate * LR_RULES[self.lr_rule](self.ratio)

    def describe(self) -> List[str]:
        lines = [f"global batch {self.global_batch} = batch_size {self.batch_size} x {self.processes} process(es) "
                 f"x {self.accumulation} accumulation; published: {self.published_global_batch} "
                 f"(batch_size {self.batch_size} x 1 x {self.published_accumulation})"]
        if self.steps_per_epoch is not None:
            lines.append(f"steps per epoch {self.steps_per_epoch} (published {self.published_steps_per_epoch}) from "
                         f"{self.batches_per_epoch} dataset batches")
        if self.ratio != 1:
            lines.append(f"against the published run: {self.ratio:g}x the samples per optimizer step, 1/{self.ratio:g} "
                         "of the steps over the same epochs; the same clips are seen as often")
            lines.append(f"learning rate {self.learning_rate:g} -> {self.scaled_learning_rate:g} (--lr-rule "
                         f"{self.lr_rule}); ways to keep the maths close: --lr-rule linear (x{self.ratio:g}) or sqrt "
                         f"(x{math.sqrt(self.ratio):.3g}), or train a 1-GPU reference with --grad-accumulation "
                         f"{self.processes * self.accumulation} (the same global batch, the same maths)")
        if self.processes > 1:
            lines.append("musubi seeds every process alike (set_seed(--seed)): the processes' samples in one step "
                         "share one noise draw and one timestep, where one process draws them per sample")
        return lines

    def to_record(self) -> Dict[str, object]:
        return {"batch_size": self.batch_size, "processes": self.processes, "gradient_accumulation": self.accumulation,
                "global_batch": self.global_batch, "steps_per_epoch": self.steps_per_epoch,
                "published": {"global_batch": self.published_global_batch,
                              "steps_per_epoch": self.published_steps_per_epoch,
                              "learning_rate": self.learning_rate},
                "lr_rule": self.lr_rule, "learning_rate": self.scaled_learning_rate}


def dataset_batches(plan) -> Tuple[int, int]:
    """(batch_size of the first dataset, batches per epoch) of a :class:`~circle_rotate.musubi.cache_plan.CachePlan`."""
    from circle_rotate.musubi.preflight_data import steps_per_epoch

    size = int(dict(plan.datasets[0].section).get("batch_size", 1)) if plan.datasets else 1
    return size, steps_per_epoch(plan)
