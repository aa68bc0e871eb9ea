"""A model split into safetensors shards, read as one (still headers only).

The official Wan2.2 release (``Wan-AI/Wan2.2-I2V-A14B``) stores each expert as shards with an
index, ``high_noise_model/diffusion_pytorch_model-00001-of-00006.safetensors`` ...
``diffusion_pytorch_model.safetensors.index.json``, and musubi-tuner trains on them: ``--dit``
names one shard and ``utils/safetensors_utils.get_split_weight_filenames`` finds the rest by
name (:mod:`circle_rotate.kernel.shard_names`). :func:`read_checkpoint` finds them the same
way, and also from the index or the folder, and checks that the set is whole and consistent
(every shard present, no tensor twice, the index agreeing with the shards), since a shard left
over from another download otherwise merges or trains into a model that is neither.

:class:`ShardedHeader` answers what :class:`~circle_rotate.kernel.safetensors_io.SafetensorsHeader`
answers (``tensors``, ``keys``, ``metadata``, ``path``, ``file_size``, ``storage_order``);
``header_of(key)`` gives the shard that stores a tensor, for reading its bytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from circle_rotate.kernel.errors import NotARegularFileError, UserError
from circle_rotate.kernel.input_files import read_text_file
from circle_rotate.kernel.safetensors_io import SafetensorsHeader, TensorInfo, read_header
from circle_rotate.kernel.shard_names import FIX_SET, INDEX_SUFFIX, index_path, shard_paths

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class ShardedHeader:
    """The headers of every shard of one model, with each tensor's shard."""

    path: Path  # what the user named: a shard, the index or the folder
    shards: Tuple[SafetensorsHeader, ...]
    owner: Dict[str, int]  # tensor -> index into ``shards``
    index: Optional[Path] = None
    tensors: Dict[str, TensorInfo] = field(init=False)
    metadata: Dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tensors", {k: self.shards[i].tensors[k] for k, i in self.owner.items()})
        metadata: Dict[str, str] = {}
        for shard in reversed(self.shards):  # the first shard's value wins
            metadata.update(shard.metadata)
        object.__setattr__(self, "metadata", metadata)

    def __contains__(self, key: str) -> bool:
        return key in self.owner

    def keys(self):
        return self.tensors.keys()

    def header_of(self, key: str) -> SafetensorsHeader:
        return self.shards[self.owner[key]]

    @property
    def storage_order(self) -> List[str]:
        """Every tensor, shard by shard, each shard in its file order (the order a streaming read wants)."""
        return [k for shard in self.shards for k in shard.storage_order]

    @property
    def file_size(self) -> int:
        return sum(s.file_size for s in self.shards)

    @property
    def total_bytes(self) -> int:
        return sum(s.total_bytes for s in self.shards)

    @property
    def largest_tensor_bytes(self) -> int:
        return max((s.largest_tensor_bytes for s in self.shards), default=0)

    @property
    def paths(self) -> Tuple[Path, ...]:
        return tuple(s.path for s in self.shards)


AnyHeader = Union[SafetensorsHeader, ShardedHeader]


def read_index(path: Path) -> Dict[str, str]:
    """The index's ``weight_map`` (tensor -> shard file name)."""
    text = read_text_file(path, what="index", fix=f"re-download {path.name}")
    try:
        weight_map = json.loads(text)["weight_map"]
    except (ValueError, KeyError, TypeError):
        raise UserError("not a safetensors index (no JSON 'weight_map')", path=path, fix=f"re-download {path.name}") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise UserError("'weight_map' does not map tensor names to file names", path=path, fix=f"re-download {path.name}")
    return weight_map


def _from_index(index: Path) -> Tuple[Path, ...]:
    names = sorted(set(read_index(index).values()))
    if not names:
        raise UserError("the index lists no tensors", path=index, fix=f"re-download {index.name}")
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise UserError(f"{len(missing)} of the {len(names)} shards it lists not found, e.g. {missing[0]}", path=index,
                        fix=FIX_SET)
    return tuple(index.parent / n for n in names)


def _in_folder(folder: Path) -> Path:
    """The model file a folder holds: its one index, or its one ``.safetensors`` file."""
    indexes = sorted(folder.glob("*" + INDEX_SUFFIX))
    if len(indexes) == 1:
        return indexes[0]
    files = sorted(folder.glob("*.safetensors"))
    if not indexes and len(files) == 1:
        return files[0]
    if not indexes and not files:  # a release's top folder: the experts are one level down
        models = sorted(d.name + "/" for d in folder.iterdir()
                        if d.is_dir() and (any(d.glob("*" + INDEX_SUFFIX)) or any(d.glob("*.safetensors"))))
        if models:
            raise NotARegularFileError(folder, kind="folder", fix=f"name one of the model folders it holds: "
                                                                 f"{', '.join(models)}")
    what = f"{len(indexes)} indexes" if indexes else f"{len(files)} .safetensors files and no index"
    raise NotARegularFileError(folder, kind="folder", fix=f"name the model file, or one shard of it (it holds {what})")


def _check_index(index: Path, shards: Tuple[SafetensorsHeader, ...], owner: Dict[str, int]) -> None:
    weight_map = read_index(index)
    for key, i in owner.items():
        listed = weight_map.get(key)
        if listed is None:
            raise UserError(f"tensor '{key}' of {shards[i].path.name} is not in the index", path=index, fix=FIX_SET)
        if listed != shards[i].path.name:
            raise UserError(f"the index puts '{key}' in {listed}, but {shards[i].path.name} holds it", path=index,
                            fix=FIX_SET)
    absent = next((k for k in weight_map if k not in owner), None)
    if absent is not None:
        raise UserError(f"tensor '{absent}' it lists is in no shard (in {weight_map[absent]}, per the index)", path=index,
                        fix=FIX_SET)


def read_shards(named: Path, paths: Tuple[Path, ...], index: Optional[Path] = None) -> ShardedHeader:
    """Read every shard's header and check that together they are one model."""
    shards = tuple(read_header(p) for p in paths)
    owner: Dict[str, int] = {}
    for i, shard in enumerate(shards):
        for key in shard.keys():
            if key in owner:
                raise UserError(f"tensor '{key}' is in two shards, {shards[owner[key]].path.name} and {shard.path.name}",
                                path=named, fix=FIX_SET)
            owner[key] = i
    index = index if index is not None and index.is_file() else None
    if index is not None:
        _check_index(index, shards, owner)
    return ShardedHeader(named, shards, owner, index)


def read_checkpoint(path: PathLike) -> AnyHeader:
    """The header of a model stored as one safetensors file or as shards.

    ``path`` is a ``.safetensors`` file, a shard (``...-00001-of-00006.safetensors``, any of them),
    a ``*.safetensors.index.json`` or a folder holding one index (or one ``.safetensors`` file).

    Raises:
        UserError: what :func:`~circle_rotate.kernel.safetensors_io.read_header` raises, a missing
            shard, a tensor in two shards, or an index that disagrees with the shards.
        NotARegularFileError: a folder holding no index and no single ``.safetensors`` file.
    """
    p = Path(path)
    if p.is_dir():
        return read_checkpoint(_in_folder(p))
    if p.name.endswith(INDEX_SUFFIX):
        return read_shards(p, _from_index(p), p)
    paths = shard_paths(p)
    if paths is None:
        return read_header(p)
    return read_shards(p, paths, index_path(p))

