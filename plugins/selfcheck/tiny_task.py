"""A tiny Wan2.2 I2V task inside musubi-tuner, so its real scripts run on a CPU in seconds.

musubi-tuner takes every model dimension from ``musubi_tuner.wan.configs.WAN_CONFIGS[--task]``
and builds its ``--task`` choices inside each script's ``main()``. :func:`register` adds
:data:`TINY_TASK` (a copy of ``i2v-A14B`` with tiny widths; the name contains ``i2v``, the
substring ``wan_train_network.py`` switches I2V training on) and shrinks the T5 that
``wan/modules/t5.py``'s module-level ``umt5_xxl`` builds (its output width stays 4096, the
DiT's text width). Nothing else of musubi changes: the scripts' own parsers, dataset
loaders, cache writers, trainer and LoRA code run as they do on a GPU.

Run a script as ``python -m circle_rotate.selfcheck.tiny_task wan_train_network --task i2v-A14B-tiny ...``.
The tokenizer is looked up as ``Wan-AI/Wan2.1-T2V-14B`` (subfolder ``google/umt5-xxl``)
relative to the working directory; :mod:`circle_rotate.selfcheck.tiny_models` writes one there.
"""

from __future__ import annotations

import copy
import importlib
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional, Sequence, Tuple

from circle_rotate.kernel.wan_arch import WanDiTConfig, tiny_config
from circle_rotate.musubi.tasks import ExtraTask, add_task

if TYPE_CHECKING:
    from circle_rotate.musubi.recipe_reader import MusubiCommand

logger = logging.getLogger(__name__)

#: The tiny task's name (must contain "i2v": musubi switches I2V training on that substring).
TINY_TASK = "i2v-A14B-tiny"
#: Its DiT shapes (what :func:`circle_rotate.selfcheck.synthetic.tiny_wan.write_tiny_wan` writes by default).
TINY_DIT: WanDiTConfig = tiny_config()
#: ``umt5_xxl`` overrides: 1 block, narrow attention/FFN, a character vocabulary; dim stays 4096.
TINY_T5: Dict[str, int] = {"dim_attn": 64, "dim_ffn": 64, "num_heads": 2, "encoder_layers": 1, "vocab_size": 64}

#: The musubi scripts this runner accepts (module names under ``musubi_tuner``).
SCRIPTS = ("wan_cache_latents", "wan_cache_text_encoder_outputs", "wan_train_network", "wan_generate_video")

#: What every tiny run needs in its environment: the tokenizer is local, no hub look-ups.
TINY_ENV: Dict[str, str] = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def register() -> None:
    """Add :data:`TINY_TASK` to musubi's Wan configs and shrink its T5 builder (idempotent).

    Whether it is done is read from musubi's modules, not kept here: a fork-server child runs
    this module again as ``__main__`` (a fresh namespace) over the server's registered musubi.
    """
    from circle_rotate.kernel.musubi_env import import_musubi

    configs = import_musubi("wan.configs")
    t5 = import_musubi("wan.modules.t5")
    if TINY_TASK not in configs.WAN_CONFIGS:
        cfg = copy.deepcopy(configs.WAN_CONFIGS["i2v-A14B"])
        cfg.__name__ = "Config: circle-rotate tiny Wan2.2 I2V (CPU smoke tests)"
        for key in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "freq_dim"):
            cfg[key] = getattr(TINY_DIT, key)
        configs.WAN_CONFIGS[TINY_TASK] = cfg
    if getattr(t5.umt5_xxl, "circle_rotate_tiny", False):
        return
    full_size = t5.umt5_xxl

    def tiny_umt5_xxl(**kwargs):
        return full_size(**{**TINY_T5, **kwargs})

    tiny_umt5_xxl.circle_rotate_tiny = True
    t5.umt5_xxl = tiny_umt5_xxl


# Importing the self-check makes its task known to the product's parser and preflight (a hook,
# so that production code never names it); it trains on a CPU, so no GPU checks apply.
add_task(ExtraTask(TINY_TASK, register, runs_on_cpu=True))


def preload() -> None:
    """Register the tiny task and import every script: what a fork server runs before forking."""
    register()
    for script in SCRIPTS:
        importlib.import_module(f"musubi_tuner.{script}")


def build_tiny_t5():
    """musubi's own T5 encoder class with the :data:`TINY_T5` shape (random weights)."""
    register()
    from musubi_tuner.wan.modules import t5

    return t5.umt5_xxl(encoder_only=True, return_tokenizer=False)


def tiny_command(command: "MusubiCommand", *, workdir: Path, server: Optional[Path] = None) -> "MusubiCommand":
    """The same script and arguments, run through this module in ``workdir`` (tokenizer root), offline.

    With ``server`` (a :func:`circle_rotate.selfcheck.forkserver.fork_server` socket preloaded with
    :func:`preload`) the run is a fork of that server instead of a fresh interpreter. An
    ``accelerate launch`` of several processes stays one (``python -m accelerate.commands.launch``
    with the same options), each process running this module: data parallel on CPUs (gloo).
    """
    from circle_rotate.musubi.recipe_reader import launcher_processes

    processes = launcher_processes(command.launcher)
    if processes > 1:
        # data parallel: accelerate's launcher stays (its options as given), each rank runs this module
        launcher: Tuple[str, ...] = (sys.executable, "-m", "accelerate.commands.launch", *command.launcher[2:],
                                     "-m", "circle_rotate.selfcheck.tiny_task")
    elif server is None:
        launcher = (sys.executable, "-m", "circle_rotate.selfcheck.tiny_task")
    else:
        from circle_rotate.selfcheck.forkserver import client_argv

        launcher = client_argv(server, "circle_rotate.selfcheck.tiny_task")
    return replace(command, launcher=launcher, script_path="", cwd=str(workdir)).with_env(**TINY_ENV)


def run_script(script: str, argv: Sequence[str]) -> int:
    """Run ``musubi_tuner.<script>.main()`` in this process with the tiny task registered.

    Raises:
        ValueError: ``script`` is not one of :data:`SCRIPTS`.
    """
    if script not in SCRIPTS:
        raise ValueError(f"unknown musubi script {script!r}; one of {', '.join(SCRIPTS)}")
    register()
    from circle_rotate.selfcheck import cpu_ddp

    if cpu_ddp.needed():
        cpu_ddp.install()
    module = importlib.import_module(f"musubi_tuner.{script}")
    if script == "wan_train_network":
        from circle_rotate.selfcheck.ddp_probe import install_from_env

        install_from_env()
    sys.argv = [f"{script}.py", *argv]
    module.main()
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(f"usage: python -m circle_rotate.selfcheck.tiny_task <{'|'.join(SCRIPTS)}> [musubi arguments ...]", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_script(sys.argv[1], sys.argv[2:]))
