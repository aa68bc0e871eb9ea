"""HDR video (BT.2100 HLG or PQ, BT.2020 colours) to SDR (BT.709), for training clips.

Phones record HDR by default (the iPhone's is HLG). Decoded as if it were SDR, as FFmpeg's
plain RGB conversion and musubi-tuner do, its colours come out flat and washed out, and a
LoRA trained on it learns that look. This is the conversion FFmpeg does with its zimg and
tonemap filters (:data:`circle_rotate.kernel.video_io.TO_SDR`, which most FFmpeg builds can
run and PyAV's wheels cannot), step for step, on the frame's 16-bit planes:

1. Y'CbCr to R'G'B' with the BT.2020 (non-constant luminance) or BT.709 matrix, limited or
   full range as the stream says;
2. to display light, 100 cd/m2 = 1.0 (zscale ``t=linear:npl=100``): HLG by its inverse OETF
   and the OOTF of a 1000 cd/m2 display (reference white, signal 0.75, lands at 203 cd/m2),
   PQ by its EOTF;
3. BT.2020 primaries to BT.709 (zscale ``p=bt709``);
4. Hable's filmic curve on each pixel's brightest component, its colour scaled along
   (``tonemap=hable:desat=0``), the peak 1000 cd/m2 as FFmpeg assumes without metadata;
5. to BT.709's signal for an SDR display: the inverse of BT.1886's EOTF, ``L ** (1 / 2.4)``,
   8 bits (zscale ``t=bt709``, whose conversions are display-referred).

Frames are scaled to the clip's size in the 16-bit Y'CbCr first (swscale, as the SDR path
scales), so a 4K phone frame costs a 832x480 frame's arithmetic, and the two power laws are
tables over 16-bit codes: 16 ms a 853x480 frame where the SDR conversion takes 4; ``prepare``
on three 81-frame 1080p HLG sources takes 1.55x what it takes on the same sources in SDR.
Checked against FFmpeg's own output frame for frame (``tests/test_hdr.py``): within 1.2 (HLG)
and 1.8 (PQ) grey levels on average, under 0.3 away from edges, where the two differ only in
how they upsample 4:2:0 chroma.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Tuple

import numpy as np

#: Linear light 1.0 = this many cd/m2 (zscale's ``npl=100``).
NOMINAL_NITS = 100.0
#: The display peak an HLG signal is rendered for, and the peak Hable's curve maps to white
#: (FFmpeg's tonemap assumes 1000 cd/m2 without mastering metadata).
PEAK_NITS = 1000.0

#: Y'CbCr matrices (Kr, Kb) by FFmpeg's colorspace number (10, BT.2020's rare constant-luminance
#: form, is read as the non-constant one).
MATRICES = {1: (0.2126, 0.0722), 9: (0.2627, 0.0593), 10: (0.2627, 0.0593)}

#: Linear BT.2020 RGB to linear BT.709 RGB (ITU-R BT.2087).
BT2020_TO_BT709 = np.array([[1.6605, -0.5876, -0.0728],
                            [-0.1246, 1.1329, -0.0083],
                            [-0.0182, -0.1006, 1.1187]], np.float32)

# HLG (ITU-R BT.2100)
_HLG_A, _HLG_B, _HLG_C = 0.17883277, 0.28466892, 0.55991073
# PQ (SMPTE ST 2084)
_PQ_M1, _PQ_M2 = 2610 / 16384, 2523 / 4096 * 128
_PQ_C1, _PQ_C2, _PQ_C3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
# Hable's filmic curve (FFmpeg's vf_tonemap)
_A, _B, _C, _D, _E, _F = 0.15, 0.50, 0.10, 0.20, 0.02, 0.30


@dataclass(frozen=True)
class Signal:
    """How an HDR stream codes its pixels."""

    transfer: str  # "HLG" or "PQ"
    matrix: int = 9  # FFmpeg's colorspace number: 9 BT.2020 NCL, 1 BT.709
    full_range: bool = False  # phones record limited ("tv") range


def ycbcr_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray, *, matrix: int, full_range: bool,
                 bits: int = 16) -> np.ndarray:
    """Non-linear R'G'B' planes (3, H, W) float32, 0-1, from ``bits``-bit Y'CbCr planes."""
    kr, kb = MATRICES.get(matrix, MATRICES[9])
    top = float(1 << bits) - 1.0
    if full_range:
        yn = y.astype(np.float32) / top
        scale = top
    else:  # limited range: 16-235 (Y') and 16-240 (Cb, Cr) of 255, at any bit depth
        step = float(1 << (bits - 8))
        yn = (y.astype(np.float32) - 16 * step) / (219 * step)
        scale = 224 * step
    mid = float(1 << (bits - 1))
    pb = (cb.astype(np.float32) - mid) / scale
    pr = (cr.astype(np.float32) - mid) / scale
    kg = 1.0 - kr - kb
    r = yn + 2 * (1 - kr) * pr
    b = yn + 2 * (1 - kb) * pb
    g = (yn - kr * r - kb * b) / kg
    return np.clip(np.stack([r, g, b]), 0.0, 1.0)


def hlg_to_linear(signal: np.ndarray, *, peak_nits: float = PEAK_NITS) -> np.ndarray:
    """HLG R'G'B' to display light, 1.0 = :data:`NOMINAL_NITS` cd/m2: the inverse OETF, then
    the OOTF of a ``peak_nits`` display (system gamma 1.2 at 1000 cd/m2), as zimg applies it:
    to each component (BT.2100 applies the gamma to the luminance; per component, as zimg has
    it, keeps the clips within a grey level of FFmpeg's conversion)."""
    e = np.asarray(signal, np.float32)
    scene = np.where(e <= 0.5, e * e / 3.0, (np.exp((np.maximum(e, 0.5) - _HLG_C) / _HLG_A) + _HLG_B) / 12.0)
    gamma = 1.2 + 0.42 * np.log10(peak_nits / 1000.0)
    return ((peak_nits / NOMINAL_NITS) * np.power(scene, gamma)).astype(np.float32)


def pq_to_linear(signal: np.ndarray) -> np.ndarray:
    """PQ R'G'B' to display light, 1.0 = :data:`NOMINAL_NITS` cd/m2 (the ST 2084 EOTF)."""
    p = np.power(np.clip(np.asarray(signal, np.float32), 0.0, 1.0), 1.0 / _PQ_M2)
    nits = 10000.0 * np.power(np.maximum(p - _PQ_C1, 0.0) / (_PQ_C2 - _PQ_C3 * p), 1.0 / _PQ_M1)
    return (nits / NOMINAL_NITS).astype(np.float32)


def _hable(x: np.ndarray) -> np.ndarray:
    return (x * (x * _A + _C * _B) + _D * _E) / (x * (x * _A + _B) + _D * _F) - _E / _F


def tone_map(linear: np.ndarray, *, axis: int = -1, peak: float = PEAK_NITS / NOMINAL_NITS) -> np.ndarray:
    """Hable's curve on each pixel's brightest component (``peak`` maps to 1.0), the pixel's
    components (along ``axis``) scaled by the same factor so that its hue stays."""
    sig = np.maximum(linear.max(axis=axis, keepdims=True), 1e-6)
    return linear * (_hable(sig) / (_hable(np.float32(peak)) * sig))


def bt1886_inverse(linear: np.ndarray) -> np.ndarray:
    """Display light (1.0 = SDR white) to the BT.709 signal an SDR display (BT.1886, gamma
    2.4) shows as that light."""
    return np.power(np.clip(linear, 0.0, 1.0), 1.0 / 2.4)


@lru_cache(maxsize=None)
def _transfer_table(transfer: str) -> np.ndarray:
    """Display light of every 16-bit R'G'B' code value: the transfer, the costliest step, as a
    table (a 16-bit code is finer than any 10- or 12-bit source)."""
    codes = np.arange(1 << 16, dtype=np.float32) / 65535.0
    return (hlg_to_linear(codes) if transfer == "HLG" else pq_to_linear(codes)).astype(np.float32)


@lru_cache(maxsize=None)
def _signal_table() -> np.ndarray:
    """The 8-bit BT.709 signal of the light whose square root is each 16-bit code: the
    display's power law, the last costly step, as a table."""
    root = np.arange(1 << 16, dtype=np.float64) / 65535.0
    return np.rint(bt1886_inverse(root * root) * 255.0).astype(np.uint8)


def to_sdr(y: np.ndarray, cb: np.ndarray, cr: np.ndarray, signal: Signal, *, bits: int = 16) -> np.ndarray:
    """SDR RGB uint8 (H, W, 3), BT.709, from an HDR frame's full-size Y'CbCr planes."""
    rgb = ycbcr_to_rgb(y, cb, cr, matrix=signal.matrix, full_range=signal.full_range, bits=bits)
    linear = _transfer_table(signal.transfer)[np.rint(rgb * 65535.0).astype(np.uint16)]
    # planes throughout: (3, H, W) keeps each step a run over contiguous memory
    linear = tone_map(np.maximum(np.tensordot(BT2020_TO_BT709, linear, axes=1), 0.0), axis=0)
    # the 8-bit signal of each light, looked up by its square root (fine steps near black)
    root = np.sqrt(np.clip(linear, 0.0, 1.0))
    sdr = _signal_table()[np.rint(root * 65535.0).astype(np.uint16)]
    return np.ascontiguousarray(sdr.transpose(1, 2, 0))


def frame_to_sdr(frame, signal: Signal, size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """A decoded PyAV ``VideoFrame`` of an HDR stream as SDR RGB uint8, scaled to ``size``
    ((width, height), as stored) by swscale in 16-bit Y'CbCr first."""
    w, h = size if size is not None else (frame.width, frame.height)
    planar = frame.reformat(width=w, height=h, format="yuv444p16le", interpolation="AREA" if size else None)
    y, cb, cr = (np.frombuffer(p, dtype="<u2").reshape(h, p.line_size // 2)[:, :w] for p in planar.planes)
    return to_sdr(y, cb, cr, signal)
