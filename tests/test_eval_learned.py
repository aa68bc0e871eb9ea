"""Learned metrics: they run on weights found on this machine and say clearly when they skip."""

from __future__ import annotations

import numpy as np
import pytest

from circle_rotate.eval.context import EvalContext
from circle_rotate.eval.frames import load_clip
from circle_rotate.eval.registry import resolve
from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec, write_turntable


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    spec = TurntableSpec(name="l", width=128, height=96, frames=18, subject="car")
    return load_clip(write_turntable(spec, tmp_path_factory.mktemp("learned")).video)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A tiny, randomly initialised CLIP saved as transformers saves real ones."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 64, "max_position_embeddings": 16},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=8)
    d = tmp_path_factory.mktemp("tiny_clip")
    transformers.CLIPModel(cfg).save_pretrained(d)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    return d


def test_clip_i_loads_local_weights_and_matches_the_reference_formulas(clip, tiny_clip_dir):
    import torch
    from transformers import CLIPImageProcessor, CLIPModel

    ctx = EvalContext(clip, options={"weights": {"clip": str(tiny_clip_dir)}})
    res = resolve(["clip_i"])[0].compute(ctx)
    assert res.skipped is None
    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    proc = CLIPImageProcessor.from_pretrained(tiny_clip_dir)
    frames = [clip.frames[i] for i in np.linspace(0, clip.count - 1, 16).astype(int)]
    with torch.no_grad():
        f = model.get_image_features(**proc(images=frames, return_tensors="pt")).numpy()
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    assert res.values["clip_first_last"] == pytest.approx(float(f[0] @ f[-1]), rel=1e-4)
    assert res.values["clip_global_avg"] == pytest.approx(float((f @ f[0]).mean()), rel=1e-4)
    neighbours = np.sum(f[:-1] * f[1:], axis=1)  # unit vectors: the dot product is the cosine
    assert res.values["clip_frame_acc"] == pytest.approx(float(neighbours.mean()), rel=1e-4)


def test_missing_weights_are_reported_as_skipped_with_the_fix(clip, tmp_path):
    ctx = EvalContext(clip, options={"weights": {"clip": str(tmp_path / "no_such_model"),
                                                 "yolo": str(tmp_path / "no.pt"), "sam": str(tmp_path / "no.pth")}})
    for name in ("clip_i", "lpips", "vbench_sc", "subject_drift_sam"):
        res = resolve([name])[0].compute(ctx)
        if res.skipped is None:  # the package and weights happen to be installed here: it must have produced values
            assert res.values
            continue
        assert res.skipped.startswith(f"{name}: skipped: ") and not res.values
        assert any(word in res.skipped for word in ("pip install", "--weights", "huggingface-cli", "torch.hub", "download"))
