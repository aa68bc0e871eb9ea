"""Shared fixtures: one per kind of model file the project makes itself, and the markers.

Kinds: ``tiny_wan_dir`` (tiny Wan2.2 experts in every dtype), ``tiny_loras`` (the released
pair's shape, tiny: musubi LoRAs for the high and low expert), ``real_size_experts`` (the
real 14B headers over sparse files), ``tiny_musubi_models`` (what musubi's scripts run on).

Tests that need musubi-tuner use the ``musubi`` fixture or the ``musubi`` marker (either
implies the other): they skip with a reason when musubi-tuner is not installed, and fail
instead when ``CIRCLE_ROTATE_REQUIRE_MUSUBI=1`` (set by ``.ci/run``), so CI can never pass by
skipping them. ``slow`` marks tests of more than a few seconds: ``pytest -m "not slow"``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict

import pytest

from circle_rotate.kernel.musubi_env import musubi_available, prepare_cpu_import

MUSUBI_HINT = ("musubi-tuner not installed (pip install -e '.[train]', or pip install --no-deps ../shared/musubi-tuner "
               "and pip install -r .ci/musubi-requirements.txt)")


def _require_musubi() -> None:
    if not musubi_available():
        if os.environ.get("CIRCLE_ROTATE_REQUIRE_MUSUBI") == "1":
            pytest.fail(MUSUBI_HINT + "; CI requires it")
        pytest.skip(MUSUBI_HINT)


def pytest_collection_modifyitems(config, items):
    # a test that uses the fixture (directly or through another fixture) carries the marker,
    # so `-m musubi` / `-m "not musubi"` select exactly the tests that need it
    for item in items:
        if "musubi" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.musubi)


def pytest_runtest_setup(item):
    if item.get_closest_marker("musubi") is not None:
        _require_musubi()


@pytest.fixture(scope="session")
def musubi():
    """Make musubi-tuner importable on this CPU, or skip (fail in CI) when it is absent."""
    _require_musubi()
    prepare_cpu_import()
    import musubi_tuner

    return musubi_tuner


@pytest.fixture(scope="session")
def tiny_wan_dir(tmp_path_factory) -> Path:
    """Tiny Wan2.2 I2V experts in every dtype, named like the real downloads."""
    from circle_rotate.selfcheck.synthetic.tiny_wan import write_tiny_wan

    d = tmp_path_factory.mktemp("tiny_wan")
    for dtype in ("fp16", "bf16", "fp32", "fp8_e4m3fn", "fp8_scaled"):
        for seed, expert in ((1, "high"), (2, "low")):
            write_tiny_wan(d / f"wan2.2_i2v_{expert}_noise_14B_{dtype}.safetensors", dtype=dtype, seed=seed)
    return d


@pytest.fixture(scope="session")
def tiny_loras(tmp_path_factory) -> Dict[str, Path]:
    """Random musubi-layout LoRAs over every tiny-Wan target, named like the released pair (read-only).

    Only their names say which expert they are for (no expert metadata), as merge-pair's evidence tests need."""
    from circle_rotate.kernel.wan_arch import tiny_config
    from circle_rotate.selfcheck.synthetic.lora import write_random_lora

    d = tmp_path_factory.mktemp("tiny_loras")
    # alpha 1 at rank 4: scale 1/4, a power of two, as musubi's default 1/32 is
    return {expert: write_random_lora(d / f"circle_rotate_{expert[0]}.safetensors", tiny_config(), rank=4, alpha=1.0,
                                      seed=seed, metadata={"ss_network_dim": "4"})
            for expert, seed in (("high", 3), ("low", 4))}


@pytest.fixture(scope="session")
def real_size_experts(tmp_path_factory) -> Dict[str, Path]:
    """Both Wan2.2 I2V-A14B experts with their true headers over sparse files (read-only; ~28 GB apparent each)."""
    from model_files import sparse_expert

    d = tmp_path_factory.mktemp("real_size_experts")
    return {e: sparse_expert(d / f"wan2.2_i2v_{e}_noise_14B_fp16.safetensors") for e in ("low", "high")}


@pytest.fixture(scope="session")
def tiny_musubi_models(musubi, tmp_path_factory):
    """Tiny models musubi's real Wan scripts run on (DiT pair, real-architecture VAE, tiny T5, tokenizer)."""
    from circle_rotate.selfcheck.tiny_models import write_tiny_models

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
