"""The download command a skipped learned metric names works with the huggingface_hub installed:
1.0 ships only ``hf`` (``huggingface-cli`` is gone), versions before 0.34 only ``huggingface-cli``."""

from __future__ import annotations

import importlib.metadata

import pytest

from circle_rotate.eval.context import EvalContext
from circle_rotate.eval.frames import load_clip
from circle_rotate.eval.registry import resolve
from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec, write_turntable


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    spec = TurntableSpec(name="l", width=64, height=48, frames=18, subject="car")
    return load_clip(write_turntable(spec, tmp_path_factory.mktemp("hints")).video)


@pytest.mark.parametrize("hub, command", [("1.0.1", "hf download openai/clip-vit-base-patch32"),
                                          ("0.34.3", "hf download openai/clip-vit-base-patch32"),
                                          ("0.24.0", "huggingface-cli download openai/clip-vit-base-patch32")])
def test_missing_clip_weights_name_the_cli_this_huggingface_hub_has(clip, tmp_path, monkeypatch, hub, command):
    pytest.importorskip("transformers")
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda dist: hub if dist == "huggingface_hub" else real(dist))
    ctx = EvalContext(clip, options={"weights": {"clip": str(tmp_path / "no_such_model")}})
    res = resolve(["clip_i"])[0].compute(ctx)
    assert res.skipped.startswith("clip_i: skipped: CLIP weights") and f"run `{command}` once" in res.skipped
