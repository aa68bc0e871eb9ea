"""accelerate configs and ``accelerate launch`` lines for data-parallel musubi runs, and their checks.

A run's launcher always spells out the process count, machine count, this machine's rank, the
rendezvous address and ``--gpu_ids all`` (its ``CUDA_VISIBLE_DEVICES`` picks the GPUs), so a printed
per-node command is complete on its own and a config's values for these never apply; the config file
(written beside the LoRAs, or the user's own) carries the rest (``distributed_type``,
``rdzv_backend``). Every check returns :class:`~circle_rotate.musubi.preflight.Problem` lines that
name the fix; nothing here runs anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from circle_rotate.musubi.parallel_plan import ParallelRequest, Placement
from circle_rotate.musubi.preflight_findings import Problem

#: distributed types musubi-tuner 0.3.4 can train with (its accelerator setup: "DeepSpeed is not supported").
SUPPORTED_TYPES = ("MULTI_GPU", "NO")
#: Local-only prefixes: a path there differs from node to node.
NODE_LOCAL = ("/tmp", "/var/tmp", "/dev/shm", "/scratch/local")
ONE_GPU_CONFIG = "accelerate_one_gpu.yaml"


def config_text(placement: Placement, *, source: str = "circle-rotate train --data-parallel") -> str:
    """An accelerate config (YAML) for ``placement``; the launch line repeats the per-node values."""
    lines = [
        f"# accelerate config for {placement.expert}: {placement.processes} process(es) on "
        f"{placement.machines} machine(s), written by {source}.",
        "# musubi-tuner trains with DDP (MULTI_GPU); it does not support DeepSpeed or FSDP.",
        "compute_environment: LOCAL_MACHINE",
        "distributed_type: MULTI_GPU",
        "downcast_bf16: 'no'",
        "gpu_ids: all  # the run's CUDA_VISIBLE_DEVICES picks the GPUs",
        "machine_rank: 0  # each node's launch line passes its own --machine_rank",
        f"main_process_ip: {placement.host}",
        f"main_process_port: {placement.port}",
        "main_training_function: main",
        "mixed_precision: 'no'  # musubi passes its own --mixed_precision to Accelerator",
        f"num_machines: {placement.machines}",
        f"num_processes: {placement.processes}",
        "rdzv_backend: static",
        "same_network: true",
        "use_cpu: false",
    ]
    return "\n".join(lines) + "\n"


def launcher(accelerate: str, placement: Placement, *, node_rank: int, config: Path) -> Tuple[str, ...]:
    """``accelerate launch`` with every per-node value explicit.

    ``--gpu_ids all``: without it accelerate copies ``gpu_ids`` from the config file and sets the
    processes' ``CUDA_VISIBLE_DEVICES`` from it (``commands/launch.py``: ``_validate_launch_command``;
    ``utils/launch.py``: ``prepare_multi_gpu_env``), over the one this line sets for its placement,
    so a user's ``gpu_ids: 0,...,7`` put both experts of a split plan on the same cards. With
    ``all`` accelerate leaves ``CUDA_VISIBLE_DEVICES`` as the line sets it: the placement's GPUs.
    """
    machine_rank = placement.node_ranks.index(node_rank)
    return (accelerate, "launch", "--config_file", str(config), "--num_processes", str(placement.processes),
            "--num_machines", str(placement.machines), "--machine_rank", str(machine_rank),
            "--main_process_ip", placement.host, "--main_process_port", str(placement.port), "--gpu_ids", "all")


def one_gpu_config() -> Path:
    """The shipped config of one-process launches (``recipes/accelerate_one_gpu.yaml``)."""
    from importlib import resources

    return Path(str(resources.files("circle_rotate.recipes").joinpath(ONE_GPU_CONFIG)))


def pin_config(launcher: Sequence[str]) -> Tuple[str, ...]:
    """``accelerate launch`` with ``--config_file`` of the shipped one-process config, unless it names one.

    Without it accelerate reads the user's ``default_config.yaml`` (``commands/launch.py``:
    ``_validate_launch_command``), whose ``distributed_type`` and ``gpu_ids`` then decide the
    launch. Any other launcher is returned as it is.
    """
    items = tuple(launcher)
    if len(items) < 2 or Path(items[0]).name != "accelerate" or items[1] != "launch" or "--config_file" in items:
        return items
    return (*items[:2], "--config_file", str(one_gpu_config()), *items[2:])


def read_config(path: Path) -> Dict[str, object]:
    """A user's accelerate config (YAML or JSON, as accelerate reads them); raises ValueError naming the problem."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read it: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ValueError("it is not a mapping of accelerate settings")
    try:  # accelerate's own reader: what `accelerate launch --config_file` will do with it
        from accelerate.commands.config.config_args import load_config_from_file
    except ImportError:
        return data
    try:
        load_config_from_file(str(path))
    except ValueError as exc:  # unknown keys (a typo): accelerate stops the launch on them
        raise ValueError(f"accelerate refuses it: {' '.join(str(exc).split())}") from None
    return data


def check_config(config: Mapping[str, object], path: Path, request: ParallelRequest,
                 placements: Sequence[Placement]) -> List[Problem]:
    """The user's accelerate config against what the launch lines of ``placements`` pass: type, processes,
    machines, rank, GPUs, port.

    Each launch line passes its own ``--num_processes``, ``--num_machines`` and ``--gpu_ids all``
    (:func:`launcher`), which accelerate uses over the config's values; a config value that differs
    from them says the user expects another run than the one planned (e.g. ``num_processes: 16``
    with ``--gpus 0-3 --nodes 2``), so it is refused, judged against each launch line: on a split
    plan (both experts side by side, or one per node) that is the expert's share, not nodes x all GPUs.
    """
    p, out = str(path), []
    kind = str(config.get("distributed_type", "NO"))
    if kind not in SUPPORTED_TYPES:
        out.append(Problem("error", p, f"distributed_type {kind}: musubi-tuner 0.3.4 trains with DDP only",
                           "set distributed_type: MULTI_GPU"))
    machines = int(config.get("num_machines", 1) or 1)
    for key, value, passed in (("num_machines", config.get("num_machines"), lambda pl: pl.machines),
                               ("num_processes", config.get("num_processes"), lambda pl: pl.processes)):
        wrong = [pl for pl in placements if value is not None and passed(pl) != int(value)]
        if not wrong:
            continue
        pl, want = wrong[0], sorted({passed(x) for x in placements})
        fix = f"set {key}: {want[0]}" if len(want) == 1 else f"leave {key} out"
        spans = pl.gpus == tuple(request.gpus) and pl.machines == request.nodes
        if key == "num_processes" and spans and int(value) % pl.machines == 0:
            fix += f", or --gpus with {int(value) // pl.machines} GPUs per node"
        side = "" if spans else ", the experts splitting the hardware"
        out.append(Problem("error", p, f"{key} is {value} but the launch line of {pl.expert} passes --{key} "
                                       f"{passed(pl)} ({pl.machines} node(s) x {len(pl.gpus)} GPU(s){side}), which "
                                       "accelerate uses over the config",
                           f"{fix} (each launch line passes its own)"))
    rank = config.get("machine_rank")
    if rank is not None and not 0 <= int(rank) < machines:
        out.append(Problem("error", p, f"machine_rank {rank} is out of range for {machines} machine(s)",
                           f"use 0 to {machines - 1}"))
    ids = str(config.get("gpu_ids", "all") or "all").replace(" ", "")
    if ids != "all" and sorted(ids.split(","), key=str) != sorted(request.gpus, key=str):
        # the launch lines pass --gpu_ids all (see launcher): --gpus decides, this value does nothing
        where = "; ".join(f"{pl.expert} on {','.join(pl.gpus)}" for pl in placements)
        out.append(Problem("warning", p, f"gpu_ids {ids} differs from --gpus {','.join(request.gpus)}; the launch "
                                         f"lines pass --gpu_ids all, so --gpus decides ({where})",
                           f"set gpu_ids: all, or pass --gpus {ids} to train on those"))
    port = config.get("main_process_port")
    if port is not None and not (str(port).isdigit() and 1 <= int(port) <= 65535):
        out.append(Problem("error", p, f"main_process_port {port} is not a port number",
                           "use a free port between 1024 and 65535, e.g. 29500"))
    return out


def check_request(request: ParallelRequest, placements: Sequence[Placement]) -> List[Problem]:
    """Ranks in range, a port that is a port, GPUs listed once."""
    out = []
    if request.node_rank is not None and not 0 <= request.node_rank < request.nodes:
        out.append(Problem("error", "", f"--node-rank {request.node_rank} is out of range for --nodes "
                                        f"{request.nodes}", f"use 0 to {request.nodes - 1}, one per node"))
    if len(set(request.gpus)) != len(request.gpus):
        out.append(Problem("error", "", f"--gpus lists a GPU twice ({','.join(request.gpus)})",
                           "list each CUDA device once, e.g. --gpus 0-7"))
    for pl in placements:
        if pl.port < 1024:
            out.append(Problem("warning", "", f"rendezvous port {pl.port} is privileged (below 1024)",
                               "use a port between 1024 and 65535, e.g. 29500"))
    return out


def check_shared_paths(paths: Mapping[str, Path], nodes: int) -> List[Problem]:
    """With several nodes every node reads and writes the same paths: none may be node-local or relative."""
    if nodes < 2:
        return []
    out = []
    for what, path in paths.items():
        text = str(path)
        if not Path(text).is_absolute():
            out.append(Problem("error", text, f"{what} is a relative path; each node resolves it in its own "
                                              "working directory", "give an absolute path on storage every node "
                                                                   "mounts at the same place"))
        else:
            local = [pre for pre in NODE_LOCAL if text == pre or text.startswith(pre + "/")]
            if local:
                out.append(Problem("error", text, f"{what} is under {local[0]}, which is local to each node",
                                   "put it on shared storage (NFS, Lustre, ...) mounted at the same path on "
                                   "every node"))
    return out


def shared_paths_note(paths: Mapping[str, Path]) -> Optional[str]:
    if not paths:
        return None
    return ("every node must see these at the same path (shared storage): "
            + ", ".join(f"{k} {v}" for k, v in paths.items()))
