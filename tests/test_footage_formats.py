"""Footage as cameras and downloads leave it: interlaced camcorder video, raw Raspberry Pi streams,
linked folders, grey letterbox bars, variable frame rates, cut-off files, a killed parallel run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace as dataclasses_replace
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from circle_rotate.cli.main import main
from circle_rotate.cli.prepare import _print_passed_over
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.video_io import (decode_all, iter_decoded_frames, iter_frames, probe_video, read_video,
                                          shown_notes, spread_frames, walk_visible, write_video)
from circle_rotate.media.borders import letterbox
from circle_rotate.prepare.manifest import MANIFEST_NAME, read_manifest
from circle_rotate.prepare.run import scan_raw
from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec, write_turntable


def _ffmpeg() -> str:
    return pytest.importorskip("imageio_ffmpeg").get_ffmpeg_exe()


def _prepare(raw: Path, out: Path, *extra: str) -> list:
    main(["-q", "prepare", str(raw), "-o", str(out), "--frames", "9", "--fps", "16", "--jobs", "1", *extra])
    return read_manifest(out / MANIFEST_NAME)


def _comb(frames: np.ndarray) -> float:
    """Row combing: how far each row strays from the mean of the rows above and below (grey levels)."""
    grey = frames.astype(np.float32).mean(axis=-1)
    return float(np.abs(grey[:, 1:-1] - (grey[:, :-2] + grey[:, 2:]) / 2).mean())


def _stripes(count: int, speed: float, width: int = 320, height: int = 192):
    """Vertical stripes sliding sideways: no row differs from its neighbours unless fields interleave."""
    x = np.arange(width, dtype=np.float32)
    for i in range(count):
        row = 128 + 100 * np.sin((x - speed * i) / 5.0) * np.sin((x + 2 * speed * i) / 23.0)
        frame = np.repeat(row[None, :], height, axis=0)
        yield np.repeat(frame[:, :, None], 3, axis=2).clip(0, 255).astype(np.uint8)


def _interlaced_camera(tmp_path: Path, dest: Path) -> Path:
    """50 fps stripes woven into 25 fps interlaced frames (top field first), as a 1080i camcorder records."""
    write_video(tmp_path / "p50.mp4", _stripes(100, 6.0), fps=50, crf=12, preset="veryfast")
    subprocess.run([_ffmpeg(), "-v", "error", "-i", str(tmp_path / "p50.mp4"), "-vf",
                    "tinterlace=interleave_top,fieldorder=tff", "-c:v", "libx264", "-flags", "+ilme+ildct",
                    "-x264opts", "tff=1", "-crf", "12", "-pix_fmt", "yuv420p", str(dest)], check=True)
    return dest


def test_an_interlaced_source_is_deinterlaced_and_noted(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    _interlaced_camera(tmp_path, raw / "cam50i.mp4")
    write_video(raw / "p25.mp4", list(_stripes(100, 6.0))[::2], fps=25, crf=12, preset="veryfast")
    info = probe_video(raw / "cam50i.mp4")
    assert info.interlaced and not probe_video(raw / "p25.mp4").interlaced
    assert "interlaced: deinterlaced (bwdif)" in shown_notes(info)
    records = _prepare(raw, tmp_path / "out", "--size-mode", "keep", "--qc", "off", "--keep-still")
    heads = {r["source"]: r for r in records if r["type"] == "source"}
    assert "interlaced: deinterlaced (bwdif)" in heads["cam50i.mp4"]["notes"]
    assert not any("interlaced" in n for n in heads["p25.mp4"]["notes"])
    clip = {r["source"]: read_video(tmp_path / "out" / r["clip"]) for r in records
            if r["type"] == "clip" and r["clip"]}
    interlaced, progressive = _comb(clip["cam50i.mp4"]), _comb(clip["p25.mp4"])
    # before: the fields, 6 px apart, combed it: 50.6 grey levels decoded (0.05 deinterlaced, 0.001 progressive)
    assert interlaced < 2.0 and progressive < 2.0, (interlaced, progressive)
    assert len(list(iter_decoded_frames(raw / "cam50i.mp4"))) == 50  # one frame per frame: the rate stays


def test_deinterlacing_takes_the_frames_as_they_are_decoded(tmp_path, monkeypatch):
    import circle_rotate.kernel.video_io as video_io

    video = _interlaced_camera(tmp_path, tmp_path / "cam50i.mp4")
    real, decoded = video_io._readable, []

    def counted(p, frames):
        for frame in real(p, frames):
            decoded.append(frame)
            yield frame

    monkeypatch.setattr(video_io, "_readable", counted)
    first = next(iter_decoded_frames(video))
    assert first.index == 0
    # the comb check's frames and the one bwdif holds back, not the whole video held in memory first
    assert len(decoded) <= video_io.COMB_CHECK_FRAMES + 2, len(decoded)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def test_progressive_footage_coded_interlaced_is_left_alone_and_true_interlace_still_deinterlaced(tmp_path):
    ff = _ffmpeg()
    spec = dict(width=320, height=192, frames=60, subject="car")
    write_turntable(TurntableSpec(fps=25.0, total_angle_deg=60, name="prog", **spec), tmp_path)
    write_turntable(TurntableSpec(fps=50.0, total_angle_deg=30, name="p50", **spec), tmp_path)  # a slow turntable
    run = lambda *a: subprocess.run([ff, "-v", "error", "-y", *a], check=True)  # noqa: E731
    # x264 -flags +ildct (MBAFF) and MPEG-2 field coding flag progressive pictures interlaced
    run("-i", str(tmp_path / "prog.mp4"), "-c:v", "libx264", "-flags", "+ildct", "-crf", "14", "-pix_fmt", "yuv420p",
        str(tmp_path / "ildct.mp4"))
    run("-i", str(tmp_path / "prog.mp4"), "-c:v", "mpeg2video", "-flags", "+ilme+ildct", "-q:v", "2",
        str(tmp_path / "field_coded.mpg"))
    run("-i", str(tmp_path / "p50.mp4"), "-vf", "tinterlace=interleave_top,fieldorder=tff", "-c:v", "mpeg2video",
        "-flags", "+ilme+ildct", "-q:v", "2", str(tmp_path / "camcorder.mpg"))
    for name in ("ildct.mp4", "field_coded.mpg"):
        info = probe_video(tmp_path / name)
        assert not info.interlaced and not shown_notes(info), name  # before: "interlaced: deinterlaced (bwdif)"
        with av.open(str(tmp_path / name)) as c:
            plain = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        ours = list(iter_frames(tmp_path / name))
        assert len(ours) == len(plain)
        # before: bwdif blurred every other row (x264 +ildct: 29.5 dB where the plain decode is 39.5)
        assert min(_psnr(a, b) for a, b in zip(ours, plain)) > 60, name
    info = probe_video(tmp_path / "camcorder.mpg")
    assert info.interlaced and "interlaced: deinterlaced (bwdif)" in shown_notes(info)
    assert _comb(read_video(tmp_path / "camcorder.mpg")) < 0.5 * _comb(np.stack(
        [f.to_ndarray(format="rgb24") for f in av.open(str(tmp_path / "camcorder.mpg")).decode(video=0)]))


def test_a_raw_stream_without_a_rate_in_its_header_says_so(tmp_path):
    write_video(tmp_path / "take.mp4", _numbered_frames(30), fps=30)
    # OpenH264, as some cameras' encoders, writes no timing into its SPS
    subprocess.run([_ffmpeg(), "-v", "error", "-i", str(tmp_path / "take.mp4"), "-c:v", "libopenh264", "-f", "h264",
                    str(tmp_path / "cam.h264")], check=True)
    info = probe_video(tmp_path / "cam.h264")
    assert info.fps == 25 and info.rate_guessed
    # before: "raw stream: rate 25 fps from its header; ..."
    assert shown_notes(info) == ["no frame rate in the stream: read at FFmpeg's default 25 fps; if the camera "
                                 "recorded another, remux with `ffmpeg -framerate N -i IN -c copy OUT.mp4`"]


def _numbered_frames(count: int):
    """Frame i is grey level 10 + 4 i on its left half: a clip frame's level says which source frame it is."""
    for i in range(count):
        frame = np.full((96, 160, 3), 128, np.uint8)
        frame[:, :80] = 10 + 4 * i
        yield frame


def test_a_raw_h264_stream_is_found_and_read_at_its_header_rate(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    with av.open(str(raw / "picam.h264"), "w", format="h264") as out:  # what raspivid and rpicam-vid write
        stream = out.add_stream("libx264", rate=30, options={"preset": "veryfast", "crf": "10"})
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        for rgb in _numbered_frames(50):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode())
    assert scan_raw(raw, exclude=tmp_path / "out").sources == (raw / "picam.h264",)  # before: passed over
    info = probe_video(raw / "picam.h264")
    assert info.fps == 30 and info.frame_count == 50  # before: 25 fps, 2.0 s of a 1.67 s take
    assert "raw stream: rate 30 fps from its header; remux with `ffmpeg -framerate 30 -i IN -c copy OUT.mp4` " \
           "if wrong" in shown_notes(info)
    times = [f.time for f in iter_decoded_frames(raw / "picam.h264")]
    assert times[-1] == pytest.approx(49 / 30)
    records = _prepare(raw, tmp_path / "out", "--resolution", "160x96", "--qc", "off", "--keep-still")
    clip = next(r for r in records if r["type"] == "clip")
    frames = read_video(tmp_path / "out" / clip["clip"])
    source_frame = (frames[8, :, 10:70].mean() - 10) / 4  # clip frame 8 is 0.5 s in: source frame 15
    assert source_frame == pytest.approx(15, abs=1.0)  # before: 12.5, the take played 17% slow


def test_linked_folders_are_followed_once_and_dangling_links_named(tmp_path, capsys):
    footage, raw = tmp_path / "drive" / "phone", tmp_path / "raw"
    footage.mkdir(parents=True)
    raw.mkdir()
    write_video(footage / "take.mp4", _numbered_frames(3), fps=30)
    (raw / "phone").symlink_to(footage)
    (footage / "loop").symlink_to(raw)  # a link to a folder above: walked once, no loop
    (raw / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    files, dangling = walk_visible(raw)
    assert files == [raw / "phone" / "take.mp4"] and dangling == [raw / "gone.mp4"]  # before: no files at all
    found = scan_raw(raw, exclude=tmp_path / "out")
    assert found.sources == (raw / "phone" / "take.mp4",) and found.not_video == (raw / "gone.mp4",)
    _print_passed_over(raw, ("gone.mp4",))
    assert f"passed over 1 link(s) that lead nowhere (first: gone.mp4 -> {tmp_path / 'nowhere.mp4'})" in \
        capsys.readouterr().out


def test_a_video_reached_by_two_names_is_one_source(tmp_path, capsys):
    raw, elsewhere = tmp_path / "raw", tmp_path / "drive"
    (raw / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    spec = TurntableSpec(width=160, height=96, frames=40, fps=24.0, total_angle_deg=40, subject="car")
    write_turntable(dataclasses_replace(spec, name="a"), raw)
    write_turntable(dataclasses_replace(spec, name="e", seed=5), elsewhere)
    (raw / "sub" / "a_again.mp4").symlink_to("../a.mp4")  # a file link
    (raw / "e.mp4").symlink_to(elsewhere / "e.mp4")  # a file link and a folder link reaching one file
    (raw / "linked").symlink_to(elsewhere)
    for extra in [*raw.glob("*.npz"), *raw.glob("*.json"), *elsewhere.glob("*.npz"), *elsewhere.glob("*.json")]:
        extra.unlink()
    found = scan_raw(raw, exclude=tmp_path / "out")
    assert found.sources == (raw / "a.mp4", raw / "e.mp4")  # before: four sources, two of them twice
    assert found.linked_again == (raw / "linked" / "e.mp4", raw / "sub" / "a_again.mp4")
    records = _prepare(raw, tmp_path / "out", "--resolution", "160x96", "--qc", "off")
    assert sorted(r["source"] for r in records if r["type"] == "source") == ["a.mp4", "e.mp4"]
    assert "passed over 2 link(s) to a video already listed (first: linked/e.mp4)" in capsys.readouterr().out


def _letterboxed(level: int, count: int = 24):
    """A bright picture between 44-row bars of grey ``level`` (an export's padding), bright right up
    to its edges (a sky, a floor), where the encoder rings."""
    rng = np.random.default_rng(3)
    x = np.arange(640)
    for i in range(count):
        frame = np.full((360, 640, 3), level, np.uint8)
        picture = np.clip(180 + 75 * np.sin((x[None, :] + 7 * i) / 9.0) + rng.normal(0, 20, (272, 640)), 0, 255)
        picture[:10], picture[-10:] = 255, 255
        frame[44:316] = picture[:, :, None].astype(np.uint8)
        yield frame


@pytest.mark.parametrize("level,found", [(0, True), (20, True), (28, False), (30, False)])
def test_grey_bars_ringing_at_the_picture_edge_are_bars_and_grey_backdrops_are_not(tmp_path, level, found):
    path = tmp_path / f"grey{level}.mp4"
    write_video(path, _letterboxed(level), fps=24, preset="veryfast", crf=28)  # a phone's or a site's encode
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in spread_frames(path, 12)])
    bars = letterbox(grey)
    if found:  # before: at level 20 only the top bar (the bottom's ringing rows read 24-26, over 24)
        assert 42 <= bars.top <= 46 and 42 <= bars.bottom <= 46, bars
    else:
        assert not bars, bars


def test_a_variable_frame_rate_source_is_said_to_have_gaps(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    spec = TurntableSpec(width=160, height=96, frames=90, fps=30.0, total_angle_deg=60, subject="car", name="vfr")
    made = write_turntable(spec, tmp_path / "smooth")
    kept = [i for i in range(90) if i % 10 not in (4, 5, 6)]  # a phone dropping frames in low light: 100 ms gaps
    with av.open(str(made.video)) as src, av.open(str(raw / "phone_vfr.mp4"), "w") as dst:
        stream = dst.add_stream("libx264", rate=30, options={"preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 30)
        for i, frame in enumerate(src.decode(video=0)):
            if i in kept:
                frame = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, 30)
                dst.mux(stream.encode(frame))
        dst.mux(stream.encode())
    records = _prepare(raw, tmp_path / "out", "--resolution", "160x96", "--qc", "strict")
    rejected = [r for r in records if r["type"] == "clip" and r["verdict"] == "reject"]
    # before: "... repeat the previous one (source slower than 16 fps)", of a source averaging 21 fps
    assert rejected and "(gaps over 1/16 s in a variable-frame-rate source)" in rejected[0]["reasons"][0]
    assert f"rejected by QC (first: phone_vfr.mp4 at {rejected[0]['start_time']:g} s: {rejected[0]['reasons'][0]}" \
        in capsys.readouterr().out  # before: only "N rejected by QC"


def test_a_steady_slow_source_keeps_the_slower_wording(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_turntable(TurntableSpec(width=160, height=96, frames=24, fps=12.0, total_angle_deg=30, name="slow"), raw)
    for extra in raw.iterdir():
        if extra.suffix != ".mp4":
            extra.unlink()
    clips = [r for r in _prepare(raw, tmp_path / "out", "--resolution", "160x96", "--qc", "strict")
             if r["type"] == "clip"]
    assert clips and any("(source slower than 16 fps)" in x for x in clips[0]["reasons"])


def test_a_faststart_mp4_cut_off_is_read_up_to_the_cut_and_noted(tmp_path):
    with av.open(str(tmp_path / "fast.mp4"), "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream("libx264", rate=24, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        for rgb in _stripes(48, 3.0, 160, 96):
            dst.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        dst.mux(stream.encode())
    data = (tmp_path / "fast.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 6 // 10])
    frames, fps, notes = decode_all(tmp_path / "cut.mp4")  # before: "decoding failed at frame N"
    assert 2 <= len(frames) < 48 and fps == 24
    assert any("cut short" in n for n in notes), notes


def test_a_file_that_is_no_video_is_named_first_without_ffmpegs_errno(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("a caption, not a video\n")
    with pytest.raises(UserError) as err:
        probe_video(path)
    assert str(err.value).startswith(f"{path}: cannot be opened as a video (Invalid data found")  # before: no path
    assert "Errno" not in str(err.value)


def test_rotation_is_worded_with_its_direction_and_ffprobes_angle(tmp_path):
    write_video(tmp_path / "portrait.mp4", _numbered_frames(3), fps=30, rotation=90)
    notes = shown_notes(probe_video(tmp_path / "portrait.mp4"))
    assert notes == ["shown turned 90 deg clockwise (display matrix -90) as its container says (96x160)"]


def _children(pid: int) -> set:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_workers_end_with_a_parent_killed_outright(tmp_path):
    raw = tmp_path / "raw"
    for i in range(6):
        write_turntable(TurntableSpec(width=320, height=192, frames=150, fps=30.0, total_angle_deg=90,
                                      name=f"take{i}", seed=i), raw)
    exe = Path(sys.executable).with_name("circle-rotate")
    proc = subprocess.Popen([str(exe), "prepare", str(raw), "-o", str(tmp_path / "out"), "--frames", "17", "--jobs",
                             "2", "--resolution", "320x192"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        workers: set = set()
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            workers = _children(proc.pid)
        assert len(workers) == 2, "the run ended before its workers could be seen"
        time.sleep(1.0)  # working on their sources
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(2.0)
    survivors = [pid for pid in workers if _alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors  # before: alive for 5 s more, writing clips no manifest would list
