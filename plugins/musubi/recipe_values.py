"""Recipe variables set from the command line, checked before bash resolves them.

A recipe reads its variables with ``${VAR:-default}``; a name it never reads is dropped without a
word (``--set NETWORK_DIM=64`` on the published recipe left dim 32), and bash passes a bad value
on to musubi-tuner or to our own arithmetic (``NUM_PROCESSES=0`` divided by zero,
``SAVE_LAST_N_EPOCHS=-3`` gave a negative disk estimate, ``BOUNDARY=1.5`` a timestep range of
1500-1000). Both are refused here, naming the variable and what it takes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, FrozenSet, Mapping, Sequence, Tuple

from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.wan_arch import I2V_A14B, MAX_BLOCKS_TO_SWAP

_REFERENCE = re.compile(r"\$\{?([A-Z_][A-Z0-9_]*)")
#: What the recipes themselves set for the commands they print, not read from the caller.
_INTERNAL = frozenset({"BASH_SOURCE", "BASH_VERSION", "CIRCLE_ROTATE_PRINT", "CHECKPOINT_ARGS",
                       "SWAP_ARGS", "SAMPLE_ARGS", "EXTRA_ARGS", "TE_ARGS", "LATENT_ARGS", "BOUNDARY_T"})

#: Variable -> (kind, lowest, highest, what it is): the numbers a recipe variable may hold.
RULES: Dict[str, Tuple[str, float, float, str]] = {
    "NUM_PROCESSES": ("int", 1, 4096, "processes per training"),
    "SAVE_LAST_N_EPOCHS": ("int", 1, 100000, "epoch files kept"),
    "SAMPLE_EVERY_N_EPOCHS": ("int", 1, 100000, "epochs between samples"),
    "TE_BATCH_SIZE": ("int", 1, 4096, "text-encoder batch size"),
    "BLOCKS_TO_SWAP": ("int", 0, MAX_BLOCKS_TO_SWAP, f"blocks swapped to the CPU (Wan2.2-A14B has {I2V_A14B.num_layers})"),
    "DDP_TIMEOUT": ("int", 1, 10 ** 7, "minutes"),
    # the recipes test these with == 1: "yes" or "true" would switch nothing on, silently
    "GRADIENT_CHECKPOINTING": ("switch", 0, 1, "gradient checkpointing"),
    "GRADIENT_CHECKPOINTING_CPU_OFFLOAD": ("switch", 0, 1, "checkpointed activations in CPU RAM"),
    "VAE_CACHE_CPU": ("switch", 0, 1, "the VAE cache in CPU RAM"),
    "SAMPLE_AT_FIRST": ("switch", 0, 1, "a sample before the first step"),
    "FP8_T5": ("switch", 0, 1, "T5 in fp8"),
    "NETWORK_ALPHA": ("float", 1e-6, 1e6, "LoRA alpha"),
    "BOUNDARY": ("float", 0.01, 0.99, "the high/low expert boundary as a fraction of the timesteps (0.9)"),
}


def variables_read(recipe_files: Sequence[Path]) -> FrozenSet[str]:
    """Every variable the recipe files (and ``common.sh`` beside them) read."""
    files = {Path(f) for f in recipe_files} | {Path(f).with_name("common.sh") for f in recipe_files}
    names = set()
    for f in files:
        if f.is_file():
            names |= set(_REFERENCE.findall(f.read_text(encoding="utf-8")))
    return frozenset(names - _INTERNAL)


def check_recipe_values(env: Mapping[str, str], *, recipe_files: Sequence[Path], given: Sequence[str]) -> None:
    """Refuse a ``--set`` name the recipes do not read, and a value out of its variable's range.

    Args:
        env: every variable the command passes (flags and ``--set``).
        recipe_files: the recipes that will run.
        given: the names the user set with ``--set`` (flags are checked by their own parsers).

    Raises:
        UserError: naming the variable, and the variables the recipe does read.
    """
    known = variables_read(recipe_files)
    unknown = [name for name in given if name not in known]
    if unknown:
        names = ", ".join(Path(f).name for f in recipe_files)
        raise UserError(f"--set {unknown[0]}: {names} read no such variable, so it would change nothing",
                        fix=f"the variables they read: {', '.join(sorted(known))} (the published recipe fixes the "
                            "rest; edit a copy of the recipe to change them)")
    for name, value in env.items():
        rule = RULES.get(name)
        if rule is None or value == "":
            continue
        kind, low, high, what = rule
        if kind == "switch":
            if value not in ("0", "1"):
                raise UserError(f"{name}={value}: {what} is 0 (off) or 1 (on)", fix=f"e.g. --set {name}=1")
            continue
        try:
            number = int(value) if kind == "int" else float(value)
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            shown = f"{low:g} to {high:g}"
            raise UserError(f"{name}={value}: {what} must be {'a whole number' if kind == 'int' else 'a number'} "
                            f"from {shown}", fix=f"e.g. --set {name}={_EXAMPLES.get(name, int(low))}")


_EXAMPLES = {"BOUNDARY": 0.9, "NETWORK_ALPHA": 1, "SAVE_LAST_N_EPOCHS": 10, "BLOCKS_TO_SWAP": 20}
