"""subject_drift_sam against the reference (Jklaity/Circle-Rotate's ``metrics/subject_drift.py``).

``data/sam_reference.json`` holds what the reference's own code did on the stand-in clip of
:mod:`sam_fakes` (recorded by ``tests/sam_reference.py``, which imports the reference file
from a checkout): the frames it sampled, every array it handed the models, and its results,
once with a stand-in YOLO and SAM and once with the stand-in YOLO and a tiny random-weight
SAM run by segment-anything's ``SamPredictor``, and the detections of a random-weight YOLOv8n
(``data/sam_reference_yolov8n.npz``) replayed. Ours must hand the models the same arrays and
get the same numbers. ultralytics cannot be installed next to the CPU torch (it requires
torchvision), so here YOLO is a stand-in or a replay of the real one's output; its call
interface is what our code relies on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from circle_rotate.eval.context import EvalContext
from circle_rotate.eval.drift import drift_of
from circle_rotate.eval.frames import load_clip
from circle_rotate.eval.registry import resolve
from circle_rotate.eval.sam_drift import mask_centroid, pick_box, sam_drift
from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec, write_turntable

from sam_fakes import TINY_SAM_FRAMES, FakePredictor, FakeYolo, ReplayYolo, clip_frames, digest, write_frame_folder

REFERENCE = json.loads((Path(__file__).parent / "data" / "sam_reference.json").read_text())


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sam") / "clip"
    write_frame_folder(clip_frames(), folder)
    return EvalContext(load_clip(folder))


def test_the_stand_in_clip_is_the_recorded_one(ctx):
    assert digest(clip_frames()) == REFERENCE["clip"], "sam_fakes changed: rerun tests/sam_reference.py"
    # Our decoding and sampling give the very frames the reference's extract_frames gave.
    assert [digest(ctx.clip.frames[i]) for i in ctx.clip.sampled()] == REFERENCE["sampled"]


def _compare(ours, recorded, detector, segmenter, *, rel):
    assert detector.calls == recorded["detector"]  # the same 16 RGB arrays, in order
    assert segmenter.calls == recorded["segmenter"]  # the same images and float32 boxes
    want = recorded["result"]
    assert ours.drift == pytest.approx(want["drift"], rel=rel)
    assert ours.global_flow == pytest.approx(want["global_flow"], rel=1e-5)
    assert ours.subject_flow == pytest.approx(want["subject_flow"], rel=1e-5)


def test_pre_and_post_processing_match_the_reference_with_stand_in_models(ctx):
    yolo, sam = FakeYolo(), FakePredictor()
    ours = sam_drift(ctx.clip.frames, ctx.clip.sampled(), yolo, sam, ctx.flows.get)
    _compare(ours, REFERENCE["fake"], yolo, sam, rel=1e-12)
    # Frames 3, 8, 13 (largest box at confidence 0.2) and 19 (nothing) have no subject.
    assert ours.frames_with_subject == 12
    assert [i for i, c in zip(ctx.clip.sampled(), ours.centroids) if c is None] == [3, 8, 13, 19]


@pytest.mark.slow
def test_tiny_random_weight_sam_matches_the_reference(ctx):
    from sam_reference import Recording
    from tiny_sam import tiny_sam, torchvision_shim

    with torchvision_shim():
        sa = pytest.importorskip("segment_anything", reason="segment-anything (test extra) is not installed")
        SamPredictor = sa.SamPredictor
        yolo, sam = FakeYolo(), Recording(SamPredictor(tiny_sam(0)))
        ours = sam_drift(ctx.clip.frames, ctx.clip.sampled()[:TINY_SAM_FRAMES], yolo, sam, ctx.flows.get)
    # Same inputs exactly; the same weights, but CPU kernels may round the logits differently
    # from the machine that recorded them, which can flip a few mask pixels.
    _compare(ours, REFERENCE["tiny_sam"], yolo, sam, rel=1e-3)


def test_real_yolov8n_detections_are_chosen_from_as_the_reference_does(ctx):
    """A random-weight YOLOv8n's own output (300 person boxes per frame at near-equal confidence,
    recorded where ultralytics ran): the same box per frame goes to SAM, the same drift comes out."""
    yolo, sam = ReplayYolo(Path(__file__).parent / "data" / "sam_reference_yolov8n.npz"), FakePredictor()
    ours = sam_drift(ctx.clip.frames, ctx.clip.sampled(), yolo, sam, ctx.flows.get)
    _compare(ours, REFERENCE["yolov8n"], yolo, sam, rel=1e-12)
    assert ours.frames_with_subject == 16


def _det(*rows):
    a = np.array(rows, np.float32).reshape(-1, 6)
    return torch.from_numpy(a[:, :4]), torch.from_numpy(a[:, 4]), torch.from_numpy(a[:, 5])


def test_pick_box_rules_on_constructed_detections():
    # A vehicle beats a larger, more confident person; the most confident vehicle wins.
    box = pick_box(*_det([0, 0, 100, 100, 0, 0.9], [1, 1, 5, 5, 2, 0.3], [2, 2, 8, 8, 7, 0.6]))
    assert box.dtype == np.float32 and box.tolist() == [2, 2, 8, 8]
    # Equal confidence: the first; a bus exactly at 0.25 is not a vehicle detection.
    assert pick_box(*_det([1, 1, 2, 2, 5, 0.4], [3, 3, 9, 9, 5, 0.4])).tolist() == [1, 1, 2, 2]
    assert pick_box(*_det([0, 0, 5, 5, 5, 0.25], [0, 0, 9, 9, 0, 0.5])).tolist() == [0, 0, 9, 9]
    # No vehicle: the largest box, if its confidence is above 0.2 -- compared in float32, as torch
    # does (float32(0.2) is a little above 0.2 in float64, where it would pass).
    assert pick_box(*_det([0, 0, 9, 9, 16, 0.2], [0, 0, 2, 2, 0, 0.9])) is None
    assert pick_box(*_det([0, 0, 9, 9, 16, 0.2001], [0, 0, 2, 2, 0, 0.9])).tolist() == [0, 0, 9, 9]
    assert pick_box(np.zeros((0, 4)), np.zeros(0), np.zeros(0)) is None


def test_mask_centroid_and_drift_are_the_defaults():
    mask = np.zeros((5, 7), bool)
    mask[1:3, 2:6] = True
    assert mask_centroid(mask) == (3.5, 1.5) and mask_centroid(np.zeros((4, 4), bool)) is None
    pts = np.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
    assert drift_of(pts) == pytest.approx(np.sqrt(pts[:, 0].std() ** 2 + pts[:, 1].std() ** 2))


def test_our_video_decoding_gives_the_reference_decoders_pixels(tmp_path):
    """The reference reads frames with cv2.VideoCapture; ours (PyAV) must give the same pixels."""
    video = write_turntable(TurntableSpec(name="v", width=192, height=112, frames=19, subject="car"), tmp_path).video
    cap = cv2.VideoCapture(str(video))
    theirs = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        theirs.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    clip = load_clip(video)
    assert np.array_equal(clip.frames, np.stack(theirs))
    assert clip.sampled().tolist() == np.linspace(0, 18, 16, dtype=int).tolist()


def test_the_metric_runs_with_weights_from_the_hub_cache(ctx, tmp_path, monkeypatch):
    """End to end through the registry: weights found in the Hugging Face cache (laid by hand),
    models built by load_models (stand-ins here), values and per-frame series in the row."""
    import huggingface_hub.constants

    from circle_rotate.eval import sam_drift as module
    from circle_rotate.musubi.downloads import FILES
    from hub_cache import populate

    cache = tmp_path / "hub"
    for f in FILES["eval-weights"]:
        populate(cache, f.repo_id, f.repo_type, {f.filename: b"weights"})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(module, "_need", lambda *a: None)  # ultralytics is not installable here
    built = []
    monkeypatch.setattr(module, "load_models", lambda y, s, d: built.append((y, s)) or (FakeYolo(), FakePredictor()))
    fresh = EvalContext(ctx.clip)
    res = resolve(["subject_drift_sam"])[0].compute(fresh)
    assert res.skipped is None, res.skipped
    assert built[0][0].endswith("yolov8n.pt") and built[0][1].endswith("sam_vit_b_01ec64.pth")
    assert res.values["drift_sam"] == pytest.approx(REFERENCE["fake"]["result"]["drift"], rel=1e-12)
    assert res.values["sam_frames"] == 12 and len(res.series["boxes"]) == 16 and res.series["boxes"][3] is None
    # Without the files, it is skipped and says how to get them.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    skipped = resolve(["subject_drift_sam"])[0].compute(EvalContext(ctx.clip)).skipped
    assert "circle-rotate download eval-weights" in skipped


def _download(*args, cache: Path, cwd: Path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(cache.parent / "hf_home")}
    return subprocess.run([sys.executable, "-m", "circle_rotate", "download", *args, "--cache-dir", str(cache)],
                          capture_output=True, text=True, env=env, cwd=cwd)


def test_download_eval_weights_offline_shows_sizes_and_prints_the_variables(tmp_path):
    from circle_rotate.musubi.downloads import FILES
    from hub_cache import populate

    cache = tmp_path / "hub"
    dry = _download("eval-weights", "--dry-run", cache=cache, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    # Offline and not cached: the documented sizes, marked as estimates, before anything is fetched.
    assert dry.stdout.count("to fetch") == 2 and "~" in dry.stdout and "0.38 GB" in dry.stdout
    for f in FILES["eval-weights"]:
        populate(cache, f.repo_id, f.repo_type, {f.filename: b"w" * 1000})
    out = _download("eval-weights", "-o", str(tmp_path / "weights"), cache=cache, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("cached") == 2
    exports = dict(line[len("export "):].split("=", 1) for line in out.stdout.splitlines() if line.startswith("export "))
    assert set(exports) == {"CIRCLE_ROTATE_YOLO_WEIGHTS", "CIRCLE_ROTATE_SAM_WEIGHTS"}
    assert exports["CIRCLE_ROTATE_SAM_WEIGHTS"] == str(tmp_path / "weights" / "sam_vit_b_01ec64.pth")
    assert Path(exports["CIRCLE_ROTATE_YOLO_WEIGHTS"]).read_bytes() == b"w" * 1000
