"""A huggingface_hub cache laid out by hand, so `circle-rotate download` runs offline in tests."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Union

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def populate(cache: Path, repo_id: str, repo_type: str, files: Dict[str, Union[Path, bytes]]) -> None:
    """The hub cache layout: ``<type>s--org--name/refs/main`` -> commit, ``snapshots/<commit>/<path>``."""
    root = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    for rel, data in files.items():
        dst = root / "snapshots" / COMMIT / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(data.read_bytes() if isinstance(data, Path) else data)
