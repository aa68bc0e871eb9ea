"""The sigma lists of :mod:`circle_rotate.tools.comfy.sigmas` are ComfyUI 0.3.64's own, and so is the hand-over step.

The reference, ``tests/data/comfy_switch_steps_0.3.64.json``, was made once from ComfyUI 0.3.64 itself
(its ``about`` says how): for each scheduler, sampler, step count and shift, the sigma list its
``KSampler`` builds (what ``KSamplerAdvanced`` slices with ``start_at_step``/``end_at_step``) on a
model patched by ``ModelSamplingSD3``, and the first index whose sigma is below 0.9. ``grid`` is the
regular grid the implementation was written against; ``held_out`` are random cases over every
scheduler and sampler, steps and fractional shifts, that it was checked on only once it was done.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from circle_rotate.tools.comfy.sigmas import (DROP_PENULTIMATE, SCHEDULERS, first_below, sampling_sigmas,
                                              scheduler_sigmas)
from circle_rotate.tools.comfy.workflow import SAMPLERS, switch_step

REF = json.loads((Path(__file__).parent / "data" / "comfy_switch_steps_0.3.64.json").read_text())


def _close(mine: float, theirs: float) -> bool:
    # float32 throughout; torch and numpy round exp/tan/pow alike to within an ulp (about 6e-8 relative)
    return abs(mine - theirs) <= 3e-7 * max(abs(theirs), 1e-3)


def _check_row(row) -> None:
    scheduler, sampler, steps, shift, below, count, before, at = row
    sigmas = sampling_sigmas(sampler, scheduler, steps, shift)
    where = f"{scheduler}/{sampler}, {steps} steps, shift {shift}"
    assert len(sigmas) == count, where
    assert first_below(sigmas, 0.9) == below, (where, sigmas[max(below - 1, 0):below + 2])
    assert _close(sigmas[below], at) and (before is None or _close(sigmas[below - 1], before)), where
    assert switch_step(steps, shift, sampler, scheduler) == min(steps, below), where


def test_the_schedulers_and_samplers_are_comfyuis():
    assert list(SCHEDULERS) == REF["schedulers"] and list(SAMPLERS) == REF["samplers_offered"]
    assert sorted(DROP_PENULTIMATE) == REF["discard_penultimate"]


@pytest.mark.parametrize("scheduler", REF["schedulers"])
def test_switch_step_is_comfyuis_on_the_grid(scheduler):
    rows = [r for r in REF["grid"] if r[0] == scheduler]
    assert len(rows) == 90
    for row in rows:
        _check_row(row)


def test_switch_step_is_comfyuis_on_held_out_cases():
    """Random schedulers, samplers, 2-80 steps and shifts in ComfyUI's 0.01 steps, none tuned for."""
    assert len(REF["held_out"]) == 240 and len({r[0] for r in REF["held_out"]}) == len(SCHEDULERS)
    for row in REF["held_out"]:
        _check_row(row)


@pytest.mark.parametrize("scheduler", REF["schedulers"])
def test_whole_sigma_lists_are_comfyuis(scheduler):
    theirs = REF["full"][scheduler]  # 8 steps, shift 8
    mine = scheduler_sigmas(scheduler, 8, 8.0)
    assert len(mine) == len(theirs) and all(_close(a, b) for a, b in zip(mine, theirs)), (mine, theirs)


@pytest.mark.parametrize("sampler", REF["samplers_offered"])
def test_each_samplers_list_is_comfyuis(sampler):
    theirs = REF["samplers"][sampler]  # simple, 5 steps, shift 5: the dpm_2/uni_pc family drop a sigma
    mine = sampling_sigmas(sampler, "simple", 5, 5.0)
    assert len(mine) == len(theirs) and all(_close(a, b) for a, b in zip(mine, theirs)), (sampler, mine, theirs)


def test_the_handover_differs_across_schedulers_where_the_old_formula_did_not():
    """20 steps at shift 8: the simple-schedule formula said 10 for every scheduler; ComfyUI's lists say otherwise."""
    got = {s: switch_step(20, 8.0, "euler", s) for s in SCHEDULERS}
    assert got == {"simple": 10, "sgm_uniform": 10, "karras": 1, "exponential": 1, "ddim_uniform": 9, "beta": 10,
                   "normal": 10, "linear_quadratic": 13, "kl_optimal": 2}
    # the study's 4 steps: uni_pc samples 5 steps' list with its second-to-last sigma dropped
    assert switch_step(4, 8.0, "euler", "simple") == 2 and switch_step(4, 8.0, "uni_pc", "simple") == 3


def test_a_sigma_of_exactly_0_9_stays_with_the_high_noise_expert():
    """Shift 1, simple, 10 steps: step 1's sigma is the table's 0.9 (timestep 900), which Wan2.2 gives the
    high-noise expert; ComfyUI compares in float32, where it is not below 0.9."""
    sigmas = scheduler_sigmas("simple", 10, 1.0)
    assert abs(sigmas[1] - 0.9) < 1e-7 and first_below(sigmas, 0.9) == 2 == switch_step(10, 1.0)


def test_an_unknown_scheduler_names_the_supported_ones():
    with pytest.raises(ValueError, match="supported: simple, sgm_uniform, karras"):
        scheduler_sigmas("align_your_steps", 20, 8.0)
