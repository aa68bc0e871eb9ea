"""Options shared by ``cache`` and ``train``: recipe variables from flags (``--set VAR=VALUE`` too)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Sequence, Tuple


def add_recipe_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("recipe variables (defaults: recipes/common.sh)")
    g.add_argument("--dataset-config", type=Path, help="musubi dataset TOML (DATASET_CONFIG)")
    g.add_argument("--vae", type=Path, help="the Wan2.1 VAE (VAE)")
    g.add_argument("--gpus", type=gpu_list, default=(), metavar="0,1",
                   help="CUDA devices, comma-separated or a range (0-7) (GPU); two or more split the work, one process "
                        "per GPU")
    g.add_argument("--set", action="append", default=[], metavar="VAR=VALUE", type=assignment,
                   help="any other variable the recipe reads, e.g. --set SAVE_LAST_N_EPOCHS=10 (train), TE_BATCH_SIZE=4 "
                        "(cache); repeatable")


def gpu_list(text: str) -> Tuple[str, ...]:
    """``0,1`` or ``0-7`` or ``0-3,6`` -> GPU indices in the order given."""
    items = []
    for part in (t.strip() for t in text.split(",") if t.strip()):
        lo, sep, hi = part.partition("-")
        if sep and lo.isdigit() and hi.isdigit() and int(lo) <= int(hi):
            items += [str(i) for i in range(int(lo), int(hi) + 1)]
        elif part.isdigit():
            items.append(part)
        else:
            items = []
            break
    if not items:
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of GPU indices, e.g. 0,1 or 0-7")
    twice = sorted({i for i in items if items.count(i) > 1}, key=int)
    if twice:  # two processes on one card: two 14B trainings (or cache shards) fighting for its memory
        raise argparse.ArgumentTypeError(f"'{text}' names GPU {twice[0]} twice; give each GPU once")
    return tuple(items)


def assignment(text: str) -> Tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier() or not name.isupper():
        raise argparse.ArgumentTypeError(f"'{text}' is not VAR=VALUE with an upper-case recipe variable name")
    return name, value


def recipe_env(args: argparse.Namespace, extra: Dict[str, object], *,
               recipes: Sequence[str] = ()) -> Tuple[Tuple[str, str], ...]:
    """Recipe variables from the common flags, ``extra`` (flag values, None = unset) and ``--set``,
    checked against what the ``recipes`` (file names) read and the values their variables take."""
    from circle_rotate.musubi.recipe_reader import recipe_path
    from circle_rotate.musubi.recipe_values import check_recipe_values

    env = {"DATASET_CONFIG": args.dataset_config, "VAE": args.vae, **extra}
    out = {k: str(v) for k, v in env.items() if v is not None}
    out.update(dict(args.set))
    if recipes:
        check_recipe_values(out, recipe_files=[recipe_path(r) for r in recipes], given=[name for name, _ in args.set])
    return tuple(out.items())
