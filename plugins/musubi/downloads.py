"""Which Hugging Face repository holds each file the recipes need, and fetching them.

This is the one place that names them. Downloads go through ``huggingface_hub``: its cache
makes them resumable and shared between projects, and ``HF_HUB_OFFLINE=1`` serves them
from the cache. ``--to DIR`` then links each file under the name the recipes expect.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from circle_rotate.kernel.atomic import write_text
from circle_rotate.kernel.disk_space import short_disks
from circle_rotate.kernel.errors import UserError

logger = logging.getLogger(__name__)

GB = 1e9


@dataclass(frozen=True)
class HubFile:
    """One file on the hub and the recipe variable that points at it."""

    key: str
    repo_id: str
    filename: str
    env_var: str
    approx_bytes: int  # for the up-front estimate when the hub cannot be asked
    repo_type: str = "model"
    note: str = ""

    @property
    def basename(self) -> str:
        return self.filename.rsplit("/", 1)[-1]


# The fp16 experts are what musubi-tuner trains on (docs/wan.md: fp8_scaled is not supported).
WAN_REPO = "Comfy-Org/Wan_2.2_ComfyUI_Repackaged"
WAN21_REPO = "Wan-AI/Wan2.1-I2V-14B-720P"
VAE_REPO = "Comfy-Org/Wan_2.1_ComfyUI_repackaged"
LORA_REPO = "jk1741391802/circle-rotate-lora"
DATASET_REPO = "jk1741391802/circle-rotate-dataset"

FILES: Dict[str, Tuple[HubFile, ...]] = {
    "models": (
        HubFile("dit_high", WAN_REPO, "split_files/diffusion_models/wan2.2_i2v_high_noise_14B_fp16.safetensors", "DIT_HIGH",
                int(28.6 * GB), note="Wan2.2 I2V-A14B high-noise expert, fp16"),
        HubFile("dit_low", WAN_REPO, "split_files/diffusion_models/wan2.2_i2v_low_noise_14B_fp16.safetensors", "DIT_LOW",
                int(28.6 * GB), note="Wan2.2 I2V-A14B low-noise expert, fp16"),
        # The Wan2.1 VAE serves both A14B experts; the safetensors repackage avoids unpickling Wan2.1_VAE.pth.
        HubFile("vae", VAE_REPO, "split_files/vae/wan_2.1_vae.safetensors", "VAE", int(0.254 * GB), note="Wan2.1 VAE"),
        HubFile("t5", WAN21_REPO, "models_t5_umt5-xxl-enc-bf16.pth", "T5", int(11.4 * GB), note="umt5-xxl text encoder, bf16"),
    ),
    "lora": (
        HubFile("lora_high", LORA_REPO, "circle_rotate_h.safetensors", "LORA_HIGH", int(0.31 * GB),
                note="released Circle-Rotate LoRA, high-noise expert"),
        HubFile("lora_low", LORA_REPO, "circle_rotate_l.safetensors", "LORA_LOW", int(0.31 * GB),
                note="released Circle-Rotate LoRA, low-noise expert"),
    ),
    # The study's subject-drift models (eval --metrics subject_drift_sam). Ultralytics publishes
    # yolov8n.pt on the hub itself; Meta publishes SAM only on its own server, so this is the
    # byte-identical copy under segment-anything's name (the _01ec64 suffix is its md5 prefix).
    "eval-weights": (
        HubFile("yolo", "Ultralytics/YOLOv8", "yolov8n.pt", "CIRCLE_ROTATE_YOLO_WEIGHTS", 6_534_387,
                note="YOLOv8n detector (COCO), as the study's subject drift uses"),
        HubFile("sam", "ybelkada/segment-anything", "checkpoints/sam_vit_b_01ec64.pth", "CIRCLE_ROTATE_SAM_WEIGHTS",
                375_042_383, note="Segment Anything ViT-B, as the study's subject drift uses"),
    ),
}
GROUPS = ("models", "lora", "eval-weights", "dataset")
#: ``download models --variant``: i2v is what the recipes train on; fun-inp the experts the study's
#: ComfyUI workflow runs (Comfy-Org ships them fp8_scaled only), with ComfyUI's umT5.
VARIANTS = ("i2v", "fun-inp")
FUN_INP_MODELS: Tuple[HubFile, ...] = (
    HubFile("dit_high", WAN_REPO, "split_files/diffusion_models/wan2.2_fun_inpaint_high_noise_14B_fp8_scaled.safetensors",
            "DIT_HIGH", int(14.3 * GB), note="Wan2.2 Fun-InP A14B high-noise expert, fp8_scaled"),
    HubFile("dit_low", WAN_REPO, "split_files/diffusion_models/wan2.2_fun_inpaint_low_noise_14B_fp8_scaled.safetensors",
            "DIT_LOW", int(14.3 * GB), note="Wan2.2 Fun-InP A14B low-noise expert, fp8_scaled"),
    FILES["models"][2],
    HubFile("t5", VAE_REPO, "split_files/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors", "T5", int(6.7 * GB),
            note="umt5-xxl text encoder as ComfyUI loads it, fp8_scaled"),
)


def group_files(group: str, variant: str = "i2v") -> Tuple[HubFile, ...]:
    """The files of ``group`` (``variant`` picks the experts of ``models``)."""
    if variant not in VARIANTS:
        raise UserError(f"unknown variant '{variant}'", fix=f"choose one of {', '.join(VARIANTS)}")
    if variant == "fun-inp" and group == "models":
        return FUN_INP_MODELS
    return FILES[group]


@dataclass(frozen=True)
class PlannedFile:
    file: HubFile
    size: int
    size_known: bool
    cached: bool


def _cache_dir(cache_dir: Optional[Path]) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _cached_path(f: HubFile, cache_dir: Path) -> Optional[Path]:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(f.repo_id, f.filename, cache_dir=str(cache_dir), repo_type=f.repo_type)
    return Path(found) if isinstance(found, str) else None


def cached_file(group: str, key: str, *, cache_dir: Optional[Path] = None) -> Optional[Path]:
    """The cached copy of one file of ``group`` (no network), or None."""
    for f in FILES.get(group, ()):
        if f.key == key:
            return _cached_path(f, _cache_dir(cache_dir))
    return None


def _hub_sizes(files: Sequence[HubFile]) -> Dict[str, int]:
    """Sizes from the hub, or {} when it cannot be reached (offline, no network)."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return {}
    sizes: Dict[str, int] = {}
    api = HfApi()
    try:
        for repo in sorted({(f.repo_id, f.repo_type) for f in files}):
            wanted = [f.filename for f in files if (f.repo_id, f.repo_type) == repo]
            for info in api.get_paths_info(repo[0], wanted, repo_type=repo[1]):
                sizes[f"{repo[0]}/{info.path}"] = int(getattr(info, "size", 0) or 0)
    except Exception as exc:  # network errors of every kind: fall back to the documented sizes
        logger.warning("could not ask the hub for file sizes (%s); using documented sizes", _short(exc))
        return {}
    return sizes


DATASET = HubFile("dataset", DATASET_REPO, "(whole repository)", "DATASET_DIR", 0, repo_type="dataset",
                  note="Circle-Rotate dataset (2,168 orbit videos)")


def _dataset_plan(cache: Path) -> List[PlannedFile]:
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        root = Path(snapshot_download(DATASET_REPO, repo_type="dataset", cache_dir=str(cache), local_files_only=True))
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        return [PlannedFile(DATASET, size, True, True)]
    except LocalEntryNotFoundError:
        pass
    if not constants.HF_HUB_OFFLINE:
        try:
            info = HfApi().dataset_info(DATASET_REPO, files_metadata=True)
            return [PlannedFile(DATASET, sum(int(s.size or 0) for s in info.siblings or []), True, False)]
        except Exception as exc:  # network errors of every kind
            logger.warning("could not ask the hub for the dataset size (%s)", _short(exc))
    return [PlannedFile(DATASET, 0, False, False)]


def plan(group: str, *, cache_dir: Optional[Path] = None, variant: str = "i2v") -> List[PlannedFile]:
    """What ``download <group>`` would fetch, with sizes and what is already cached."""
    if group not in GROUPS:
        raise UserError(f"unknown download group '{group}'", fix=f"choose one of {', '.join(GROUPS)}")
    cache = _cache_dir(cache_dir)
    if group == "dataset":
        return _dataset_plan(cache)
    files = group_files(group, variant)
    sizes = _hub_sizes(files)
    out = []
    for f in files:
        cached = _cached_path(f, cache)
        key = f"{f.repo_id}/{f.filename}"
        if cached is not None:
            size, known = cached.stat().st_size, True
        elif key in sizes:
            size, known = sizes[key], True
        else:
            size, known = f.approx_bytes, False
        out.append(PlannedFile(f, size, known, cached is not None))
    return out


def check_disk(planned: Sequence[PlannedFile], *, cache_dir: Optional[Path] = None, margin: float = 1.05) -> int:
    """Bytes still to download; raise when the cache's disk cannot hold them."""
    cache = _cache_dir(cache_dir)
    need = sum(p.size for p in planned if not p.cached)
    short = short_disks([(cache, need)], margin=int(need * (margin - 1)))
    if short:
        free = short[0][2]
        raise UserError(f"needs {need / GB:.1f} GB but only {free / GB:.1f} GB is free", path=cache,
                        fix="free disk space, or point --cache-dir (or HF_HOME) at a larger disk")
    return need


#: Beside the files ``-o`` received as copies (where links are not allowed: exFAT, some SMB shares,
#: Windows without developer mode): their sizes and modification times, so that a rerun knows them
#: for its own. The time matters: a user's own LoRA saved over a copy has the same size as the
#: released one (same rank, same keys).
COPIES_RECORD = ".circle-rotate-copies.json"


def _record(folder: Path) -> Dict[str, object]:
    """The copies record in ``folder`` as written ({} where there is none, or it is no JSON object)."""
    try:
        data = json.loads((folder / COPIES_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _copies(folder: Path) -> Dict[str, Dict[str, int]]:
    # an older record held the size alone: without a time, no copy of it counts as ours
    return {str(k): {"size": int(v["size"]), "mtime_ns": int(v["mtime_ns"])} for k, v in _record(folder).items()
            if isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("mtime_ns"), int)}


def _recorded_by_size_alone(dst: Path) -> bool:
    """Whether the record beside ``dst`` names it the way circle-rotate before modification times did."""
    return isinstance(_record(dst.parent).get(dst.name), int)


def _stamp(path: Path) -> Dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _ours(dst: Path, cache: Path) -> bool:
    """Whether ``dst`` is what this command made earlier: a symlink into the cache, or a copy it
    recorded (unchanged since: the same size and modification time)."""
    if not dst.is_symlink():
        stamp = _copies(dst.parent).get(dst.name)
        return stamp is not None and dst.is_file() and _stamp(dst) == stamp
    target = Path(os.path.realpath(dst))
    root = Path(os.path.realpath(cache))
    return target == root or root in target.parents


def link_targets(group: str, to: Path, variant: str = "i2v") -> List[Path]:
    """The paths ``fetch(group, to=to)`` links, one per file (one folder link for the dataset)."""
    if group == "dataset":
        return [Path(to) / "circle-rotate-dataset"]
    return [Path(to) / f.basename for f in group_files(group, variant)]


def check_link_targets(group: str, *, to: Path, cache_dir: Optional[Path] = None, variant: str = "i2v",
                       force: bool = False) -> None:
    """Refuse before any work when a link would replace something that is not ours.

    A same-named file in ``to`` may be the user's own (a LoRA they trained); only a link
    into the cache, left by an earlier download, is replaced without ``--force``, and a
    real folder never is.
    """
    cache = _cache_dir(cache_dir)
    to = Path(to)
    if to.exists() and not to.is_dir():
        raise UserError("is not a folder", path=to, fix="give -o a folder to link the files into")
    for dst in link_targets(group, to, variant):
        if _ours(dst, cache) or not (dst.exists() or dst.is_symlink()):
            continue
        if dst.is_dir() and not dst.is_symlink():
            raise UserError("is a folder that download did not make; it is never replaced", path=dst,
                            fix="move it away, or choose another -o folder")
        if not force:
            if _recorded_by_size_alone(dst):  # an older circle-rotate's copy, or a file saved over it since
                raise UserError("already exists, and download's record of its copy there is an older version's "
                                "(size alone, no modification time), which cannot tell it from a file saved over it",
                                path=dst, fix="if it is download's copy, pass --force to replace it; else move it away "
                                              "or choose another -o folder")
            raise UserError("already exists and is not a link into the download cache", path=dst,
                            fix="move it away, choose another -o folder, or pass --force to replace it")


def _link(src: Path, dst: Path) -> None:
    """``dst`` -> ``src`` as a symlink, replaced atomically; a copy where links are not allowed.

    ``check_link_targets`` has already refused destinations that are not ours.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.link")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    try:
        try:
            os.symlink(src.resolve(), tmp)
            copied = None
        except OSError:
            shutil.copyfile(src, tmp)
            copied = _stamp(tmp)  # os.replace keeps the file's times
        os.replace(tmp, dst)
        record = _copies(dst.parent)
        if copied is not None or dst.name in record:  # a copy is ours only while the record says so
            if copied is None:
                record.pop(dst.name)
            else:
                record[dst.name] = copied
            write_text(dst.parent / COPIES_RECORD, json.dumps(record, indent=1, sort_keys=True) + "\n")
    except BaseException:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        raise


def _not_cached(what: str, cache: Path) -> UserError:
    from huggingface_hub import constants

    fix = ("unset HF_HUB_OFFLINE so it can be fetched, or pre-populate the cache" if constants.HF_HUB_OFFLINE
           else "connect to the internet, or pre-populate the cache")
    return UserError(f"{what} is not in the local cache and the hub cannot be reached", path=cache, fix=fix)


def fetch(group: str, *, to: Optional[Path] = None, cache_dir: Optional[Path] = None,
          variant: str = "i2v", force: bool = False) -> Dict[str, Path]:
    """Download (or find in the cache) every file of ``group``; returns ``{ENV_VAR: path}``.

    Files go into the Hugging Face cache (resumable); with ``to`` they are also linked
    there under their own names, which is what the printed variables then point at; a
    same-named file there that is not such a link needs ``force`` (checked before any download).
    """
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = _cache_dir(cache_dir)
    if to is not None:
        check_link_targets(group, to=to, cache_dir=cache, variant=variant, force=force)
    if group == "dataset":
        try:
            root = Path(snapshot_download(DATASET_REPO, repo_type="dataset", cache_dir=str(cache)))
        except LocalEntryNotFoundError:
            raise _not_cached(DATASET_REPO, cache) from None
        target = root
        if to is not None:
            _link(root, Path(to) / "circle-rotate-dataset")
            target = Path(to) / "circle-rotate-dataset"
        return {"DATASET_DIR": target}
    out: Dict[str, Path] = {}
    for f in group_files(group, variant):
        try:
            path = Path(hf_hub_download(f.repo_id, f.filename, repo_type=f.repo_type, cache_dir=str(cache)))
        except LocalEntryNotFoundError:
            raise _not_cached(f"{f.repo_id}/{f.filename}", cache) from None
        if to is not None:
            _link(path, Path(to) / f.basename)
            path = Path(to) / f.basename
        out[f.env_var] = path
    return out


def _short(exc: BaseException) -> str:
    """A network error in a few words: urllib3's repr runs to 400 characters of nested reprs."""
    text = str(exc)
    for marker, words in (("Name or service not known", "no network: the host name does not resolve"),
                          ("Failed to resolve", "no network: the host name does not resolve"),
                          ("timed out", "the connection timed out"), ("Connection refused", "the connection was refused")):
        if marker in text:
            return words
    return f"{exc.__class__.__name__}: {text[:120]}"
