"""One CLI dialect (README "Command line"): -o/--out, --force, --dry-run, --json, real actions, WxH,
and the old spellings kept hidden for one release, each printing one deprecation line."""

from __future__ import annotations

import argparse

import pytest

from circle_rotate.cli.main import build_parser, main, with_default_action
from circle_rotate.kernel.wan_arch import tiny_config
from circle_rotate.selfcheck.synthetic.lora import write_random_lora

WRITERS = ("prepare", "config", "convert", "resize", "combine", "merge", "merge-pair", "generate", "train", "smoke",
           "download", "demo", "eval run", "eval compare")
DRY_RUN = ("prepare", "merge", "cache run", "train", "generate", "download")
NOT_REPORTS = ("bench",)  # benchmarks print their figures; their options are their own


def _subparsers(parser: argparse.ArgumentParser) -> dict:
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def commands() -> dict:
    """'name' or 'name action' -> the parser that finally parses its options."""
    out = {}
    for name, p in _subparsers(build_parser()).items():
        actions = _subparsers(p)
        if actions and name not in NOT_REPORTS:
            out.update({f"{name} {a}": sp for a, sp in actions.items()})
        else:
            out[name] = p
    return out


def visible_options(p: argparse.ArgumentParser) -> set:
    return {s for a in p._actions if a.help != argparse.SUPPRESS for s in a.option_strings}


def parse(argv):
    parser = build_parser()
    return parser.parse_args(with_default_action(parser, argv))


def test_every_writer_names_its_output_with_o_out_and_every_report_has_json():
    cmds = commands()
    assert set(WRITERS) <= set(cmds)
    assert [c for c in WRITERS if not {"-o", "--out"} <= visible_options(cmds[c])] == []
    no_json = sorted(c for c, p in cmds.items() if "--json" not in visible_options(p) and c not in NOT_REPORTS)
    assert no_json == []
    assert [c for c in DRY_RUN if "--dry-run" not in visible_options(cmds[c])] == []
    # prepare adds to its folder (finished sources are skipped); download and the self-checks make new folders
    forced = [c for c in WRITERS if c not in ("prepare", "download", "demo", "smoke")]
    assert [c for c in forced if "--force" not in visible_options(cmds[c])] == []


def test_old_spellings_are_hidden_from_help(capsys):
    for argv, old in ((["convert", "--help"], "--to"), (["caption", "--help"], "--overwrite"),
                      (["train", "--help"], "--output-dir"), (["generate", "--help"], "--size"),
                      (["download", "--help"], "--to"), (["smoke", "--help"], "--work")):
        with pytest.raises(SystemExit):
            main(argv)
        assert old not in capsys.readouterr().out, argv


def test_an_old_spelling_still_works_and_says_once_what_replaces_it(tmp_path, capsys):
    lora = write_random_lora(tmp_path / "lora.safetensors", tiny_config(), rank=4, alpha=1.0, seed=3)
    assert main(["-q", "convert", str(lora), str(tmp_path / "old.safetensors"), "--to", "comfy"]) == 0
    err = capsys.readouterr().err
    assert (tmp_path / "old.safetensors").is_file()
    assert err.count("deprecated") == 2 and "use --format" in err and "use -o " in err
    assert main(["-q", "convert", str(lora), "-o", str(tmp_path / "new.safetensors"), "--format", "comfy"]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert (tmp_path / "new.safetensors").read_bytes() == (tmp_path / "old.safetensors").read_bytes()
    assert main(["-q", "convert", str(lora), str(tmp_path / "x.safetensors"), "-o", str(tmp_path / "y.safetensors"),
                 "--format", "comfy"]) == 2  # the output given twice
    assert "given twice" in capsys.readouterr().err


def test_eval_compare_is_an_action_even_beside_a_folder_named_compare(tmp_path, monkeypatch):
    (tmp_path / "compare").mkdir()
    monkeypatch.chdir(tmp_path)
    args = parse(["eval", "compare", "base/", "lora/", "-o", "report"])
    assert args.action == "compare" and args.paths == ["base/", "lora/"] and str(args.out) == "report"
    args = parse(["eval", "./compare", "--metrics", "psnr"])
    assert args.action == "run" and args.paths == ["./compare"]
    args = parse(["eval", "--metric", "all", "--input_dir", "outputs", "--output", "r.json"])  # the study's shape
    assert args.action == "run" and args.input_dir == ["outputs"] and str(args.out) == "r.json"


def test_metrics_never_swallow_a_path():
    args = parse(["eval", "--metrics", "subject_drift", "videos/"])
    assert args.metrics == ["subject_drift"] and args.paths + args.more_paths == ["videos/"]
    args = parse(["eval", "videos/", "--metrics", "psnr,ssim", "--metrics", "drift"])
    assert args.metrics == ["psnr,ssim", "drift"] and args.paths == ["videos/"]


def test_old_input_flags_still_set_the_input(capsys):
    for argv, dest in ((["merge", "--base", "e.safetensors", "--lora", "l.safetensors", "-o", "m.safetensors"], "base"),
                       (["generate", "--prompts", "p.txt", "-o", "v"], "prompts")):
        assert str(getattr(parse(argv), dest)) == argv[2]
        assert capsys.readouterr().err.count("deprecated") == 1
    assert str(parse(["merge", "e.safetensors", "--lora", "l.safetensors", "-o", "m.safetensors"]).base) == "e.safetensors"
    assert not hasattr(parse(["merge", "--lora", "l.safetensors", "-o", "m.safetensors"]), "base")


def test_cache_status_is_an_action_and_cache_alone_runs():
    assert parse(["cache", "status", "--json"]).action == "status"
    args = parse(["cache", "--dry-run"])
    assert args.action == "run" and args.dry_run


def test_sizes_are_width_by_height(capsys):
    args = parse(["generate", "prompts.txt", "-o", "videos", "--resolution", "832x480"])
    assert args.resolution == (832, 480)
    args = parse(["generate", "prompts.txt", "-o", "videos", "--size", "480", "832"])  # the old H W, hidden
    assert args.size_hw == [480, 832] and "--resolution WxH" in capsys.readouterr().err
    assert parse(["prepare", "raw", "-o", "out", "--resolution", "480x832"]).resolution == (480, 832)
