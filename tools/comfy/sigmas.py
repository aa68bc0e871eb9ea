"""The noise levels ComfyUI samples a Wan2.2 expert over, and the step where they cross the experts' boundary.

Wan2.2 I2V hands over from the high-noise to the low-noise expert where sigma falls below 0.9. In a
ComfyUI workflow that is an index into the sigma list that ``KSamplerAdvanced`` builds (its
``start_at_step``/``end_at_step`` slice that list), so the index depends on the scheduler, the
sampler and the flow shift, not on ``--steps`` and ``--shift`` alone. This module computes the list
from each scheduler's definition as ComfyUI 0.3.64 uses it (``KSampler.SCHEDULERS``), on the model
``ModelSamplingSD3(shift)`` makes of a Wan model:

- the model's noise levels: a table of 1000 sigmas, ``sigma(t) = s t / (1 + (s - 1) t)`` at
  ``t = k / 1000``, ``k = 1..1000``; ``sigma_min`` is the first (not 0), ``sigma_max`` the last (1);
  a model "timestep" is ``1000 sigma`` (no inverse shift: ComfyUI's flow models define it so);
- ``simple``: ``n`` entries of the table, from the top, every ``1000 / n`` (rounded down);
- ``normal``: ``n`` timesteps evenly spaced from ``1000 sigma_max`` to ``1000 sigma_min``, each
  mapped through ``sigma(t)``; ``sgm_uniform``: the same with ``n + 1`` points, the last dropped;
- ``karras``: Karras et al. (2022), rho 7; ``exponential``: evenly spaced in ``log sigma``;
  ``kl_optimal``: evenly spaced in ``atan sigma`` (its last point is ``sigma_min``); these three
  take only ``sigma_min`` and ``sigma_max`` from the model, so the shift moves ``sigma_min`` alone;
- ``ddim_uniform``: every ``1000 // n``-th table entry from the second up, top first;
- ``beta``: table entries at the Beta(0.6, 0.6) quantiles of ``1 - i / n`` (arXiv 2407.12173),
  repeats dropped (so it may have fewer steps than asked);
- ``linear_quadratic``: Mochi's schedule (threshold 0.025, half the steps linear), times ``sigma_max``:
  it ignores the shift;
- each list ends in 0. The samplers ``dpm_2``, ``dpm_2_ancestral``, ``uni_pc`` and ``uni_pc_bh2``
  take the list of ``n + 1`` steps and drop its second-to-last entry; every other sampler steps
  over the list as it is.

ComfyUI computes in float32 and so does this module (numpy), so a sigma that is exactly 0.9 in
float32 (timestep 900, which Wan2.2 gives the high-noise expert) is not below the boundary. The
arithmetic rounds as torch's does; ``exp``, ``tan`` and ``pow`` are taken exactly and rounded once,
which torch's float32 versions miss by an ulp now and then (differently on different CPUs): that
moves the switch only for a sigma within about 1e-7 of 0.9. Checked against ComfyUI 0.3.64's
own ``KSampler`` in ``tests/test_comfy_sigmas.py``. numpy (and scipy for ``beta``) are
imported on use: the CLI builds its parser from :mod:`circle_rotate.tools.comfy.workflow`.
"""

from __future__ import annotations

import math
from typing import List

#: ComfyUI 0.3.64's schedulers this module reproduces (all of ``KSampler.SCHEDULERS``).
SCHEDULERS = ("simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
              "kl_optimal")
#: Samplers whose sigma list is that of ``steps + 1`` steps without its second-to-last entry.
DROP_PENULTIMATE = ("dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2")
#: Entries in the model's sigma table (ModelSamplingDiscreteFlow's ``timesteps``) and its timestep scale.
TABLE_SIZE = 1000
MULTIPLIER = 1000


def _np():
    import numpy

    return numpy


def _shifted(shift: float, t):
    """``s t / (1 + (s - 1) t)`` on float32 ``t``, in float32 as ComfyUI's ``time_snr_shift``."""
    np = _np()
    f32 = np.float32
    t = np.asarray(t, dtype=f32)
    if shift == 1.0:  # ComfyUI returns t itself here (the formula would round the same, but say so)
        return t
    return (f32(shift) * t / (f32(1) + f32(shift - 1.0) * t)).astype(f32)


def _sigma_of_timestep(shift: float, timesteps):
    """The model's ``sigma(timestep)``: the shift at ``timestep / 1000`` (float32)."""
    np = _np()
    return _shifted(shift, np.asarray(timesteps, dtype=np.float32) / np.float32(MULTIPLIER))


def model_sigmas(shift: float):
    """The model's 1000 sigmas, lowest first, as ``ModelSamplingSD3(shift)`` sets them (float32 array).

    ComfyUI builds the timesteps as ``k / 1000 * 1000`` and divides by 1000 again; the two float32
    roundings are kept, as they decide on which side of 0.9 a table entry falls."""
    np = _np()
    f32 = np.float32
    k = np.arange(1, TABLE_SIZE + 1).astype(f32)
    timesteps = (k / f32(TABLE_SIZE) * f32(MULTIPLIER)).astype(f32)
    return _sigma_of_timestep(shift, timesteps)


def _linspace32(start: float, end: float, n: int):
    """``n`` evenly spaced float32 values from ``start`` to ``end`` as torch spaces them: a float32 step, the
    first half counted up from ``start`` and the rest down from ``end``, each value rounded once (a fused
    multiply-add), so both ends are exact. (numpy's own linspace lands an ulp off now and then.)"""
    np = _np()
    f32 = np.float32
    start, end = f32(start), f32(end)
    if n == 1:
        return np.array([start], dtype=f32)
    step = f32(end - start) / f32(n - 1)
    i = np.arange(n)
    # float64 holds step * i exactly (24-bit step, small i): one rounding to float32, as the FMA does
    up = (np.float64(start) + np.float64(step) * i).astype(f32)
    down = (np.float64(end) - np.float64(step) * (n - 1 - i)).astype(f32)
    return np.where(i < n // 2, up, down).astype(f32)


def _rounded(fn, x, *args):
    """``fn`` of float32 ``x``, exact and then rounded to float32: torch's float32 ``exp``/``tan``/``pow`` are
    within an ulp of that, and which way they miss depends on the CPU's code path."""
    np = _np()
    return fn(np.asarray(x, dtype=np.float64), *args).astype(np.float32)


def _with_zero(values) -> List[float]:
    return [float(v) for v in values] + [0.0]


def _simple(table, n: int) -> List[float]:
    stride = len(table) / n  # a float: entry i is the table's (1 + floor(i * stride))-th from the top
    return _with_zero(table[-(1 + int(i * stride))] for i in range(n))


def _normal(table, shift: float, n: int, *, sgm: bool) -> List[float]:
    np = _np()
    f32 = np.float32
    start = f32(table[-1]) * f32(MULTIPLIER)  # timestep(sigma_max): 1000 sigma
    end = f32(table[0]) * f32(MULTIPLIER)
    if sgm:
        timesteps = _linspace32(start, end, n + 1)[:-1]
        return _with_zero(_sigma_of_timestep(shift, timesteps))
    if math.isclose(float(_sigma_of_timestep(shift, end)), 0.0, abs_tol=1e-5):
        # the last timestep is already sigma 0: n + 1 points, that one the final 0
        return [float(v) for v in _sigma_of_timestep(shift, _linspace32(start, end, n + 1))]
    return _with_zero(_sigma_of_timestep(shift, _linspace32(start, end, n)))


def _karras(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> List[float]:
    np = _np()
    f32 = np.float32
    ramp = _linspace32(0.0, 1.0, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _with_zero(_rounded(np.power, (f32(hi) + ramp * f32(lo - hi)).astype(f32), rho))


def _exponential(sigma_min: float, sigma_max: float, n: int) -> List[float]:
    np = _np()
    return _with_zero(_rounded(np.exp, _linspace32(math.log(sigma_max), math.log(sigma_min), n)))


def _kl_optimal(sigma_min: float, sigma_max: float, n: int) -> List[float]:
    np = _np()
    f32 = np.float32
    w = (np.arange(n).astype(f32) / f32(n - 1)).astype(f32)  # 0 .. 1: the weight of sigma_min
    return _with_zero(_rounded(np.tan, (w * f32(math.atan(sigma_min)) + (f32(1) - w) * f32(math.atan(sigma_max))).astype(f32)))


def _ddim_uniform(table, n: int) -> List[float]:
    if math.isclose(float(table[1]), 0.0, abs_tol=1e-5):  # a near-zero table: one more step, no 0 appended
        n, tail = n + 1, []
    else:
        tail = [0.0]
    stride = max(len(table) // n, 1)
    return [float(table[i]) for i in range(1, len(table), stride)][::-1] + tail


def _beta(table, n: int, alpha: float = 0.6, beta: float = 0.6) -> List[float]:
    np = _np()
    from scipy.stats import beta as beta_dist

    quantiles = 1 - np.linspace(0, 1, n, endpoint=False)
    index = np.rint(beta_dist.ppf(quantiles, alpha, beta) * (len(table) - 1))
    out, last = [], None
    for i in index:
        if i != last:  # neighbouring steps that round to one table entry count once
            out.append(float(table[int(i)]))
        last = i
    return out + [0.0]


def _linear_quadratic(sigma_max: float, n: int, threshold: float = 0.025) -> List[float]:
    np = _np()
    if n == 1:
        levels = [1.0, 0.0]
    else:
        linear = n // 2  # the first half rises linearly to the threshold, the rest quadratically to 1
        quadratic = n - linear
        excess = linear - threshold * n
        a = excess / (linear * quadratic ** 2)
        b = threshold / linear - 2 * excess / quadratic ** 2
        c = a * linear ** 2
        rising = [i * threshold / linear for i in range(linear)] + [a * i * i + b * i + c for i in range(linear, n)]
        levels = [1.0 - x for x in rising + [1.0]]
    return [float(v) for v in (np.asarray(levels, dtype=np.float32) * np.float32(sigma_max)).astype(np.float32)]


def scheduler_sigmas(scheduler: str, steps: int, shift: float) -> List[float]:
    """The ``steps``-step sigma list (with its final 0) of ``scheduler`` on a Wan model at flow shift ``shift``.

    Raises:
        ValueError: a scheduler this module does not reproduce (see :data:`SCHEDULERS`).
    """
    if scheduler not in SCHEDULERS:
        raise ValueError(f"the {scheduler!r} scheduler's sigmas are not reproduced here; supported: {', '.join(SCHEDULERS)}")
    table = model_sigmas(shift)
    sigma_min, sigma_max = float(table[0]), float(table[-1])
    if scheduler == "simple":
        return _simple(table, steps)
    if scheduler in ("normal", "sgm_uniform"):
        return _normal(table, shift, steps, sgm=scheduler == "sgm_uniform")
    if scheduler == "karras":
        return _karras(sigma_min, sigma_max, steps)
    if scheduler == "exponential":
        return _exponential(sigma_min, sigma_max, steps)
    if scheduler == "kl_optimal":
        return _kl_optimal(sigma_min, sigma_max, steps)
    if scheduler == "ddim_uniform":
        return _ddim_uniform(table, steps)
    if scheduler == "beta":
        return _beta(table, steps)
    return _linear_quadratic(sigma_max, steps)


def sampling_sigmas(sampler: str, scheduler: str, steps: int, shift: float) -> List[float]:
    """The sigma list ``KSamplerAdvanced`` samples over (and indexes with its start/end steps)."""
    if sampler in DROP_PENULTIMATE:
        sigmas = scheduler_sigmas(scheduler, steps + 1, shift)
        return sigmas[:-2] + sigmas[-1:]
    return scheduler_sigmas(scheduler, steps, shift)


def first_below(sigmas: List[float], boundary: float) -> int:
    """Index of the first sigma below ``boundary``, both as float32 (``len(sigmas)`` when none is)."""
    np = _np()
    limit = np.float32(boundary)
    return next((i for i, s in enumerate(sigmas) if np.float32(s) < limit), len(sigmas))
