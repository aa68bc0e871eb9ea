"""Optional learned metrics, as in the reference: CLIP-I, LPIPS, DINO subject consistency
(VBench-SC) and the paper's YOLO + SAM subject drift.

None of them downloads anything. Each looks for its package and its weights on this
machine (a local folder, the Hugging Face cache, the torch hub cache, or a path given with
``--weights NAME=PATH``) and, when something is missing, returns a result marked skipped
that says what is missing and how to get it. The default metric set needs none of them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from circle_rotate.eval.context import EvalContext, MetricResult
from circle_rotate.eval.learned_needs import Unavailable, _device, _need, _weights

logger = logging.getLogger(__name__)

CLIP_MODEL = "openai/clip-vit-base-patch32"


def _skipping(name: str, fn: Callable[[EvalContext], MetricResult]) -> Callable[[EvalContext], MetricResult]:
    def run(ctx: EvalContext) -> MetricResult:
        try:
            return fn(ctx)
        except Unavailable as exc:
            return MetricResult(skipped=f"{name}: skipped: {exc}")

    run.__doc__ = fn.__doc__
    return run


def hub_download_command(repo: str) -> str:
    """The command that fetches ``repo`` into the Hugging Face cache with the huggingface_hub installed
    here: ``hf download`` from 0.34 on (1.0 removed ``huggingface-cli``, which older ones only have)."""
    import importlib.metadata
    import re

    try:
        version = importlib.metadata.version("huggingface_hub")
    except importlib.metadata.PackageNotFoundError:  # installing it now gets a version with `hf`
        return f"hf download {repo}"
    match = re.match(r"(\d+)\.(\d+)", version)
    if match and (int(match.group(1)), int(match.group(2))) < (0, 34):
        return f"huggingface-cli download {repo}"
    return f"hf download {repo}"


def _load_clip(ctx: EvalContext):
    _need("transformers", "transformers")
    source = _weights(ctx, "clip") or CLIP_MODEL
    key = f"clip:{source}"

    def build(_: EvalContext) -> Any:
        from transformers import CLIPImageProcessor, CLIPModel

        try:  # local_files_only: a folder, or the Hugging Face cache; never the network
            model = CLIPModel.from_pretrained(source, local_files_only=True).eval()
            processor = CLIPImageProcessor.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError):  # ValueError: a path that does not exist reads as a bad repo id
            raise Unavailable(f"CLIP weights '{source}' are not on this machine (run `{hub_download_command(CLIP_MODEL)}` "
                              f"once, or pass --weights clip=FOLDER)") from None
        return model.to(_device()), processor

    return ctx.shared(key, build)


def compute_clip_i(ctx: EvalContext) -> MetricResult:
    """CLIP-I on the 16 sampled frames: first-last, mean similarity to the first frame
    (the first frame included, as in the reference), and mean similarity of neighbours."""
    import torch

    model, processor = _load_clip(ctx)
    frames = [ctx.clip.frames[i] for i in ctx.clip.sampled()]
    with torch.no_grad():
        inputs = processor(images=frames, return_tensors="pt")
        feats = model.get_image_features(pixel_values=inputs["pixel_values"].to(model.device)).float()
    feats = feats / feats.norm(p=2, dim=-1, keepdim=True)
    values = {
        "clip_first_last": float(feats[0] @ feats[-1]),
        "clip_global_avg": float((feats @ feats[0]).mean()),
        "clip_frame_acc": float(torch.nn.functional.cosine_similarity(feats[:-1], feats[1:]).mean()),
    }
    return MetricResult(values)


def compute_lpips(ctx: EvalContext) -> MetricResult:
    """LPIPS (AlexNet) between the first and the last frame."""
    _need("lpips", "lpips")
    import torch

    hub = Path(torch.hub.get_dir()) / "checkpoints"
    if not any(hub.glob("alexnet-*.pth")):
        raise Unavailable(f"LPIPS needs torchvision's AlexNet weights in {hub} (they are downloaded on first use "
                          "of lpips.LPIPS(net='alex') on a machine with network access)")

    def build(_: EvalContext) -> Any:
        import lpips

        return lpips.LPIPS(net="alex", verbose=False).eval().to(_device())

    model = ctx.shared("lpips", build)

    def tensor(img: np.ndarray):
        return (torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1).to(_device())

    with torch.no_grad():
        value = float(model(tensor(ctx.clip.frames[0]), tensor(ctx.clip.frames[-1])).item())
    return MetricResult({"lpips": value})


def compute_vbench_sc(ctx: EvalContext) -> MetricResult:
    """VBench subject consistency with DINO ViT-B/16: mean over sampled frames of
    (max(0, cos(f_i, f_{i-1})) + max(0, cos(f_i, f_0))) / 2."""
    import torch

    repo = Path(torch.hub.get_dir()) / "facebookresearch_dino_main"
    if not repo.is_dir():
        raise Unavailable(f"DINO is not in the torch hub cache ({repo}); run torch.hub.load('facebookresearch/dino:main', "
                          "'dino_vitb16') once on a machine with network access")

    def build(_: EvalContext) -> Any:
        return torch.hub.load(str(repo), "dino_vitb16", source="local").eval().to(_device())

    model = ctx.shared("dino", build)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    feats = []
    for i in ctx.clip.sampled():
        x = torch.from_numpy(ctx.clip.frames[i]).permute(2, 0, 1)[None].float() / 255
        x = torch.nn.functional.interpolate(x, size=224, mode="bilinear", antialias=True)  # short side 256 then crop
        with torch.no_grad():
            feats.append(torch.nn.functional.normalize(model(((x - mean) / std).to(_device())), dim=-1))
    sims = [(max(0.0, float(torch.cosine_similarity(feats[i - 1], feats[i]))) +
             max(0.0, float(torch.cosine_similarity(feats[0], feats[i])))) / 2 for i in range(1, len(feats))]
    return MetricResult({"vbench_sc": float(np.mean(sims))})


def compute_subject_drift_sam(ctx: EvalContext) -> MetricResult:
    """The study's YOLO + SAM subject drift (:mod:`circle_rotate.eval.sam_drift`)."""
    from circle_rotate.eval.sam_drift import compute_subject_drift_sam as compute

    return compute(ctx)


LEARNED = {
    "clip_i": _skipping("clip_i", compute_clip_i),
    "lpips": _skipping("lpips", compute_lpips),
    "vbench_sc": _skipping("vbench_sc", compute_vbench_sc),
    "subject_drift_sam": _skipping("subject_drift_sam", compute_subject_drift_sam),
}
