"""``train --data-parallel``: the recipe's command, launched by accelerate over the planned GPUs and nodes.

The recipe's own command is kept (its flags, its ``CUDA_VISIBLE_DEVICES``); only its launcher
becomes a complete ``accelerate launch`` line per node (:mod:`circle_rotate.musubi.accelerate_launch`)
and, when asked, ``--gradient_accumulation_steps`` and ``--learning_rate`` change
(:mod:`circle_rotate.musubi.parallel_plan`). The checks of the request against the hardware, the
accelerate config and the storage come back as preflight problems, one line each.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from circle_rotate.musubi.accelerate_launch import (check_config, check_request, check_shared_paths, launcher, read_config,
                                             shared_paths_note)
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.memory import machine_ram_bytes
from circle_rotate.musubi.parallel_plan import (BatchMaths, ParallelRequest, Placement, dataset_batches, parse_address,
                                        place_experts)
from circle_rotate.musubi.preflight_findings import Problem
from circle_rotate.musubi.recipe_reader import MusubiCommand, edit_options, option_values, train_command

CONFIG_NAME = "accelerate-{expert}.yaml"
PLACEHOLDER = "NODE0_HOST:29500"  # printed when --main-address is missing or wrong (an error is listed too)


@dataclass(frozen=True)
class MathsChoice:
    """How the run's batch maths may differ from the published run (both go into run.json)."""

    accumulation: Optional[int] = None  # --gradient_accumulation_steps; None: the recipe's
    lr_rule: str = "none"  # none | linear | sqrt


@dataclass(frozen=True)
class ParallelRun:
    expert: str
    node: int
    placement: Optional[Placement]
    command: MusubiCommand
    config: Optional[Path]  # accelerate config to write before running (None: the user's, or none)
    maths: BatchMaths


@dataclass(frozen=True)
class ParallelPlan:
    runs: Tuple[ParallelRun, ...]
    problems: Tuple[Problem, ...]
    notes: Tuple[str, ...]


def dataset_shape(command: MusubiCommand) -> Tuple[int, Optional[int], Tuple[Path, ...]]:
    """(batch_size, batches per epoch or None, cache directories) of the command's dataset config."""
    from circle_rotate.musubi.cache_plan import plan_cache

    config = option_values(command.args).get("--dataset_config", [""])[0]
    try:
        plan = plan_cache(Path(config))
    except UserError:
        return 1, None, ()
    size, batches = dataset_batches(plan)
    return size, batches, tuple(d.cache_directory for d in plan.datasets)


def apply_maths(command: MusubiCommand, choice: MathsChoice, processes: int, batches: Tuple[int, Optional[int]]
                ) -> Tuple[MusubiCommand, BatchMaths]:
    """The command with the chosen accumulation and learning rate, and the maths it implies."""
    values = option_values(command.args)
    published = int((values.get("--gradient_accumulation_steps") or ["1"])[0])
    maths = BatchMaths(batch_size=batches[0], processes=processes, accumulation=choice.accumulation or published,
                       batches_per_epoch=batches[1], published_accumulation=published,
                       learning_rate=float((values.get("--learning_rate") or ["0"])[0]), lr_rule=choice.lr_rule)
    changes: Dict[str, Optional[List[str]]] = {}
    if choice.accumulation is not None and choice.accumulation != published:
        changes["--gradient_accumulation_steps"] = [str(choice.accumulation)]
    if maths.scaled_learning_rate != maths.learning_rate:
        changes["--learning_rate"] = [f"{maths.scaled_learning_rate:.6g}"]
    return (command.with_args(edit_options(command.args, changes)) if changes else command), maths


def values_path(command: MusubiCommand) -> str:
    return option_values(command.args).get("--dataset_config", [""])[0]


def plan_parallel(recipe: str, experts: Sequence[str], env: Dict[str, str], request: ParallelRequest,
                  choice: MathsChoice, *, for_run: bool,
                  transform: Optional[Callable[[MusubiCommand], MusubiCommand]] = None) -> ParallelPlan:
    """Every node's commands (or only ``request.node_rank``'s when given), with the checks.

    Every problem (a bad rank, port, address, accelerate config or path) comes back as a
    :class:`~circle_rotate.musubi.preflight.Problem`; the commands are planned regardless, for the dry run.
    """
    address_problems: List[Problem] = []
    if request.main_address:
        try:
            parse_address(request.main_address)
        except ValueError as exc:
            address_problems.append(Problem("error", "", f"--main-address: {exc}",
                                            "give node 0's HOST:PORT with a free port, e.g. node0:29500"))
            request = replace(request, main_address=None)
    try:
        placements = place_experts(experts, request)
    except ValueError as exc:
        if not address_problems:  # a malformed address was reported already
                address_problems.append(Problem("error", "", str(exc), "pass --main-address HOST:PORT of node 0 "
                                                                   "(the same on every node)"))
        placements = place_experts(experts, replace(request, main_address=PLACEHOLDER))
    problems = address_problems + check_request(request, placements)
    user_config = request.accelerate_config
    if user_config is not None:
        try:
            problems += check_config(read_config(user_config), user_config, request, placements)
        except ValueError as exc:
            problems.append(Problem("error", str(user_config), str(exc), "give an accelerate config written by "
                                    "`accelerate config` or recipes/accelerate_multi_node.yaml"))
    nodes = [request.node_rank] if request.node_rank is not None else list(range(request.nodes))
    if for_run and request.nodes > 1 and request.node_rank is None:
        problems.append(Problem("error", "", f"--nodes {request.nodes} runs one command per node",
                                "run it on each node with its --node-rank (0 to "
                                f"{request.nodes - 1}), e.g. from recipes/slurm_train.sbatch"))
    runs: List[ParallelRun] = []
    shared: Dict[str, Path] = {}
    for pl in placements:
        base = train_command(recipe, pl.expert, env={**env, "GPU": ",".join(pl.gpus),
                                                       "NUM_PROCESSES": str(pl.processes)})
        size, batches, caches = dataset_shape(base)
        command, maths = apply_maths(base, choice, pl.processes, (size, batches))
        if batches is not None and batches < pl.processes:
            problems.append(Problem("warning", values_path(base), f"{batches} dataset batch(es) per epoch for "
                                    f"{pl.processes} processes: accelerate repeats batches to give every process one",
                                    "use fewer GPUs for this dataset"))
        values = option_values(command.args)
        out = Path((values.get("--output_dir") or ["."])[0])
        shared[f"{pl.expert} output"] = out
        shared.update({f"cache directory {k}": c for k, c in enumerate(caches)})
        shared["dataset config"] = Path(values.get("--dataset_config", [""])[0])
        shared.update({f"{pl.expert} {flag[2:]}": Path(values[flag][0])
                       for flag in ("--dit", "--vae") if values.get(flag)})
        config = user_config or out / CONFIG_NAME.format(expert=pl.expert)
        for node in nodes:
            if node not in pl.node_ranks:
                continue
            accelerate = command.launcher[0] if command.launcher else "accelerate"
            c = replace(command, launcher=launcher(accelerate, pl, node_rank=node, config=config))
            runs.append(ParallelRun(pl.expert, node, pl, transform(c) if transform else c,
                                    None if user_config else config, maths))
    problems += check_shared_paths(shared, request.nodes)
    problems += swap_ram_problems([r.command for r in runs], len(request.gpus))
    problems += ddp_timeout_problems(runs)
    notes = [line for line in [shared_paths_note(shared) if request.nodes > 1 else None] if line]
    return ParallelPlan(tuple(runs), tuple(problems), tuple(notes))


def describe(plan: ParallelPlan) -> List[str]:
    """The maths once per expert, then each node's exact commands."""
    lines: List[str] = []
    seen = set()
    for run in plan.runs:
        if run.expert not in seen:
            seen.add(run.expert)
            pl = run.placement
            lines.append(f"{run.expert}: {pl.processes} process(es) = {pl.machines} node(s) x {len(pl.gpus)} GPU(s) "
                         f"({','.join(pl.gpus)})")
            lines += [f"  {line}" for line in run.maths.describe()]
    nodes = sorted({r.node for r in plan.runs})
    for node in nodes:
        if len(nodes) > 1 or any(r.placement.machines > 1 for r in plan.runs):
            lines.append(f"# node {node} (--node-rank {node}):")
        lines += [run.command.shell() for run in plan.runs if run.node == node]
    return lines


def ddp_timeout_problems(runs: Sequence[ParallelRun]) -> List[Problem]:
    """A warning per expert whose ``--ddp_timeout`` (``DDP_TIMEOUT``) musubi would drop.

    musubi 0.3.4 builds its ``InitProcessGroupKwargs(timeout=...)`` only ``if
    torch.cuda.device_count() > 1`` (``training/accelerator_setup.py``: ``prepare_accelerator``);
    every process of a placement sees the placement's GPUs on its node (the launch line's
    ``CUDA_VISIBLE_DEVICES``, kept by ``--gpu_ids all``), so with one GPU per node the process
    group keeps torch's default timeout and the setting meant to outlast rank 0's saves does nothing.
    """
    out, seen = [], set()
    for run in runs:
        pl, value = run.placement, (option_values(run.command.args).get("--ddp_timeout") or [""])[0]
        if not value or pl is None or len(pl.gpus) > 1 or run.expert in seen:
            continue
        seen.add(run.expert)
        if pl.processes > 1:
            fix = ("give each node 2+ GPUs (--gpus) for it to apply, or keep rank 0's saves under torch's default "
                   "of 10 minutes (faster storage, fewer saved epochs)")
        else:
            fix = "leave DDP_TIMEOUT unset: a single process has no other rank to wait for"
        out.append(Problem("warning", "DDP_TIMEOUT", f"--ddp_timeout {value} of {pl.expert} is ignored: musubi "
                           "applies it only when a process sees more than one GPU (torch.cuda.device_count() > 1), "
                           f"and each of its {pl.processes} process(es) sees one (GPU {pl.gpus[0] or 'none'})", fix))
    return out


#: Share of this machine's RAM the swapped blocks of all its processes may take before a warning:
#: each process also peaks while it loads the 28.6 GB expert, and the OS needs its page cache.
SWAP_RAM_SHARE = 0.6


def swap_ram_problems(commands: Sequence[MusubiCommand], processes_per_node: int, *,
                      ram: Optional[int] = None) -> List[Problem]:
    """Host RAM the swapped blocks take on one node: each data-parallel process keeps its own copy
    (the frozen DiT is outside DDP), so 30 blocks (the published setting) on 8 GPUs hold ~84 GB.
    A warning when that passes :data:`SWAP_RAM_SHARE` of this machine's RAM (``ram``; the OS's when
    None), read on the node that runs it."""
    from circle_rotate.kernel.wan_arch import I2V_A14B
    from circle_rotate.musubi.vram import GB, block_weight_bytes

    worst = None
    for command in commands:
        values = option_values(command.args)
        blocks = int((values.get("--blocks_to_swap") or ["0"])[0])
        if blocks and (values.get("--task") or [""])[0] == "i2v-A14B":
            need = processes_per_node * blocks * block_weight_bytes(I2V_A14B, fp8_base="--fp8_base" in values)
            worst = max(worst or (0, 0), (need, blocks))
    if worst is None or processes_per_node < 2:
        return []
    need, blocks = worst
    ram = machine_ram_bytes() if ram is None else ram
    if ram is None or need <= SWAP_RAM_SHARE * ram:
        return []
    return [Problem("warning", "BLOCKS_TO_SWAP", f"{processes_per_node} processes per node each keep {blocks} "
                    f"swapped blocks in host RAM: ~{need / GB:.0f} GiB of this machine's {ram / GB:.0f} GiB",
                    "on 48-80 GB cards swap no blocks: --blocks-to-swap 0 (memory only, the same maths)")]
