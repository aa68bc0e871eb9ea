"""Animated WebP and PNG, written the way ComfyUI's SaveAnimatedWEBP and SaveAnimatedPNG write
them, are read as videos: every frame, the clip's frame rate, held frames spread back out."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from circle_rotate.cli.main import main
from circle_rotate.eval.frames import load_clip
from circle_rotate.eval.runner import evaluate, find_videos
from circle_rotate.kernel.animated_image import frame_rate, read_animation, timing_of
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.video_io import is_frame_folder, probe_video
from circle_rotate.selfcheck.synthetic.turntable import DriftPath, TurntableSpec, drift_value, mask_stats, render_frames

FPS = 16.0
PROMPT = {"3": {"class_type": "KSampler", "inputs": {"seed": 42}}}


def save_animated_webp(path, frames, *, fps=FPS, lossless=True):
    """As ComfyUI's SaveAnimatedWEBP saves (comfy_extras/nodes_images.py): Pillow, the prompt in
    the EXIF, ``duration=int(1000.0 / fps)``, quality 80, method 4 ("default")."""
    images = [Image.fromarray(f) for f in frames]
    exif = images[0].getexif()
    exif[0x0110] = "prompt:{}".format(json.dumps(PROMPT))
    images[0].save(path, save_all=True, duration=int(1000.0 / fps), append_images=images[1:], exif=exif,
                   lossless=lossless, quality=80, method=4)


def save_animated_png(path, frames, *, fps=FPS):
    """As ComfyUI's SaveAnimatedPNG saves: Pillow, a ``prompt`` text chunk, compress level 4."""
    images = [Image.fromarray(f) for f in frames]
    info = PngImagePlugin.PngInfo()
    info.add(b"comf", b"prompt\0" + json.dumps(PROMPT).encode("latin-1"), after_idat=True)
    images[0].save(path, pnginfo=info, compress_level=4, save_all=True, duration=int(1000.0 / fps),
                   append_images=images[1:])


@pytest.fixture(scope="module")
def orbit():
    """A rendered orbit with a known subject path: its exact frames and true drift."""
    spec = TurntableSpec(name="orbit", width=224, height=160, frames=25, subject="box",
                         drift=DriftPath("linear", 12.0), seed=71)
    rendered = list(render_frames(spec))
    truth, _ = drift_value(np.array([mask_stats(r.subject_mask)[0] for r in rendered]))
    return [r.image for r in rendered], truth


@pytest.fixture(scope="module")
def outputs(orbit, tmp_path_factory):
    """A ComfyUI output folder: one clip saved by each node, a still image beside them, and the
    same frames as a folder of PNG frames elsewhere."""
    frames, _ = orbit
    out = tmp_path_factory.mktemp("output")
    save_animated_webp(out / "ComfyUI_00001_.webp", frames)
    save_animated_png(out / "ComfyUI_00002_.png", frames)
    Image.fromarray(frames[0]).save(out / "ComfyUI_00003_.png")
    still_frames = tmp_path_factory.mktemp("frames") / "orbit"
    still_frames.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(still_frames / f"frame_{i:04d}.png")
    return out, still_frames


@pytest.mark.parametrize("name", ["ComfyUI_00001_.webp", "ComfyUI_00002_.png"])
def test_every_frame_and_the_rate_come_back(outputs, orbit, name):
    frames, _ = orbit
    clip = load_clip(outputs[0] / name)
    assert clip.count == len(frames) and clip.fps == FPS  # 62 ms a frame is 16 fps, not 16.13
    assert np.array_equal(clip.frames, np.stack(frames))  # lossless: the very pixels rendered
    info = probe_video(outputs[0] / name)
    assert (info.width, info.height, info.frame_count, info.fps) == (224, 160, len(frames), FPS)


def test_a_folder_of_animations_is_a_folder_of_videos(outputs):
    out, still_frames = outputs
    assert not is_frame_folder(out) and is_frame_folder(still_frames)
    # the still image beside the clips is not a frame of anything and is passed over
    assert [p.name for p in find_videos([out])] == ["ComfyUI_00001_.webp", "ComfyUI_00002_.png"]


def test_eval_reads_the_same_drift_as_from_the_frames_themselves(outputs, orbit, tmp_path):
    out, still_frames = outputs
    _, truth = orbit
    rows = {r["video"]: r for r in evaluate([out, still_frames], metrics=["subject_drift"], jobs=2).rows}
    assert set(rows) == {"ComfyUI_00001_.webp", "ComfyUI_00002_.png", "orbit"}
    from_frames = rows["orbit"]["drift"]
    assert rows["ComfyUI_00001_.webp"]["drift"] == from_frames == rows["ComfyUI_00002_.png"]["drift"]
    assert abs(from_frames - truth) < 3.0, (from_frames, truth)
    # and through the command line, as a user runs it on ComfyUI's output folder
    assert main(["-q", "eval", str(out), "--metrics", "subject_drift", "-o", str(tmp_path / "r.json")]) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert [r["video"] for r in data["videos"]] == ["ComfyUI_00001_.webp", "ComfyUI_00002_.png"]


@pytest.mark.parametrize("kind", ["webp", "apng", "lossy webp"])
def test_held_frames_are_spread_back_out(orbit, tmp_path, kind):
    frames, _ = orbit
    held = [frames[5]] * 4
    if kind == "lossy webp":  # a still shot: sensor-noise-sized changes fall inside libwebp's tolerance
        rng = np.random.default_rng(3)
        held = [np.clip(frames[5] + rng.integers(-1, 2, frames[5].shape), 0, 255).astype(np.uint8) for _ in held]
    # frames 5-8 one picture (a held pose): each encoder stores it once, shown 4 times as long
    made = frames[:5] + held + frames[9:20]
    path = tmp_path / ("held.png" if kind == "apng" else "held.webp")
    if kind == "apng":
        save_animated_png(path, made)
    else:
        save_animated_webp(path, made, lossless=kind == "webp")
    with Image.open(path) as im:
        assert im.n_frames == len(made) - 3  # the premise: the file stores fewer frames than were made
    animation = read_animation(path)
    assert len(animation.frames) == len(made) and animation.fps == FPS
    assert animation.timing.repeats[5] == 4
    if kind != "lossy webp":
        assert all(np.array_equal(a, b) for a, b in zip(animation.frames, made))
    else:  # lossy: the frames are close to what was made, the held ones one picture
        assert all(np.abs(a.astype(int) - b).mean() < 8 for a, b in zip(animation.frames, made))
        assert all(animation.frames[i] is animation.frames[5] for i in range(6, 9))


def test_a_lossy_webp_folded_to_one_frame_says_how_to_save_it(orbit, tmp_path):
    frames, _ = orbit
    rng = np.random.default_rng(4)
    still_shot = [np.clip(frames[0] + rng.integers(-1, 2, frames[0].shape), 0, 255).astype(np.uint8)
                  for _ in range(12)]
    save_animated_webp(tmp_path / "still_shot.webp", still_shot, lossless=False)
    with pytest.raises(UserError, match="still image .* save it lossless"):
        load_clip(tmp_path / "still_shot.webp")


def test_frame_rates_read_back_from_whole_milliseconds():
    assert [frame_rate(p) for p in (62, 41, 33, 40, 66, 100)] == [16.0, 24.0, 30.0, 25.0, 15.0, 10.0]
    assert frame_rate(62.5) == 16.0  # a fractional period is exact already
    assert frame_rate(7) == pytest.approx(1000 / 7)  # 126 to 142 fps all truncate to 7 ms: no whole rate is sure
    t = timing_of([62, 124, 62, 0])
    assert t.period == 62 and t.repeats == [1, 2, 1, 1] and t.frame_count == 5
    assert timing_of([0, 0]).fps == 0.0 and timing_of([0, 0]).repeats == [1, 1]


def test_bad_animations_get_one_line_naming_the_file(outputs, tmp_path, capsys):
    out, _ = outputs
    whole = (out / "ComfyUI_00001_.webp").read_bytes()
    (tmp_path / "cut.webp").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "cut.png").write_bytes((out / "ComfyUI_00002_.png").read_bytes()[:20000])
    for name in ("cut.webp", "cut.png"):
        with pytest.raises(UserError) as err:
            load_clip(tmp_path / name)
        assert name in str(err.value) and "corrupt or truncated" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="still image .one frame., not a video"):
        load_clip(out / "ComfyUI_00003_.png")
    # the command line: each is an error row, the exit status says so, and no traceback
    assert main(["-q", "eval", str(tmp_path / "cut.webp"), str(out / "ComfyUI_00003_.png"),
                 "--metrics", "motion_magnitude", "-o", str(tmp_path / "r.json")]) == 1
    err = capsys.readouterr().err
    assert "cut.webp" in err and "Traceback" not in err
