"""What is in the cache directories now: cached, missing and stale items, strays, space used.

Only safetensors headers are read. An item is stale when its files exist but would train
wrongly or on old data:

- a latent cache without ``latents_image_*``: made without ``--i2v``; I2V training then fails
  with ``KeyError: 'latents_image'``, and ``--skip_existing`` would never redo it;
- a latent cache older than its clip (the clip was re-made);
- a text cache whose ``caption1`` metadata is not the clip's current caption.

Stray files (``*_wan.safetensors`` / ``*_wan_te.safetensors`` no dataset item names) are
listed too: ``--keep_cache`` keeps them and ``wan_train_network.py`` trains on every latent
cache it finds in the directory, so a removed clip is still trained on until its cache goes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.safetensors_io import read_header
from circle_rotate.musubi.cache_plan import ARCH, CacheItem, CachePlan

I2V_KEY_PREFIX = "latents_image_"


@dataclass(frozen=True)
class ItemStatus:
    item: CacheItem
    state: str  # "cached", "missing", "stale"
    reasons: Tuple[str, ...] = ()
    stale_files: Tuple[Path, ...] = ()


@dataclass(frozen=True)
class CacheStatus:
    items: Tuple[ItemStatus, ...]
    strays: Tuple[Path, ...]
    used_bytes: int  # every cache file in the cache directories

    def count(self, state: str) -> int:
        return sum(s.state == state for s in self.items)

    def of(self, state: str) -> List[ItemStatus]:
        return [s for s in self.items if s.state == state]

    @property
    def missing_bytes(self) -> int:
        """Estimated bytes still to write (missing and stale items)."""
        return sum(s.item.latent_bytes + s.item.te_bytes for s in self.items if s.state != "cached")

    def to_dict(self) -> dict:
        return {
            "cached": self.count("cached"), "missing": self.count("missing"), "stale": self.count("stale"),
            "strays": [str(p) for p in self.strays], "used_bytes": self.used_bytes,
            "to_write_bytes": self.missing_bytes,
            "items": [{"video": str(s.item.video), "state": s.state, "reasons": list(s.reasons)}
                      for s in self.items if s.state != "cached"],
        }


def latent_is_i2v(path: Path) -> bool:
    """Whether a latent cache file has the first-frame image latent ``--i2v`` adds."""
    return any(k.startswith(I2V_KEY_PREFIX) for k in read_header(path).keys())


def _latent_problems(item: CacheItem) -> Tuple[List[str], List[Path], bool]:
    reasons: List[str] = []
    stale: List[Path] = []
    missing = False
    source_mtime = item.video.stat().st_mtime if item.video.exists() else 0.0
    for f in item.latent_files:
        if not f.exists():
            missing = True
            continue
        try:
            i2v = latent_is_i2v(f)
        except UserError:
            reasons.append(f"{f.name} is unreadable (interrupted write?)")
            stale.append(f)
            continue
        if not i2v:
            reasons.append(f"{f.name} was cached without --i2v")
            stale.append(f)
        elif f.stat().st_mtime < source_mtime:
            reasons.append(f"{f.name} is older than {item.video.name}")
            stale.append(f)
    return reasons, stale, missing or not item.latent_files


def _te_problem(item: CacheItem) -> Tuple[Optional[str], bool]:
    if not item.te_file.exists():
        return None, True
    try:
        cached = read_header(item.te_file).metadata.get("caption1")
    except UserError:
        return f"{item.te_file.name} is unreadable (interrupted write?)", False
    if item.caption is not None and cached is not None and cached != item.caption:
        return f"{item.te_file.name} holds an older caption", False
    return None, False


def _item_status(item: CacheItem) -> ItemStatus:
    reasons, stale, latent_missing = _latent_problems(item)
    te_reason, te_missing = _te_problem(item)
    if te_reason:
        reasons.append(te_reason)
        stale.append(item.te_file)
    if reasons:
        return ItemStatus(item, "stale", tuple(reasons), tuple(stale))
    if latent_missing or te_missing:
        what = [w for w, m in (("latents", latent_missing), ("text", te_missing)) if m]
        return ItemStatus(item, "missing", (f"no {' or '.join(what)} cache",))
    return ItemStatus(item, "cached")


def check_cache(plan: CachePlan) -> CacheStatus:
    """Compare the cache directories with what ``plan`` expects (headers only)."""
    statuses = tuple(_item_status(i) for i in plan.items)
    expected = {f for i in plan.items for f in (*i.latent_files, i.te_file)}
    strays: List[Path] = []
    used = 0
    for directory in sorted({d.cache_directory for d in plan.datasets}):
        if not directory.is_dir():
            continue
        for f in sorted(directory.glob(f"*_{ARCH}*.safetensors")):
            if not (f.name.endswith(f"_{ARCH}.safetensors") or f.name.endswith(f"_{ARCH}_te.safetensors")):
                continue
            used += f.stat().st_size
            if f not in expected:
                strays.append(f)
    return CacheStatus(items=statuses, strays=tuple(strays), used_bytes=used)
