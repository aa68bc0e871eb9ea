"""HDR phone footage (HLG, PQ) to SDR: the transfer functions at the standards' reference
points, and whole frames through a real 10-bit HEVC codec against FFmpeg's own zscale and
tonemap filters (imageio-ffmpeg's build has them), the command the README gives."""

from __future__ import annotations

import subprocess

import cv2
import numpy as np
import pytest

from circle_rotate.kernel.hdr import BT2020_TO_BT709, hlg_to_linear, pq_to_linear, tone_map
from circle_rotate.kernel.video_io import TO_SDR, iter_decoded_frames
from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec
from hdr_video import write_hevc

W, H = 256, 160


def test_transfer_functions_meet_the_standards_reference_points():
    # BT.2408: HLG reference white (signal 0.75) on a 1000 cd/m2 display is 203 cd/m2;
    # signal 0.5 is scene light 1/12, displayed at 1000 * (1/12) ** 1.2
    nits = hlg_to_linear(np.float32([0.0, 0.5, 0.75, 1.0])) * 100
    assert np.allclose(nits, [0.0, 1000 * (1 / 12) ** 1.2, 203.0, 1000.0], rtol=2e-3, atol=0.01)
    # ST 2084: 100 and 203 cd/m2 at their published code values, 10000 at full signal
    assert np.allclose(pq_to_linear(np.float32([0.0, 0.5081, 0.5807, 1.0])) * 100, [0, 100, 203, 10000], rtol=2e-3)
    # white stays white from BT.2020 to BT.709; the tone curve takes the peak to white and keeps hue
    assert np.allclose(BT2020_TO_BT709.sum(axis=1), 1.0, atol=1e-3)
    mapped = tone_map(np.float32([[10.0, 10.0, 10.0], [2.0, 1.0, 0.5], [0.0, 0.0, 0.0]]))
    assert np.allclose(mapped[0], 1.0, atol=1e-5) and np.allclose(mapped[1] / mapped[1, 0], [1.0, 0.5, 0.25], atol=1e-5)
    assert np.all(mapped[2] == 0) and 0 < mapped[1, 0] < 1


def _ffmpeg_sdr(path) -> np.ndarray:
    """The clip converted by the FFmpeg command the README gives, to RGB frames."""
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="imageio-ffmpeg (the test extra) runs FFmpeg here")
    chain = TO_SDR.split("-vf ")[1].split(" ")[0]
    assert chain.endswith(",format=yuv420p")
    chain = chain[: -len(",format=yuv420p")] + ",format=gbrp"  # RGB out, not the encoder's YUV
    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-vf", chain,
                          "-pix_fmt", "rgb24", "-f", "rawvideo", "-"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, H, W, 3)


def _flat(frame: np.ndarray) -> np.ndarray:
    """Pixels away from edges, where 4:2:0 chroma upsampling (zimg's and swscale's differ) has no say."""
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    edges = cv2.dilate(np.abs(cv2.Laplacian(grey, cv2.CV_32F)), np.ones((5, 5), np.uint8))
    return edges < 8


@pytest.mark.parametrize("transfer", ["arib-std-b67", "smpte2084"])
def test_hdr_frames_match_ffmpegs_conversion(tmp_path, transfer):
    path = tmp_path / "phone.mp4"
    write_hevc(path, TurntableSpec(name="hdr", width=W, height=H, frames=5, seed=5), transfer)
    want = _ffmpeg_sdr(path)
    frames = list(iter_decoded_frames(path))
    got = np.stack([f.to_rgb() for f in frames])
    plain = np.stack([f._frame.to_ndarray(format="rgb24") for f in frames])  # decoded as if SDR
    diff = np.abs(got.astype(int) - want.astype(int))
    flat = np.stack([_flat(f) for f in want])
    # measured: HLG 1.22 / 0.14 levels (all / flat), PQ 1.75 / 0.24; decoded as SDR: 10.9 and 35.6
    assert diff.mean() < 3.0 and diff.max(axis=-1)[flat].mean() < 1.0, (diff.mean(), diff.max(axis=-1)[flat].mean())
    assert np.abs(plain.astype(int) - want.astype(int)).mean() > 3 * diff.mean()
    # scaled on the way (as prepare asks): the same picture at the smaller size
    small = frames[0].to_rgb((W // 2, H // 2))
    assert small.shape == (H // 2, W // 2, 3)
    assert np.abs(small.astype(int) - cv2.resize(got[0], (W // 2, H // 2), interpolation=cv2.INTER_AREA)).mean() < 3.0


def test_a_portrait_phone_video_is_turned_upright_and_scaled_as_sdr_is(tmp_path):
    from circle_rotate.kernel.mp4_rotation import set_rotation

    path = tmp_path / "portrait.mp4"
    write_hevc(path, TurntableSpec(name="hdr", width=W, height=H, frames=3, seed=6), "arib-std-b67")
    stored = next(iter_decoded_frames(path)).to_rgb()
    set_rotation(path, 90)  # a phone held upright stores the picture sideways, with a 90-degree turn
    frame = next(iter_decoded_frames(path))
    assert np.array_equal(frame.to_rgb(), cv2.rotate(stored, cv2.ROTATE_90_CLOCKWISE))
    upright = frame.to_rgb((H // 2, W // 2))  # the upright (width, height)
    assert upright.shape == (W // 2, H // 2, 3)
    want = cv2.resize(cv2.rotate(stored, cv2.ROTATE_90_CLOCKWISE), (H // 2, W // 2), interpolation=cv2.INTER_AREA)
    assert np.abs(upright.astype(int) - want.astype(int)).mean() < 3.0
