"""`circle-rotate demo`: the whole kit end to end on a CPU, through the public commands only."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from safetensors import safe_open

from circle_rotate.kernel.musubi_env import musubi_available

pytestmark = pytest.mark.slow  # the demo end to end (minutes on 2 cores)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    # as the README runs it: a folder relative to where you are (the smoke step's musubi runs elsewhere)
    proc = subprocess.run([sys.executable, "-m", "circle_rotate", "demo", "--out", out.name], capture_output=True,
                          text=True, timeout=1200, cwd=out.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_every_step_runs_and_says_what_it_made(demo):
    out, stdout = demo
    steps = [line.split("]")[0] + "]" for line in stdout.splitlines() if line.startswith("[")]
    assert steps == [f"[{i}/7]" for i in range(1, 8)]
    assert stdout.strip().splitlines()[-1].startswith(f"report: {out / 'report' / 'report.html'}")
    summary = json.loads((out / "prepared" / "prepare_summary.json").read_text())
    assert summary["clips_accepted"] >= 3 and summary["clips_rejected"] >= 1  # the pan is no orbit
    assert [f["source"] for f in summary["failed"]] == ["broken_upload.mp4"]
    assert len(list((out / "prepared" / "videos").glob("*.txt"))) == summary["clips_accepted"]
    if musubi_available():
        for e in ("high", "low"):
            assert (out / "smoke" / "outputs" / e / f"circle_rotate_{e[0]}.safetensors").is_file()
    for dtype in ("fp16", "fp8_scaled"):
        with safe_open(str(out / "merged" / f"high_merged_{dtype}.safetensors"), framework="pt") as f:
            assert ("scaled_fp8" in f.keys()) == (dtype == "fp8_scaled")
    with safe_open(str(out / "merged" / "circle_rotate_h_comfy.safetensors"), framework="pt") as f:
        assert all(k.startswith("diffusion_model.blocks.") for k in f.keys())


def _drift_and_truth(out):
    compare = json.loads((out / "report" / "compare.json").read_text())
    drift = next((m for m in compare["metrics"] if m["column"] == "drift"), None)  # None: no pair read reliably
    # the drift statistics leave out pairs read unreliably: the truth over the same pairs (all when none is left)
    left_out = compare.get("drift_left_out", {}) if drift is not None else {}
    truth = {side: [json.loads(p.read_text())["drift"] for p in sorted((out / "eval").glob(f"{side}_*.truth.json"))
                    if p.name[len(side) + 1:-len(".truth.json")] not in left_out]
             for side in ("baseline", "lora")}
    return drift, {side: sum(v) / len(v) for side, v in truth.items()}


def test_report_states_measured_and_true_drift(demo):
    out, stdout = demo
    drift, truth = _drift_and_truth(out)
    # The generator's sets are what the demo says they are: the LoRA set drifts far less.
    assert truth["lora"] < 0.5 * truth["baseline"]
    if drift is not None:
        assert drift["baseline_mean"] > 0 and drift["lora_mean"] > 0
        # a paired test needs two pairs read reliably (the others are left out and listed)
        assert (drift["n"] < 2 and drift["p_value"] is None) or 0 <= drift["p_value"] <= 1
    assert "measured: drift" in stdout and "ground truth: drift -" in stdout
    html = (out / "report" / "report.html").read_text()
    assert "data:image/png;base64," in html and "<img src=\"http" not in html


@pytest.mark.xfail(reason="issue 13: on the generator's orbits the found-once-then-followed mask marks most readings "
                          "unreliable and leaves few pairs in the drift statistics (tests/test_eval_accuracy.py)",
                   strict=False)
def test_measured_drift_matches_the_ground_truth(demo):
    out, _ = demo
    drift, truth = _drift_and_truth(out)
    assert drift is not None, "no pair's drift was read reliably"
    for side, key in (("baseline", "baseline_mean"), ("lora", "lora_mean")):
        assert abs(drift[key] - truth[side]) <= max(1.5, 0.15 * truth[side]), (side, drift[key], truth[side])
    assert drift["lora_mean"] < 0.5 * drift["baseline_mean"] and drift["p_value"] < 0.05
