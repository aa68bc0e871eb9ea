"""A video is read as a player shows it: the display matrix in any container (turns and
mirrors), non-square pixels, the stream a player picks among several, a trim kept as an edit
list. FFmpeg's command line (imageio-ffmpeg's build, a test extra) is the reference: it applies
all of these by default."""

from __future__ import annotations

import json
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from circle_rotate.kernel.display import NotQuarterTurn, orientation_from_matrix
from circle_rotate.kernel.video_io import probe_video, read_video, write_video
from circle_rotate.prepare.manifest import MANIFEST_NAME, read_manifest
from circle_rotate.prepare.options import PrepareOptions
from circle_rotate.prepare.run import prepare_dataset
from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec, write_turntable

W, H = 96, 64
ONE = 1 << 16


def _ffmpeg() -> str:
    return pytest.importorskip("imageio_ffmpeg", reason="imageio-ffmpeg (the test extra) runs FFmpeg here").get_ffmpeg_exe()


def _ff(*args) -> None:
    subprocess.run([_ffmpeg(), "-v", "error", "-y", *map(str, args)], check=True)


def _ffmpeg_frames(path: Path) -> np.ndarray:
    """What FFmpeg shows: its default autorotate, and the pixel aspect scaled out (square pixels)."""
    out = subprocess.run([_ffmpeg(), "-v", "error", "-i", str(path), "-vf", "scale=iw*sar:ih,setsar=1",
                          "-pix_fmt", "rgb24", "-f", "rawvideo", "-"], check=True, capture_output=True).stdout
    probe = subprocess.run([_ffmpeg(), "-v", "error", "-i", str(path), "-vf", "scale=iw*sar:ih,setsar=1",
                            "-frames:v", "1", "-f", "image2pipe", "-c:v", "ppm", "-"], check=True,
                           capture_output=True).stdout
    w, h = map(int, probe.split(b"\n")[1].split())
    return np.frombuffer(out, np.uint8).reshape(-1, h, w, 3)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A picture with no symmetry (a bright corner, a ramp, a bar), so every turn and mirror differs."""
    y, x = np.mgrid[0:H, 0:W]
    frames = []
    for i in range(5):
        f = np.zeros((H, W, 3), np.uint8)
        f[..., 0] = (x * 255 // W).astype(np.uint8)
        f[..., 1] = (y * 255 // H).astype(np.uint8)
        f[:16, :24] = (255, 255, 255)
        f[40:48, 10 + 4 * i:70 + 4 * i, 2] = 255
        frames.append(f)
    path = tmp_path_factory.mktemp("display") / "src.mp4"
    write_video(path, frames, fps=16, crf=0, preset="ultrafast")
    return path


def _quarter(rotation: int, mirror: bool) -> tuple:
    c, s = (round(np.cos(np.radians(rotation))), round(np.sin(np.radians(rotation))))
    a, b, cc, d = c, s, -s, c  # clockwise turn, x right and y down: (x, y) -> (a x + c y, b x + d y)
    if mirror:  # mirrored first: x -> -x
        a, b = -a, -b
    return (a * ONE, b * ONE, 0, cc * ONE, d * ONE, 0, 0, 0, 1 << 30)


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
@pytest.mark.parametrize("mirror", [False, True])
def test_every_quarter_turn_and_mirror_is_read_back(rotation, mirror):
    assert orientation_from_matrix(_quarter(rotation, mirror)) == (rotation, mirror)


def test_a_turn_by_another_angle_is_refused():
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    with pytest.raises(NotQuarterTurn, match="30 degrees"):
        orientation_from_matrix((round(c * ONE), round(s * ONE), 0, round(-s * ONE), round(c * ONE), 0, 0, 0, 1 << 30))
    with pytest.raises(NotQuarterTurn, match="degenerate"):
        orientation_from_matrix((0, 0, 0, 0, 0, 0, 0, 0, 1 << 30))


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".3gp"])
@pytest.mark.parametrize("turn, hflip", [(90, False), (180, False), (270, False), (0, True), (90, True)])
def test_turns_and_mirrors_read_as_ffmpeg_shows_them_in_any_container(source, tmp_path, suffix, turn, hflip):
    path = tmp_path / f"shown{suffix}"
    _ff("-display_rotation", turn, *(["-display_hflip"] if hflip else []), "-i", source, "-c", "copy", path)
    want = _ffmpeg_frames(path)
    got = read_video(path)
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 1.0
    info = probe_video(path)
    assert info.display_size == (want.shape[2], want.shape[1]) and info.mirror == hflip


def test_non_square_pixels_are_scaled_out(source, tmp_path):
    path = tmp_path / "anamorphic.mp4"
    _ff("-i", source, "-c", "copy", "-bsf:v", "h264_metadata=sample_aspect_ratio=4/3", path)
    info = probe_video(path)
    assert Fraction(info.pixel_aspect) == Fraction(4, 3) and info.display_size == (128, 64)
    want, got = _ffmpeg_frames(path), read_video(path)
    assert got.shape == want.shape == (5, 64, 128, 3)
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 2.0  # both bicubic, edge handling differs


def test_the_containers_aspect_wins_and_an_implausible_one_is_ignored(source, tmp_path):
    """``ffmpeg -c copy -aspect 16:9`` sets the container's aspect, not the bitstream's, and FFmpeg
    shows the container's; a pixel aspect of 100:1 is a broken header, not a 9600-pixel row."""
    wide = tmp_path / "wide.mp4"
    _ff("-i", source, "-c", "copy", "-aspect", "16:9", wide)
    info = probe_video(wide)
    assert Fraction(info.pixel_aspect) == Fraction(32, 27) and info.display_size == (114, 64)
    assert read_video(wide).shape == (5, 64, 114, 3)
    broken = tmp_path / "broken.mp4"
    _ff("-i", source, "-c", "copy", "-bsf:v", "h264_metadata=sample_aspect_ratio=100/1", broken)
    assert probe_video(broken).pixel_aspect == "1" and read_video(broken).shape[1:] == (H, W, 3)


def test_the_stream_a_player_shows_is_read_and_named(source, tmp_path):
    path = tmp_path / "two.mkv"
    _ff("-f", "lavfi", "-i", "testsrc2=s=48x32:d=1:r=16", "-i", source, "-map", "0:v", "-map", "1:v",
        "-c:v:0", "libx264", "-c:v:1", "copy", path)
    info = probe_video(path)
    assert (info.video_streams, info.stream, info.width) == (2, 1, W)
    assert np.array_equal(read_video(path), read_video(source))


def test_cover_art_is_not_the_video(source, tmp_path):
    cover = tmp_path / "cover.jpg"
    _ff("-f", "lavfi", "-i", "testsrc2=s=400x400", "-frames:v", "1", cover)
    path = tmp_path / "with_cover.mp4"
    _ff("-i", source, "-i", cover, "-map", "0", "-map", "1", "-c", "copy", "-disposition:v:1", "attached_pic", path)
    info = probe_video(path)
    assert (info.video_streams, info.stream, info.width) == (1, 0, W)


def test_a_trim_saved_without_re_encoding_is_whole(tmp_path):
    """``ffmpeg -ss 1 -c copy`` keeps the packets before the cut and an edit list that hides them:
    the packet count is not the length, and the clip starts at the cut."""
    files = write_turntable(TurntableSpec(name="orbit", width=160, height=96, frames=72, fps=24.0,
                                          total_angle_deg=60, subject="car", seed=11), tmp_path / "src")
    raw = tmp_path / "raw"
    raw.mkdir()
    _ff("-ss", "1", "-i", files.video, "-c", "copy", raw / "trim.mp4")
    info = probe_video(raw / "trim.mp4")
    assert info.duration == pytest.approx(2.0, abs=0.1) and info.frame_count > 2.5 * info.fps  # the hidden packets
    report = prepare_dataset(raw, tmp_path / "out", options=PrepareOptions(frames=17, fps=16.0, jobs=1,
                                                                            preset="ultrafast"))
    head = next(r for r in read_manifest(tmp_path / "out" / MANIFEST_NAME) if r["type"] == "source")
    assert report.ok and head["status"] == "ok", json.dumps(head)


_PROBE_MANY = """
import sys
from circle_rotate.kernel.video_io import probe_video
for _ in range(150):
    probe_video(sys.argv[1])
"""


def test_probing_an_hevc_file_over_and_over_never_hangs(tmp_path):
    """The display is read from the first decoded frame; leaving a threaded HEVC decoder there hung
    on close now and then (about one probe in 50 of this file)."""
    import sys

    path = tmp_path / "hevc.mp4"
    _ff("-f", "lavfi", "-i", "testsrc2=s=640x360:d=3:r=25", "-c:v", "libx265", "-x265-params", "log-level=error", path)
    subprocess.run([sys.executable, "-c", _PROBE_MANY, str(path)], check=True, timeout=240)
