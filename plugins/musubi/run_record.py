"""``run.json``: what produced a set of LoRAs, written beside them.

Model files are identified by size and a hash of their safetensors header (the tensor
table: names, dtypes, shapes, offsets, metadata), never by hashing 28 GB; other files
(a ``.pth`` VAE) by size and a hash of their first and last MiB. The dataset is identified
by a hash over the config file and every clip's name, size and caption.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from pathlib import Path
from typing import Dict, Mapping, Optional

import circle_rotate
from circle_rotate.kernel.atomic import write_json
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.musubi_env import musubi_version
from circle_rotate.kernel.shard_names import shard_paths
from circle_rotate.musubi.cache_plan import CachePlan

RUN_RECORD = "run.json"
_CHUNK = 2**20


def file_identity(path: os.PathLike) -> Dict[str, object]:
    """Size and a cheap content hash of a (possibly huge) model file; ``exists: False`` when absent. A shard of
    a sharded model (what musubi-tuner's ``--dit`` names) stands for the set: sizes summed, headers hashed in order."""
    p = Path(path)
    if not p.is_file():
        return {"path": str(p), "exists": False}
    try:
        files = shard_paths(p) or (p,)
    except UserError:  # an incomplete set (preflight reports it): identify the file named
        files = (p,)
    digest = hashlib.sha256()
    kind, total = "header_sha256", 0
    for f in files:
        size = f.stat().st_size
        total += size
        with open(f, "rb") as fh:
            head = fh.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
            if f.suffix == ".safetensors" and 0 < n <= size - 8:
                digest.update(head + fh.read(n))
            else:
                digest.update(head + fh.read(_CHUNK))
                fh.seek(max(0, size - _CHUNK))
                digest.update(fh.read(_CHUNK))
                kind = "head_tail_sha256"
    identity = {"path": str(p.absolute()), "exists": True, "size": total, kind: digest.hexdigest()}
    return identity if len(files) == 1 else {**identity, "shards": len(files)}


def dataset_hash(plan: CachePlan) -> str:
    """sha256 of the config text and each clip's file name, size and caption, in order."""
    digest = hashlib.sha256(Path(plan.config).read_bytes())
    for item in plan.items:
        size = item.video.stat().st_size if item.video.is_file() else -1
        digest.update(f"\0{item.dataset}\0{item.video.name}\0{size}\0{item.caption}".encode())
    return digest.hexdigest()


def read_run_record(output_dir: Path) -> Optional[Dict[str, object]]:
    """``output_dir/run.json`` as written by :func:`write_run_record`; None where there is none, or it is
    unreadable or no JSON object (a run started by hand, an older or damaged record)."""
    try:
        record = json.loads((Path(output_dir) / RUN_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


#: What :func:`write_run_record` stamps on every write: a record read back and written again gets them anew.
_STAMPS = ("circle_rotate_version", "musubi_tuner_version", "written_at")


def write_run_record(output_dir: Path, record: Mapping[str, object]) -> Path:
    """Write ``output_dir/run.json`` atomically (with our and musubi-tuner's versions and the time added)."""
    body = {"circle_rotate_version": circle_rotate.__version__, "musubi_tuner_version": musubi_version(),
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **{k: v for k, v in record.items() if k not in _STAMPS}}
    path = Path(output_dir) / RUN_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, body)

