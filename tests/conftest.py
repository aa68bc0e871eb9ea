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
