"""``circle-rotate bench prepare|merge|eval``: one command runs each benchmark with its own options."""

from __future__ import annotations

import pytest

from circle_rotate.cli.bench import BENCHES
from circle_rotate.cli.main import main


def test_each_name_reaches_its_benchmark_and_its_own_options(capsys):
    own = {"prepare": "--sources", "merge": "--layers", "eval": "--videos", "accuracy": "--set", "finder": "--real",
           "follower": "--labels", "real": "--boxes", "noise": "--crf", "fp8-merge": "--rank", "comfyui": "--comfyui", "merge-kinds": "--repeat"}
    assert set(own) == set(BENCHES)
    for name, option in own.items():
        with pytest.raises(SystemExit) as exit_:
            main(["bench", name, "--help"])  # the benchmark's parser answers, not the CLI's
        assert exit_.value.code == 0
        assert option in capsys.readouterr().out, name


def test_bench_eval_prints_its_figures(capsys):
    assert main(["-q", "bench", "eval", "--videos", "1", "--frames", "9", "--size", "64x48", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "floor" in out and "the floor" in out


def test_an_unknown_benchmark_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "nope"])
    assert exit_.value.code == 2 and "prepare" in capsys.readouterr().err


@pytest.mark.parametrize("argv, option", [
    (["prepare", "--repeat", "0"], "--repeat"),
    (["prepare", "--frames", "0"], "--frames"),
    (["prepare", "--size", "0x0"], "--size"),
    (["eval", "--frames", "1"], "--frames"),
    (["eval", "--jobs", "0"], "--jobs"),
    (["merge", "--layers", "0"], "--layers"),
    (["merge-kinds", "--rank", "-3"], "--rank"),
    (["fp8-merge", "--rank", "0"], "--rank"),
    (["fp8-merge", "--delta-rel", "-1"], "--delta-rel"),
    (["fp8-merge", "--delta-rel", "nan"], "--delta-rel"),
])
def test_a_number_no_run_can_use_is_a_usage_error_naming_the_option(argv, option, capsys):
    # each of these ran into a median of nothing, a division by zero or a zero-sized frame
    with pytest.raises(SystemExit) as exit_:
        main(["bench", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert f"argument {option}" in err and "Traceback" not in err
