"""The file names of a model split into safetensors shards (names only: no file is opened, nothing heavy imported,
so the CLI's parsers and ``workflow`` can use them).

musubi-tuner's rule (``utils/safetensors_utils.get_split_weight_filenames``): a shard is
``<prefix><i>-of-<n>.safetensors`` and its set is ``<prefix><00001..n>-of-<n:05d>.safetensors``; the Hugging
Face writers put the index beside them as ``<prefix minus its dash>.safetensors.index.json``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Tuple, Union

from circle_rotate.kernel.errors import UserError

PathLike = Union[str, os.PathLike]

SHARD_NAME = re.compile(r"^(.*?)(\d+)-of-(\d+)\.safetensors$")
INDEX_SUFFIX = ".safetensors.index.json"
#: The fix for a set that is not whole or not one release.
FIX_SET = "download every shard and the index of the same release into one folder"


def shard_paths(path: PathLike) -> Optional[Tuple[Path, ...]]:
    """Every shard of the set ``path`` names by musubi-tuner's rule, or None when the name is not a shard's.

    Raises:
        UserError: a shard of the set is missing (named).
    """
    p = Path(path)
    m = SHARD_NAME.match(p.name)
    if not m:
        return None
    prefix, count = m.group(1), int(m.group(3))
    paths = tuple(p.with_name(f"{prefix}{i:05d}-of-{count:05d}.safetensors") for i in range(1, count + 1))
    missing = [q for q in paths if not q.is_file()]
    if missing:
        raise UserError(f"shard {paths.index(missing[0]) + 1} of {count} is missing: {missing[0].name}"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""), path=p, fix=FIX_SET)
    return paths


def index_path(shard: Path) -> Path:
    """The index the Hugging Face writers put beside ``shard`` (``diffusion_pytorch_model.safetensors.index.json``)."""
    m = SHARD_NAME.match(shard.name)
    stem = m.group(1).rstrip("-_.") if m else shard.stem
    return shard.with_name(stem + INDEX_SUFFIX)
