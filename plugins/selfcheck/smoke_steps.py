"""The smoke run's data and checking steps: tiny orbit clips in, trained LoRAs checked out."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Sequence

from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.wan_arch import lora_target_modules
from circle_rotate.selfcheck.tiny_task import TINY_DIT

if TYPE_CHECKING:
    from circle_rotate.selfcheck.tiny_models import TinyModels

logger = logging.getLogger(__name__)

#: Clip shape: the smallest musubi handles that still has 2 latent frames and 2x2 DiT patches.
CLIP = {"width": 32, "height": 32, "frames": 5, "fps": 16.0}
DIRECTIONS = ("right", "left")
SOURCE_PRESET = "ultrafast"


def _cli(run_command: Callable[[Sequence[str]], int], *argv: str) -> None:
    """A circle-rotate command in this process; its output is kept out of the smoke report."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_command(["--quiet", *argv])
    if code != 0:
        raise UserError(f"`circle-rotate {' '.join(argv)}` failed (exit {code}): {out.getvalue()[-300:]}",
                        fix="run that command by hand to see the problem")


def source_clips(cache: Path) -> Path:
    """Synthetic orbit footage to prepare from, rendered once into ``cache`` and reused (like the tiny models).

    Rendering and encoding it costs more CPU than ``prepare`` itself, and it is only the
    raw material: every run still cuts, captions and configures it afresh.
    """
    import shutil
    import tempfile

    import circle_rotate

    key = hashlib.sha256(repr((circle_rotate.__version__, CLIP, DIRECTIONS, SOURCE_PRESET)).encode()).hexdigest()[:12]
    raw = cache / f"source-clips-{key}"
    if raw.is_dir():
        return raw
    from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec, write_turntable

    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".source-clips-"))
    try:
        for i, direction in enumerate(DIRECTIONS):
            # a few frames more than a clip, so prepare has something to cut
            spec = TurntableSpec(name=f"orbit_{direction}", direction=direction, seed=i, width=CLIP["width"],
                                 height=CLIP["height"], frames=2 * CLIP["frames"] - 1, fps=CLIP["fps"])
            write_turntable(spec, tmp, preset=SOURCE_PRESET)
        tmp.rename(raw)
    except OSError:
        if not raw.is_dir():  # not "another run finished the same clips first": a real failure
            raise
    finally:
        # an interrupted render leaves no half-made folder in the cache
        shutil.rmtree(tmp, ignore_errors=True)
    return raw


def make_dataset(work: Path, *, sources: Path, run_command: Callable[[Sequence[str]], int]) -> Path:
    """``sources`` (:func:`source_clips`) through ``prepare``, ``caption`` and ``config``; returns the dataset config.

    ``run_command`` runs one public command from its argv (the CLI's ``main``, handed down by it).
    """
    prepared, config = work / "prepared", work / "dataset.toml"
    size = f"{CLIP['width']}x{CLIP['height']}"
    # QC off and still frames kept: 32-pixel clips are too small to judge an orbit by, and judging is not the point
    _cli(run_command, "prepare", str(sources), "-o", str(prepared), "--frames", str(CLIP["frames"]),
         "--fps", f"{CLIP['fps']:g}", "--resolution", size, "--size-mode", "exact", "--qc", "off", "--keep-still", "--max-clips", "1",
         "--jobs", "1", "--preset", "ultrafast")
    _cli(run_command, "caption", str(prepared), "--subject", "a box on a table")
    _cli(run_command, "config", str(prepared), "-o", str(config), "--cache", str(work / "cache"), "--resolution", size,
         "--batch-size", "2", "--force")
    return config


def _wan_model():
    from circle_rotate.kernel.musubi_env import import_musubi

    model_cls = import_musubi("wan.modules.model").WanModel
    c = TINY_DIT
    return model_cls(model_type="i2v", model_version=c.model_version, in_dim=c.in_dim, dim=c.dim, ffn_dim=c.ffn_dim,
                     freq_dim=c.freq_dim, text_dim=c.text_dim, out_dim=c.out_dim, num_heads=c.num_heads,
                     num_layers=c.num_layers)


def _musubi_merged(base: Path, lora: Path) -> Dict[str, object]:
    """musubi's own LoRA code: build the network from the file, merge it into the tiny base (fp32)."""
    import torch
    from safetensors.torch import load_file

    from circle_rotate.kernel.musubi_env import import_musubi

    lora_wan = import_musubi("networks.lora_wan")
    model = _wan_model()
    model.load_state_dict(load_file(str(base)), strict=True)
    weights = load_file(str(lora))
    net = lora_wan.create_arch_network_from_weights(1.0, weights, unet=model, for_inference=True)
    modules = len(net.unet_loras)
    if modules != len(lora_target_modules(TINY_DIT)):
        raise UserError(f"musubi's LoRA code found {modules} modules, expected {len(lora_target_modules(TINY_DIT))}",
                        path=lora, fix="the training wrote an incomplete LoRA")
    if not any(v.abs().max() > 0 for k, v in weights.items() if k.endswith("lora_up.weight")):
        raise UserError("every lora_up weight is still zero: training did not update the LoRA", path=lora,
                        fix="read the training output")
    net.merge_to(None, model, weights, device=torch.device("cpu"))
    return {"modules": modules, "state": {k: v.detach() for k, v in model.state_dict().items()}}


def verify_loras(models: "TinyModels", loras: Mapping[str, str], work: Path, *,
                 run_command: Callable[[Sequence[str]], int]) -> str:
    """Each LoRA loads in musubi, has every module and moved; our merge equals musubi's."""
    from safetensors.torch import load_file

    details: List[str] = []
    for expert, lora in sorted(loras.items()):
        base = models.dit_low if expert == "low" else models.dit_high
        theirs = _musubi_merged(base, Path(lora))
        out = work / f"merged_{expert}.safetensors"
        _cli(run_command, "merge", str(base), "--lora", str(lora), "-o", str(out), "--force")
        ours = load_file(str(out))
        worst = max(float((ours[k].float() - v.float()).abs().max()) for k, v in theirs["state"].items())
        moved = max(float((ours[k].float() - v.float()).abs().max()) for k, v in load_file(str(base)).items())
        if moved == 0:
            raise UserError("merging the LoRA changed no weight", path=out, fix="read the training output")
        scale = max(float(v.float().abs().max()) for v in theirs["state"].values())
        if worst > 1e-5 * scale:
            raise UserError(f"our merge differs from musubi's by {worst:.3g} (scale {scale:.3g})", path=out,
                            fix="report this: the merge maths disagree")
        details.append(f"{expert}: {theirs['modules']} modules, max change {moved:.1e}, ours vs musubi's {worst:.1e}")
    return "; ".join(details)
