"""``circle-rotate smoke``: the whole chain, for real, through musubi-tuner's own scripts, on a CPU.

Before anyone rents a GPU: tiny random models (:mod:`circle_rotate.selfcheck.tiny_models`: a tiny
Wan2.2 I2V DiT pair registered as a musubi task by :mod:`circle_rotate.selfcheck.tiny_task`, musubi's
real VAE architecture, a tiny T5 and tokenizer), a few synthetic orbit clips through the
dataset commands (``prepare``/``caption``/``config``), then ``cache`` (latents with
``--i2v``, text-encoder outputs), ``train both`` with the user's recipe for 2 steps per
expert, and finally both LoRAs loaded back by musubi's LoRA code and merged by ours.

Only settings that do not touch the weights' maths differ from the recipe, and the run
lists each of them (:data:`SCALED_DOWN`): the task (tiny shapes) and the files, the steps,
fp8 (CPU), the optimizer (bitsandbytes needs CUDA), the precision (CPU autocast), and
data-loader workers and VAE dtype (CPU speed).

What makes it fast on a 2-core CPU changes how things start, not what they do: musubi's
scripts run as forks of one process that has imported them (:mod:`circle_rotate.selfcheck.forkserver`;
each fresh interpreter spent ~6 s of CPU on imports), two at a time with one torch thread
each, and the synthetic source footage is rendered once and kept beside the tiny models.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.write_checks import check_output_dir
from circle_rotate.musubi.recipe_reader import MusubiCommand, OptionDiff, diff_options, edit_options, option_values
from circle_rotate.selfcheck.tiny_task import TINY_ENV, TINY_TASK, tiny_command

if TYPE_CHECKING:
    from circle_rotate.selfcheck.tiny_models import TinyModels

#: option -> (value in the smoke run or None to drop it, why it may differ).
SCALED_DOWN: Dict[str, Tuple[Optional[List[str]], str]] = {
    "--task": ([TINY_TASK], "tiny Wan2.2 I2V shapes (dim 64, 2 blocks) registered in musubi's WAN_CONFIGS"),
    "--max_train_epochs": (None, "2 steps instead of epochs"),
    "--max_train_steps": (["2"], "2 steps per expert"),
    "--fp8_base": (None, "fp8 base weights need a GPU"),
    "--optimizer_type": (["adamw"], "AdamW8bit needs bitsandbytes with CUDA; plain AdamW"),
    "--mixed_precision": (["no"], "CPU autocast cannot run musubi's fp32 time-embedding region; fp32 DiT"),
    "--max_data_loader_n_workers": (["0"], "no worker processes on a 2-core CPU"),
    "--persistent_data_loader_workers": (None, "no worker processes to keep (torch refuses it with 0 workers)"),
    "--blocks_to_swap": (None, "block swap sets a CUDA device (musubi's offloader), which a CPU has not (memory only)"),
}
PATH_WHY = "tiny model / smoke work folder"
#: What the cache pass changes: where it runs and, on a CPU, the VAE's dtype. Measured with one
#: thread: a batch took 3.2 s in fp32 and 310 s in bf16 with oneDNN held to AVX2 (bf16 emulated);
#: only CPUs with AVX512-BF16/AMX run the recipe's bf16 faster (2.0 s), so fp32 everywhere.
CACHE_WHY = {"--device": "no GPU",
             "--vae_dtype": "the VAE in fp32: CPUs without AVX512-BF16/AMX emulate bf16 convolutions, ~100x slower"}
LATENT_DTYPE = ["--vae_dtype", "float32"]
FORKSERVER_PRELOAD = "circle_rotate.selfcheck.tiny_task:preload"


@dataclass(frozen=True)
class SmokeRequest:
    recipe: str = "reproduce"
    work_dir: Optional[Path] = None  # None: a temporary folder, removed afterwards unless keep
    models_dir: Optional[Path] = None  # tiny models, reused between runs
    keep: bool = False


@dataclass
class SmokeReport:
    steps: List[Tuple[str, float, str]] = field(default_factory=list)  # (name, seconds, detail)
    differences: List[OptionDiff] = field(default_factory=list)
    loras: Dict[str, str] = field(default_factory=dict)
    work_dir: str = ""

    @property
    def seconds(self) -> float:
        return sum(s for _, s, _ in self.steps)


def default_models_dir() -> Path:
    from circle_rotate.kernel.musubi_env import musubi_version

    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "circle-rotate" / f"tiny-musubi-{musubi_version() or 'none'}"


def script_threads_env() -> Dict[str, str]:
    """``OMP_NUM_THREADS`` for each musubi script: two run at a time (latents beside text, low beside high).

    More torch threads than free cores make OpenMP threads wait on each other: on a shared,
    busy 2-core machine musubi's VAE pass took ~14 s a batch with 2 threads and ~3 s with 1
    (1.5 s and 2.4 s when the machine was idle). A value the user set is kept.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return {"OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"]}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return {"OMP_NUM_THREADS": str(max(1, cores // 2))}


def _tiny(command: MusubiCommand, *, workdir: Path, server: Optional[Path]) -> MusubiCommand:
    return tiny_command(command, workdir=workdir, server=server).with_env(**script_threads_env())


def scale_down(command: MusubiCommand, *, workdir: Path, server: Optional[Path] = None) -> MusubiCommand:
    """The recipe's training command with only :data:`SCALED_DOWN` changed, run by the tiny runner."""
    changes = {k: v for k, (v, _) in SCALED_DOWN.items()}
    return _tiny(command.with_args(edit_options(command.args, changes)), workdir=workdir, server=server)


def _cache_transform(workdir: Path, server: Optional[Path] = None) -> Callable[[MusubiCommand], MusubiCommand]:
    def transform(command: MusubiCommand) -> MusubiCommand:
        if command.script == "wan_cache_latents":
            command = command.with_args([*command.args, *LATENT_DTYPE])
        return _tiny(command, workdir=workdir, server=server)

    return transform


class _Clock:
    """Runs the steps, timing each and echoing what it did."""

    def __init__(self, report: SmokeReport, echo: Callable[[str], None]):
        self.report, self.echo = report, echo

    def step(self, name: str, fn: Callable[[], Tuple[object, str]]) -> object:
        self.echo(f"== {name}")
        start = time.perf_counter()
        result, detail = fn()
        seconds = time.perf_counter() - start
        self.report.steps.append((name, seconds, detail))
        self.echo(f"   {seconds:.1f} s{': ' + detail if detail else ''}")
        return result


def run_smoke(request: SmokeRequest, *, run_command: Callable[[Sequence[str]], int],
              echo: Callable[[str], None] = print) -> SmokeReport:
    """Run the chain; every step goes through the same code (and musubi scripts) as a GPU run.

    ``run_command`` runs a public command from its argv: the CLI hands its own ``main`` down, so
    the dataset steps run exactly as typed while the library never imports the CLI.

    Raises:
        UserError: musubi-tuner is missing, or a step fails (naming it).
    """
    from circle_rotate.kernel.musubi_env import INSTALL_HINT, musubi_available

    if not musubi_available():
        raise UserError("musubi-tuner is not installed; the smoke run uses its scripts", fix=INSTALL_HINT)
    report = SmokeReport()
    # musubi's scripts run from the tiny models' folder (their tokenizer path is relative to it):
    # a relative folder of the user's would be read from there
    request = replace(request, work_dir=Path(request.work_dir).absolute() if request.work_dir else None,
                      models_dir=Path(request.models_dir).absolute() if request.models_dir else None)
    if request.work_dir:
        check_output_dir(request.work_dir, flag="-o/--out")
    if request.models_dir:
        check_output_dir(request.models_dir, flag="--models-dir")
    work = Path(request.work_dir) if request.work_dir else Path(tempfile.mkdtemp(prefix="circle-rotate-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    report.work_dir = str(work)
    try:
        with _script_server(echo) as server:
            _steps(request, work, report, _Clock(report, echo), server, run_command)
    finally:
        if request.work_dir is None and not request.keep:
            shutil.rmtree(work, ignore_errors=True)
    return report


def _script_server(echo: Callable[[str], None]) -> ContextManager[Optional[Path]]:
    """Where musubi's scripts start: a fork server (Linux), or None for fresh interpreters."""
    from circle_rotate.selfcheck.forkserver import fork_server, supported

    threads = script_threads_env()
    if not supported():
        echo(f"musubi's scripts run two at a time with OMP_NUM_THREADS={threads['OMP_NUM_THREADS']}")
        return nullcontext(None)
    # Four musubi script runs would each import torch, transformers and musubi (~6 s of CPU each);
    # forks of one server pay that once. It starts before this process imports torch, so that
    # its imports run beside this process's own and beside the models and clips being made.
    # Its environment is the scripts': OpenMP reads the thread count when torch is imported.
    echo(f"musubi's scripts run as forks of one process that imported them ({FORKSERVER_PRELOAD}), "
         f"two at a time with OMP_NUM_THREADS={threads['OMP_NUM_THREADS']}")
    return fork_server(preload=(FORKSERVER_PRELOAD,), env={**os.environ, **TINY_ENV, **threads})


def _models(models_dir: Path) -> Tuple[Tuple["TinyModels", Path], str]:
    from circle_rotate.selfcheck.smoke_steps import source_clips
    from circle_rotate.selfcheck.tiny_models import write_tiny_models

    return (write_tiny_models(models_dir), source_clips(models_dir)), str(models_dir)


def _steps(request: SmokeRequest, work: Path, report: SmokeReport, clock: _Clock, server: Optional[Path],
           run_command: Callable[[Sequence[str]], int]) -> None:
    from circle_rotate.selfcheck.smoke_steps import make_dataset, verify_loras

    models_dir = Path(request.models_dir) if request.models_dir else default_models_dir()
    # the first step also pays this process's torch import (the steps' total is the run's time)
    m, sources = clock.step("tiny models and source clips", lambda: _models(models_dir))
    config = clock.step("dataset (prepare, caption, config)", lambda: (make_dataset(work, sources=sources, run_command=run_command), ""))
    clock.step("cache (latents --i2v, text encoder)", lambda: (None, _cache(config, m, report, server)))
    clock.step(f"train both ({request.recipe} recipe, 2 steps each)",
               lambda: (None, _train(request.recipe, config, m, work, report, server)))
    clock.step("load back with musubi's LoRA code, merge with ours",
               lambda: (None, verify_loras(m, report.loras, work, run_command=run_command)))


def _cache(config: Path, m: "TinyModels", report: SmokeReport, server: Optional[Path]) -> str:
    from circle_rotate.musubi.cache import CacheRequest, env_from_paths, prepare_cache, run_cache
    from circle_rotate.musubi.recipe_reader import CACHE_RECIPE, read_recipe

    env = env_from_paths(vae=m.vae.absolute(), t5=m.t5.absolute(), device="cpu")
    job = prepare_cache(CacheRequest(config.absolute(), gpus=("",), env=env),
                        transform=_cache_transform(m.tokenizer_root, server))
    why = {**CACHE_WHY, **{k: PATH_WHY for k in ("--dataset_config", "--vae", "--t5")}}
    for recipe, ours in zip(read_recipe(CACHE_RECIPE), job.commands[0][1]):
        report.differences += [replace(d, option=f"{ours.script}: {d.option}")
                               for d in diff_options(recipe.args, ours.args, why=why)]
    run_cache(job, scripts_in_parallel=True)  # two cores: the VAE and T5 passes side by side
    return f"{len(job.plan.items)} clips, {job.plan.total_bytes / 1e6:.1f} MB planned"


def _train(recipe: str, config: Path, m: "TinyModels", work: Path, report: SmokeReport, server: Optional[Path]) -> str:
    from circle_rotate.musubi.recipe_reader import train_command
    from circle_rotate.musubi.train import TrainRequest, train

    out = work / "outputs"
    env = {"DIT_LOW": str(m.dit_low.absolute()), "DIT_HIGH": str(m.dit_high.absolute()), "VAE": str(m.vae.absolute()),
           "DATASET_CONFIG": str(config.absolute()), "OUTPUT_DIR_LOW": str(out / "low"), "OUTPUT_DIR_HIGH": str(out / "high")}
    original = train_command(recipe, "low")
    smoke = scale_down(train_command(recipe, "low", env=env), workdir=m.tokenizer_root, server=server)
    why = {**{k: w for k, (_, w) in SCALED_DOWN.items()}, **{k: PATH_WHY for k in ("--dit", "--vae", "--dataset_config",
                                                                                   "--output_dir")}}
    train_diffs = diff_options(original.args, smoke.args, why=why)
    report.differences += [replace(d, option=f"wan_train_network: {d.option}") for d in train_diffs]
    diffs = [{"option": d.option, "recipe": d.before, "smoke": d.after, "why": d.why} for d in train_diffs]
    # force: a kept work folder (-o) holds the last smoke run's LoRAs, which this run replaces
    result = train(TrainRequest(("low", "high"), recipe=recipe, env=tuple(env.items()), gpus=("", ""), force=True),
                   dry_run=False,
                   echo=lambda line: None, transform=lambda c: scale_down(c, workdir=m.tokenizer_root, server=server),
                   record_extra={"smoke_differences_from_recipe": diffs})
    for run in result.plan.runs:
        name = option_values(run.command.args)["--output_name"][0]
        lora = run.output_dir / f"{name}.safetensors"
        if not lora.is_file():
            raise UserError(f"training finished without writing {lora.name}", path=run.output_dir, fix="read the output above")
        report.loras[run.expert] = str(lora)
    return ", ".join(f"{e}: {Path(p).name}" for e, p in report.loras.items())
