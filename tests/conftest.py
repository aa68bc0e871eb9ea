"""Shared fixtures: small real files the project makes itself (videos, checkpoints).

Tests that need musubi-tuner use the ``musubi`` fixture: it skips with a reason when
musubi-tuner is not installed, and fails instead when ``CIRCLE_ROTATE_REQUIRE_MUSUBI=1``
(set by ``.ci/run``), so CI can never pass by skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from circle_rotate.musubi_env import musubi_available, prepare_cpu_import

MUSUBI_HINT = "musubi-tuner not installed (pip install --no-deps ../shared/musubi-tuner, or circle-rotate[train])"


@pytest.fixture(scope="session")
def musubi():
    """Make musubi-tuner importable on this CPU, or skip (fail in CI) when it is absent."""
    if not musubi_available():
        if os.environ.get("CIRCLE_ROTATE_REQUIRE_MUSUBI") == "1":
            pytest.fail(MUSUBI_HINT + "; CI requires it")
        pytest.skip(MUSUBI_HINT)
    prepare_cpu_import()
    import musubi_tuner

    return musubi_tuner


@pytest.fixture(scope="session")
def tiny_wan_dir(tmp_path_factory) -> Path:
    """Tiny Wan2.2 I2V experts in every dtype, named like the real downloads."""
    from circle_rotate.synthetic.tiny_wan import write_tiny_wan

    d = tmp_path_factory.mktemp("tiny_wan")
    for dtype in ("fp16", "bf16", "fp32", "fp8_e4m3fn", "fp8_scaled"):
        for seed, expert in ((1, "high"), (2, "low")):
            write_tiny_wan(d / f"wan2.2_i2v_{expert}_noise_14B_{dtype}.safetensors", dtype=dtype, seed=seed)
    return d


@pytest.fixture(scope="session")
def tiny_musubi_models(musubi, tmp_path_factory):
    """Tiny models musubi's real Wan scripts run on (DiT pair, real-architecture VAE, tiny T5, tokenizer)."""
    from circle_rotate.tiny_models import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("tiny_musubi"))


@pytest.fixture(scope="session")
def write_musubi_caches(musubi):
    """``write(plan, i2v=True, skip=())``: the cache files of a plan, written by musubi's own cache writers."""
    import torch

    from musubi_tuner.dataset.image_video_dataset import (ItemInfo, save_latent_cache_wan,
                                                          save_text_encoder_output_cache_wan)

    def write(plan, *, i2v: bool = True, skip=()):
        for item in plan.items:
            if item.video.name in skip:
                continue
            width, height = item.bucket
            for (start, frames), path in zip(item.windows, item.latent_files):
                info = ItemInfo(item.video.name, item.caption, (width, height), (width, height, frames),
                                frame_count=frames, latent_cache_path=str(path))
                shape = (1 + (frames - 1) // 4, height // 8, width // 8)
                latent = torch.randn(16, *shape).to(torch.bfloat16)
                image = torch.randn(20, *shape).to(torch.bfloat16) if i2v else None
                save_latent_cache_wan(info, latent, None, image, None)
            info = ItemInfo(item.video.name, item.caption, (0, 0), (0, 0))
            info.text_encoder_output_cache_path = str(item.te_file)
            tokens = len((item.caption or "").split()) + 1  # about one umt5 token per word, plus </s>
            save_text_encoder_output_cache_wan(info, torch.randn(tokens, 4096).to(torch.bfloat16))

    return write
