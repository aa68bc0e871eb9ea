"""Dataset TOMLs: what ``config`` writes, the shipped ones, and ``check-config``'s findings,
each held against musubi-tuner's own validator and loader."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import toml

from circle_rotate.cli.main import main
from circle_rotate.dataset.check import check_config
from circle_rotate.dataset.items import frames_after_fps, items_for
from circle_rotate.kernel.video_io import write_video
from circle_rotate.prepare.manifest import MANIFEST_NAME, accepted_clips, read_manifest
from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec, write_footage

DATASETS = Path(__file__).resolve().parents[1] / "datasets"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """The training smoke test's path: prepare 9-frame clips at 64x64, caption them."""
    root = tmp_path_factory.mktemp("cfg")
    for i, (fps, direction) in enumerate([(24.0, "right"), (30.0, "left")]):
        write_footage(TurntableSpec(name=f"take{i}", width=160, height=96, frames=40, fps=fps, direction=direction,
                                    total_angle_deg=30, seed=i), root / "raw" / "mug")
    out = root / "prepared"
    assert main(["-q", "prepare", str(root / "raw"), str(out), "--frames", "9", "--resolution", "64x64"]) == 0
    assert main(["-q", "caption", str(out)]) == 0
    assert main(["-q", "caption", str(out), "--jsonl", str(out / "dataset.jsonl")]) == 0
    return out


def _musubi_group(path: Path, cwd: Path):
    from musubi_tuner.dataset import config_utils as cu

    old = Path.cwd()
    os.chdir(cwd)
    try:
        user = cu.load_user_config(str(path))
        blueprint = cu.BlueprintGenerator(cu.ConfigSanitizer()).generate(user, argparse.Namespace(debug_dataset=False),
                                                                        architecture="wan")
        return cu.generate_dataset_group_by_blueprint(blueprint.dataset_group, training=False)
    finally:
        os.chdir(old)


def _cached_items(group, cwd: Path):
    """Run musubi's latent-caching iteration (no VAE): every (bucket, frames) it would encode."""
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return [(key, len(batch)) for ds in group.datasets for key, batch in ds.retrieve_latent_cache_batches(1)]
    finally:
        os.chdir(old)


def test_config_writes_a_commented_toml_musubi_accepts(prepared, tmp_path, musubi):
    out = tmp_path / "ds.toml"
    assert main(["-q", "config", str(prepared), "-o", str(out)]) == 0
    text = out.read_text()
    data = toml.loads(text)
    ds = data["datasets"][0]
    assert data["general"]["resolution"] == [64, 64] and data["general"]["caption_extension"] == ".txt"
    assert ds["target_frames"] == [9] and ds["frame_extraction"] == "head"
    assert isinstance(ds["source_fps"], float) and ds["source_fps"] == 16.0
    assert "\\" not in text and ds["video_directory"] == (prepared / "videos").absolute().as_posix()
    assert sum(line.lstrip().startswith("#") for line in text.splitlines()) >= 10
    report = check_config(out)
    assert report.ok, [p.one_line() for p in report.problems]
    assert report.musubi_verdict.startswith("accepted by musubi-tuner")
    clips = accepted_clips(read_manifest(prepared / MANIFEST_NAME))
    assert report.datasets[0].videos == report.datasets[0].items == len(clips) >= 2
    # musubi's own loader finds the same items, at the clips' own size (nothing rescaled)
    cached = _cached_items(_musubi_group(out, tmp_path), tmp_path)
    assert sum(n for _, n in cached) == len(clips)
    assert {key for key, _ in cached} == {(c["width"], c["height"], 9) for c in clips}
    assert main(["-q", "config", str(prepared), "-o", str(out)]) == 2  # exists: needs --force


def test_a_prepared_folder_copied_by_a_mac_still_configures_and_checks(prepared, tmp_path, musubi):
    """A Mac writing to a USB (FAT/exFAT) drive leaves a hidden AppleDouble ``._name`` beside every
    file. musubi's glob passes over them; caption, config and check-config must too, not report
    the folder as disagreeing with its manifest or a ``._clip.mp4`` as an unreadable video."""
    import shutil

    copy = tmp_path / "usb" / "prepared"
    shutil.copytree(prepared, copy)
    for f in [p for p in copy.rglob("*") if p.is_file()]:
        (f.parent / f"._{f.name}").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    assert main(["-q", "caption", str(copy)]) == 0
    out = tmp_path / "ds.toml"
    assert main(["-q", "config", str(copy), "-o", str(out)]) == 0
    report = check_config(out)
    assert report.ok, [p.one_line() for p in report.problems]
    clips = accepted_clips(read_manifest(copy / MANIFEST_NAME))
    assert report.datasets[0].videos == report.datasets[0].items == len(clips) >= 2


def test_jsonl_and_relative_configs_are_accepted_too(prepared, tmp_path, musubi, monkeypatch):
    jsonl_toml = tmp_path / "jsonl.toml"
    assert main(["-q", "config", str(prepared), "-o", str(jsonl_toml), "--jsonl", str(prepared / "dataset.jsonl"),
                 "--cache", str(tmp_path / "cache"), "--repeats", "3"]) == 0
    data = toml.load(jsonl_toml)
    assert "video_directory" not in data["datasets"][0] and "caption_extension" not in data["general"]
    report = check_config(jsonl_toml)
    assert report.ok and report.datasets[0].items == 3 * report.datasets[0].videos
    assert sum(n for _, n in _cached_items(_musubi_group(jsonl_toml, tmp_path), tmp_path)) == report.datasets[0].videos
    rel_toml = prepared.parent / "rel.toml"
    assert main(["-q", "config", str(prepared), "-o", str(rel_toml), "--relative-to", str(prepared.parent)]) == 0
    assert toml.load(rel_toml)["datasets"][0]["video_directory"] == "prepared/videos"
    assert check_config(rel_toml, base_dir=prepared.parent).ok
    assert not check_config(rel_toml, base_dir=tmp_path, use_musubi=False).ok  # from elsewhere: folder missing
    # the TOML named relative to where the user is, its paths relative to --base: musubi gets both right
    monkeypatch.chdir(prepared.parent.parent)
    relative = check_config(Path(prepared.parent.name) / "rel.toml", base_dir=prepared.parent)
    assert relative.ok and relative.musubi_verdict.startswith("accepted by musubi-tuner"), relative.musubi_verdict


def _layout(base: Path, folder: str, count: int, size=(480, 832)) -> None:
    videos = base / folder
    for i in range(count):
        frames = [np.full((size[1], size[0], 3), 30 + 2 * t + 40 * i, np.uint8) for t in range(81)]
        write_video(videos / f"clip{i}.mp4", frames, fps=16, preset="ultrafast")
        (videos / f"clip{i}.txt").write_text("a car, Circle Left->Right\n")


@pytest.mark.parametrize("shipped,folder,size", [("circle/circle.toml", "datasets/circle/videos", (480, 832)),
                                                 ("custom/custom.toml", "data/prepared/videos", (832, 480))])
def test_shipped_tomls_pass_musubi_and_load_the_expected_items(tmp_path, musubi, shipped, folder, size):
    toml_file = DATASETS / shipped
    empty = _musubi_group(toml_file, tmp_path)  # validator and blueprint; no clips yet: 0 videos, no error
    assert [len(ds.datasource) for ds in empty.datasets] == [0]
    _layout(tmp_path, folder, 2, size)
    report = check_config(toml_file, base_dir=tmp_path)
    assert report.ok, [p.one_line() for p in report.problems]
    assert (report.datasets[0].videos, report.datasets[0].items) == (2, 2)
    cached = _cached_items(_musubi_group(toml_file, tmp_path), tmp_path)
    assert cached == [((*size, 81), 1), ((*size, 81), 1)] or sorted(cached) == [((*size, 81), 2)]


def _clips(folder: Path, names, frames=17, fps=16, captions=True):
    for name in names:
        write_video(folder / name, [np.full((48, 64, 3), 100, np.uint8)] * frames, fps=fps, preset="ultrafast")
        if captions:
            (folder / name).with_suffix(".txt").write_text("x\n")


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_check_config_explains_every_problem_with_line_and_fix(tmp_path):
    (tmp_path / "clips").mkdir()
    _clips(tmp_path / "clips", ["a.mp4", "b.mp4"])
    _clips(tmp_path / "clips", ["a.mov"], captions=False)  # same stem as a.mp4 (and so the same caption file)
    _clips(tmp_path / "clips", ["c.mp4"], captions=False)
    (tmp_path / "short").mkdir()
    _clips(tmp_path / "short", ["s1.mp4", "s2.mp4"], frames=9)
    text = f"""[general]
resolution = [64, 48]
caption_extension = ".txt"
video_directory = "misplaced"

[[datasets]]
video_directory = "{(tmp_path / 'clips').as_posix()}"
cache_directory = "{(tmp_path / 'cache').as_posix()}"
target_frames = [16]
source_fps = 30
frame_extraction = "middle"
targetframes = [17]

[[datasets]]
video_directory = "{(tmp_path / 'short').as_posix()}"
cache_directory = "{(tmp_path / 'cache').as_posix()}"
target_frames = [17]

[[datasets]]
video_directory = 'C:\\clips'

[[datasets]]
video_directory = "{(tmp_path / 'nowhere').as_posix()}"
cache_directory = "{(tmp_path / 'c4').as_posix()}"
"""
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    r = check_config(cfg, use_musubi=False)
    assert not r.ok and r.musubi_verdict is None
    by = {}
    for p in r.problems:
        by.setdefault((p.key, p.severity), []).append(p)
        assert p.fix and p.file == str(cfg)

    def one(key, needle, severity="error"):
        found = [p for p in by.get((key, severity), []) if needle in p.message]
        assert found, (key, needle, "\n".join(p.one_line() for p in r.problems))
        return found[0]

    assert one("video_directory", "belongs in each [[datasets]]").line == _line_of(text, "misplaced")
    typo = one("targetframes", "unknown key")
    assert typo.line == _line_of(text, "targetframes") and "target_frames" in typo.fix
    fps = one("source_fps", "wrong type")
    assert fps.line == _line_of(text, "source_fps = 30") and "30.0" in fps.fix
    assert one("target_frames", "4n+1").line == _line_of(text, "target_frames = [16]")
    assert one("frame_extraction", "'middle'").line == _line_of(text, '"middle"')
    assert "1 video(s) have no caption: c.mp4" in one("caption_extension", "no caption").message
    assert "a" in one("video_directory", "repeat").message  # a.mp4 and a.mov share one cache key
    assert "after source_fps 30 -> 16 fps" in one("target_frames", "shorter than [13] frames").message
    short = one("target_frames", "shorter than [17]")
    assert "2 of 2" in short.message and "s1.mp4 (9 frames)" in short.message
    assert one("video_directory", "backslashes").line == _line_of(text, "C:\\clips")
    assert "does not exist" in one("video_directory", "nowhere").message
    assert one("cache_directory", "share the cache folder").severity == "error"
    counts = {d.index: d for d in r.datasets}
    assert (counts[0].videos, counts[0].missing_captions) == (4, 1)
    assert (counts[1].videos, counts[1].usable, counts[1].too_short, counts[1].items) == (2, 0, 2, 0)
    assert all(p.one_line().startswith(f"{cfg}:") for p in r.problems)


def test_toml_syntax_errors_name_the_line(tmp_path):
    cfg = tmp_path / "broken.toml"
    cfg.write_text('[general]\nresolution = [832, 480]\n\n[[datasets]]\nvideo_directory = "C:\\data\\clips"\n')
    r = check_config(cfg, use_musubi=False)
    assert not r.ok and r.problems[0].line == 5 and "forward slashes" in r.problems[0].fix


def test_frame_dropping_matches_musubi(tmp_path, musubi):
    """Our count of the frames musubi keeps after source_fps dropping, against its own loader."""
    from musubi_tuner.dataset.media_utils import load_video

    for n, src_fps in [(81, 30.0), (81, 16.0), (50, 24.0), (81, 10.0), (40, 29.97)]:
        path = tmp_path / f"v{n}_{src_fps}.mp4"
        write_video(path, [np.full((32, 32, 3), t, np.uint8) for t in range(n)], fps=16, preset="ultrafast")
        for end in (None, 17, 81):
            got = len(load_video(str(path), 0, end, source_fps=src_fps, target_fps=16.0))
            assert frames_after_fps(n, source_fps=src_fps, end_frame=end) == got, (n, src_fps, end)
    assert items_for(81, targets=[81], extraction="head") == 1
    assert items_for(80, targets=[81], extraction="head") == 0
    assert items_for(170, targets=[81], extraction="chunk") == 2
    assert items_for(85, targets=[81], extraction="slide", stride=2) == 3
    assert items_for(100, targets=[80], extraction="head") == 1  # musubi rounds 80 down to 77


def test_musubi_verdict_reports_its_own_rejection(tmp_path, musubi):
    (tmp_path / "v").mkdir()
    _clips(tmp_path / "v", ["a.mp4"])
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[datasets]]\nvideo_directory = "{(tmp_path / "v").as_posix()}"\ncaption_extension = ".txt"\n'
                   f'cache_directory = "{(tmp_path / "c").as_posix()}"\ntarget_frames = [17]\nsource_fps = 16\n')
    r = check_config(cfg)
    assert r.musubi_verdict.startswith("rejected by musubi-tuner") and "source_fps" in r.musubi_verdict
    cfg.write_text(cfg.read_text().replace("source_fps = 16", "source_fps = 16.0"))
    r = check_config(cfg)
    assert r.ok and r.musubi_verdict.startswith("accepted") and r.datasets[0].items == 1


def test_check_config_cli_exit_codes_and_json(prepared, tmp_path, capsys):
    good = prepared / "dataset.toml"  # config's default output
    assert main(["-q", "config", str(prepared), "--force"]) == 0
    capsys.readouterr()
    assert main(["check-config", str(good), "--json", "--no-musubi"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["datasets"][0]["items"] >= 2 and report["musubi_verdict"] is None
    bad = tmp_path / "bad.toml"
    shutil.copy(good, bad)
    bad.write_text(bad.read_text().replace("source_fps = 16.0", "source_fps = 16"))
    assert main(["check-config", str(bad), "--no-musubi"]) == 2  # a fixable error
    out = capsys.readouterr().out
    assert f"{bad}:{_line_of(bad.read_text(), 'source_fps = 16')}: error [source_fps]" in out and "NOT OK" in out
    assert main(["check-config", str(tmp_path / "missing.toml")]) == 2


def frames_config(tmp_path, folders) -> Path:
    """A dataset TOML over a JSONL listing the frame ``folders`` of ``tmp_path`` (64x48, 9-frame items)."""
    jsonl = tmp_path / "frames.jsonl"
    jsonl.write_text("".join(json.dumps({"video_path": str(tmp_path / d), "caption": "a car"}) + "\n" for d in folders))
    cfg = tmp_path / "frames.toml"
    cfg.write_text(f'[general]\nresolution = [64, 48]\n\n[[datasets]]\nvideo_jsonl_file = "{jsonl.as_posix()}"\n'
                   f'cache_directory = "{(tmp_path / "cache").as_posix()}"\ntarget_frames = [9]\n')
    return cfg


def test_frame_folders_numbered_without_zeros_are_caught_before_musubi_shuffles_them(tmp_path, musubi):
    """musubi reads a frame folder in name order; check-config says so where that is not the
    frames' own order, and eval plays them in their numbers' order."""
    from musubi_tuner.dataset.media_utils import load_video

    from circle_rotate.eval.frames import load_clip

    for folder, name in (("unpadded", "{}.png"), ("padded", "frame_{:04d}.png")):
        (tmp_path / folder).mkdir()
        for t in range(12):  # frame t is grey level 20 t: its place in the clip can be read off it
            frame = np.full((48, 64, 3), 20 * t, np.uint8)
            frame[24:, ::8] = 255  # stripes below: a picture, not a blank frame
            cv2.imwrite(str(tmp_path / folder / name.format(t)), frame)
    shuffled = [int(f[0, 0, 0]) // 20 for f in load_video(str(tmp_path / "unpadded"))]
    assert shuffled == [0, 1, 10, 11, 2, 3, 4, 5, 6, 7, 8, 9]  # the premise: musubi's own loader shuffles them
    assert [int(f[0, 0, 0]) // 20 for f in load_video(str(tmp_path / "padded"))] == list(range(12))
    assert [int(f[0, 0, 0]) // 20 for f in load_clip(tmp_path / "unpadded").frames] == list(range(12))

    r = check_config(frames_config(tmp_path, ("unpadded", "padded")), use_musubi=False)
    found = [p for p in r.problems if "without leading zeros" in p.message]
    assert not r.ok and len(found) == 1 and found[0].severity == "error"
    assert "unpadded (0.png, 1.png, 10.png, ...)" in found[0].message and "padded" not in found[0].message.replace(
        "unpadded", "") and "zero-padded" in found[0].fix


def test_frame_folders_are_counted_as_musubi_lists_them(tmp_path, musubi):
    """musubi's image extensions are case-sensitive and include .avif: a folder of .Png frames is
    empty to it, a folder of .avif frames is not. check-config counts what musubi reads."""
    from PIL import Image
    from musubi_tuner.dataset.media_utils import load_video

    for folder, ext in (("mixed_case", ".Png"), ("avif", ".avif")):
        (tmp_path / folder).mkdir()
        for t in range(12):
            frame = np.full((48, 64, 3), 20 * t, np.uint8)
            frame[24:, ::8] = 255
            Image.fromarray(frame).save(tmp_path / folder / f"frame_{t:04d}{ext}", format="PNG" if ext == ".Png" else "AVIF")
    assert len(load_video(str(tmp_path / "avif"))) == 12  # the premise, from musubi's own loader
    assert load_video(str(tmp_path / "mixed_case")) == []  # no frame at all, to musubi

    r = check_config(frames_config(tmp_path, ("mixed_case", "avif")), use_musubi=False)
    unread = [p for p in r.problems if "cannot be read" in p.message]
    assert len(unread) == 1 and "mixed_case (no frame musubi reads" in unread[0].message
    assert "avif" not in unread[0].message.replace("/.avif", "")
    assert r.datasets[0].items == 1  # the avif folder, 12 frames: one 9-frame item


def test_hdr_videos_in_a_dataset_are_flagged(tmp_path):
    from hdr_video import write_hevc

    (tmp_path / "clips").mkdir()
    spec = TurntableSpec(width=64, height=48, frames=17, fps=16.0)
    write_hevc(tmp_path / "clips" / "hlg.mp4", spec, "arib-std-b67")
    write_hevc(tmp_path / "clips" / "sdr.mp4", spec, "bt709")
    for name in ("hlg", "sdr"):
        (tmp_path / "clips" / f"{name}.txt").write_text("a car, Circle Left->Right\n")
    cfg = tmp_path / "hdr.toml"
    cfg.write_text(f'[general]\nresolution = [64, 48]\ncaption_extension = ".txt"\n\n[[datasets]]\n'
                   f'video_directory = "{(tmp_path / "clips").as_posix()}"\n'
                   f'cache_directory = "{(tmp_path / "cache").as_posix()}"\ntarget_frames = [17]\n')
    r = check_config(cfg, use_musubi=False)
    hdr = [p for p in r.problems if "HDR" in p.message]
    assert len(hdr) == 1 and hdr[0].severity == "warning" and "hlg.mp4 (HLG)" in hdr[0].message
    assert "sdr.mp4" not in hdr[0].message and "tonemap=hable" in hdr[0].fix and "circle-rotate prepare" in hdr[0].fix


def _good_config(tmp_path: Path) -> str:
    (tmp_path / "v").mkdir()
    _clips(tmp_path / "v", ["a.mp4", "b.mp4"])
    return (f'[general]\ncaption_extension = ".txt"\nresolution = [64, 48]\n\n[[datasets]]\n'
            f'video_directory = "{(tmp_path / "v").as_posix()}"\ncache_directory = "{(tmp_path / "c").as_posix()}"\n'
            f'target_frames = [17]\nframe_extraction = "head"\n')


def test_a_byte_order_mark_is_named_before_musubi_stumbles_on_it(tmp_path, musubi, capsys):
    cfg = tmp_path / "notepad.toml"
    cfg.write_bytes(b"\xef\xbb\xbf" + _good_config(tmp_path).encode())
    with pytest.raises(Exception):  # what it guards against: musubi's own reader refuses the file
        musubi.dataset.config_utils.load_user_config(str(cfg))
    assert main(["check-config", str(cfg)]) == 2
    captured = capsys.readouterr()
    problems = [line for line in captured.out.splitlines() if ": error" in line]
    assert problems == [f"{cfg}:1: error: the file starts with a UTF-8 byte-order mark (Windows Notepad adds one), "
                        "which musubi-tuner's reader rejects; fix: save it as UTF-8 without BOM (Notepad: Save as, "
                        "Encoding 'UTF-8')"]
    assert "it cannot read the file until the errors above are fixed" in captured.out
    assert "musubi_tuner" not in captured.err  # its log lines do not leak


def test_one_mistake_gives_one_error_not_its_knock_on_effects(tmp_path, musubi):
    text = _good_config(tmp_path)
    cases = {
        "heads": (text.replace('"head"', '"heads"'), "frame_extraction"),
        "no dot": (text.replace('".txt"', '"txt"'), "caption_extension"),
        "generl": (text.replace("[general]", "[generl]"), "generl"),
    }
    for name, (variant, key) in cases.items():
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(variant)
        errors = [p for p in check_config(cfg, base_dir=tmp_path).problems if p.severity == "error"]
        assert errors and all(p.key == key or "musubi-tuner rejects" in p.message for p in errors), \
            (name, [p.one_line() for p in errors])
    generl = check_config(tmp_path / "generl.toml", base_dir=tmp_path).problems[0]
    assert generl.fix == "did you mean [general]?"


def test_a_file_that_does_not_parse_does_not_claim_musubi_is_missing(tmp_path, musubi, capsys):
    cfg = tmp_path / "dup.toml"
    cfg.write_text(_good_config(tmp_path) + 'target_frames = [17]\n')
    assert main(["check-config", str(cfg)]) == 2
    out = capsys.readouterr().out
    assert "not valid TOML" in out and "not installed" not in out
    assert "musubi-tuner's own validator not run: it cannot read the file until the errors above are fixed" in out


def test_uniform_windows_that_coincide_count_once_as_musubi_caches_them(tmp_path, musubi):
    """frame_sample 3 over a 9-frame clip with target 9: musubi places three windows at frame 0, and
    their cache files share one name; check-config counts the distinct windows musubi's caching writes."""
    (tmp_path / "v").mkdir()
    for name, n in (("short", 9), ("long", 21)):
        write_video(tmp_path / "v" / f"{name}.mp4", [np.full((32, 32, 3), 10 * t, np.uint8) for t in range(n)], fps=16,
                    preset="ultrafast")
        (tmp_path / "v" / f"{name}.txt").write_text("an orbit")
    cfg = tmp_path / "u.toml"
    cfg.write_text('[general]\nresolution = [32, 32]\ncaption_extension = ".txt"\n\n[[datasets]]\n'
                   f'video_directory = "{tmp_path / "v"}"\ncache_directory = "{tmp_path / "c"}"\n'
                   'target_frames = [9]\nframe_extraction = "uniform"\nframe_sample = 3\n')
    group = _musubi_group(cfg, tmp_path)
    keys = set()
    for ds in group.datasets:
        for _, batch in ds.retrieve_latent_cache_batches(1):
            keys.update(item.item_key for item in batch)
    assert len(keys) == 1 + 3  # short: one window at 0 (three times); long: 0, 6, 12
    assert check_config(cfg, use_musubi=False).datasets[0].items == len(keys)


def test_caption_files_musubi_cannot_read_or_reads_wrongly_are_named(tmp_path, musubi):
    from circle_rotate.dataset.items import read_caption
    from musubi_tuner.dataset.datasources import VideoDirectoryDatasource

    (tmp_path / "v").mkdir()
    captions = {"utf16": "an orbit".encode("utf-16"), "latin1": "caf\xe9 orbit".encode("latin-1"),
                "utf16nobom": "an orbit".encode("utf-16-le"),
                "empty": b"  \n", "bom": b"\xef\xbb\xbfan orbit", "good": b"an orbit"}
    for name, data in captions.items():
        write_video(tmp_path / "v" / f"{name}.mp4", [np.full((32, 32, 3), 10 * t, np.uint8) for t in range(9)], fps=16,
                    preset="ultrafast")
        (tmp_path / "v" / f"{name}.txt").write_bytes(data)
    source = VideoDirectoryDatasource(str(tmp_path / "v"), caption_extension=".txt")  # the premise, from musubi
    read = {}
    for i, video in enumerate(source.video_paths):
        try:
            read[Path(video).stem] = source.get_caption(i)[1]
        except UnicodeDecodeError:
            read[Path(video).stem] = None
    assert read == {"bom": "\ufeffan orbit", "empty": "", "good": "an orbit", "latin1": None, "utf16": None,
                    "utf16nobom": "a\x00n\x00 \x00o\x00r\x00b\x00i\x00t\x00"}  # musubi takes the NULs as the prompt
    read["utf16nobom"] = None  # which we refuse, as the others it cannot read
    assert {n: read_caption(tmp_path / "v" / f"{n}.txt")[0] for n in read} == read

    cfg = tmp_path / "c.toml"
    cfg.write_text('[general]\nresolution = [32, 32]\ncaption_extension = ".txt"\n\n[[datasets]]\n'
                   f'video_directory = "{tmp_path / "v"}"\ncache_directory = "{tmp_path / "c"}"\ntarget_frames = [9]\n')
    problems = {p.message.split(":")[0]: p for p in check_config(cfg, use_musubi=False).problems}
    unreadable = problems["3 caption file(s) musubi cannot read"]
    assert "utf16nobom.txt (NUL bytes (UTF-16 without a byte-order mark?)" in unreadable.message
    assert unreadable.severity == "error" and "latin1.txt (not UTF-8 (byte 3)" in unreadable.message
    assert "utf16.txt (UTF-16" in unreadable.message and "save them as UTF-8" in unreadable.fix
    assert problems["1 caption file(s) start with a byte-order mark, which musubi passes to the text encoder as part "
                    "of the caption"].severity == "warning"
    assert "1 video(s) have no caption" in problems and "empty.mp4" in problems["1 video(s) have no caption"].message


def test_a_jsonl_problem_names_the_jsonl_line_not_the_tomls(tmp_path, musubi):
    write_video(tmp_path / "a.mp4", [np.full((32, 32, 3), 10 * t, np.uint8) for t in range(9)], fps=16, preset="ultrafast")
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"video_path": "a.mp4", "caption": "x"}\n\n{"video_path": "gone.mp4", "caption": "y"}\n')
    cfg = tmp_path / "j.toml"
    cfg.write_text('# a comment\n\n[general]\nresolution = [32, 32]\n\n[[datasets]]\n'
                   f'video_jsonl_file = "{jsonl}"\ncache_directory = "{tmp_path / "c"}"\ntarget_frames = [9]\n')
    (gone,) = [p for p in check_config(cfg, base_dir=tmp_path, use_musubi=False).problems if "do not exist" in p.message]
    assert (gone.file, gone.line) == (str(jsonl), 3)
    jsonl.write_bytes(b"\xef\xbb\xbf" + jsonl.read_bytes())
    (bom,) = [p for p in check_config(cfg, base_dir=tmp_path, use_musubi=False).problems if "byte-order mark" in p.message]
    assert (bom.file, bom.line) == (str(jsonl), 1)


def test_a_resolution_off_the_16_grid_names_musubis_own_bucket(tmp_path, musubi):
    from musubi_tuner.dataset.image_video_dataset import BucketSelector

    cfg = tmp_path / "r.toml"
    (tmp_path / "v").mkdir()
    cfg.write_text(f'[general]\nresolution = [170, 100]\n\n[[datasets]]\nvideo_directory = "{tmp_path / "v"}"\n'
                   f'cache_directory = "{tmp_path / "c"}"\ntarget_frames = [9]\n')
    (warning,) = [p for p in check_config(cfg, use_musubi=False).problems if p.key == "resolution"]
    bucket = list(BucketSelector((170, 100), architecture="wan").get_bucket_resolution((170, 100)))
    assert bucket == [176, 96] and warning.fix == f"use {bucket}"  # its area kept: not [160, 96]


def _prepare_at(root: Path, fps: int, frames: int) -> Path:
    """Two 1.3 s orbits prepared at ``fps`` (every setting but the rate as the training smoke test's),
    --qc off, captioned."""
    for i, direction in enumerate(("right", "left")):
        write_footage(TurntableSpec(name=f"take{i}", width=160, height=96, frames=40, fps=30.0, direction=direction,
                                    total_angle_deg=30, seed=i), root / "raw" / "mug")
    out = root / f"prep{fps}"
    assert main(["-q", "prepare", str(root / "raw"), "-o", str(out), "--frames", str(frames), "--fps", str(fps),
                 "--resolution", "64x64", "--qc", "off", "--keep-still", "--jobs", "1"]) == 0
    assert main(["-q", "caption", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def prepared24(tmp_path_factory) -> Path:
    """25-frame clips at 24 fps, prepare --qc off: musubi drops them to 16 frames at 16 fps."""
    return _prepare_at(tmp_path_factory.mktemp("cfg24"), 24, 25)


def _musubi_frames(group, cwd: Path):
    """The frame count of every item musubi's latent caching would encode (its own loader, no VAE)."""
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return [item.content.shape[0] for ds in group.datasets for _, batch in ds.retrieve_latent_cache_batches(1)
                for item in batch]
    finally:
        os.chdir(old)


def test_clips_prepared_at_another_fps_get_the_target_frames_musubi_leaves_after_dropping_frames(
        prepared24, tmp_path, musubi):
    """prepare --fps 24 makes 25-frame clips; musubi drops frames to 16 fps before it compares their
    length with target_frames (media_utils.load_video: 16 of them, its float index losing one), so
    target_frames = [25] takes none. config writes the longest 4n+1 musubi has, 13, and musubi's own
    loader then takes every clip, 13 frames from its first; 17 (the next 4n+1) would take none."""
    clips = accepted_clips(read_manifest(prepared24 / MANIFEST_NAME))
    assert len(clips) == 2 and {(c["frames"], c["fps"]) for c in clips} == {(25, 24.0)}  # the premise
    out = tmp_path / "ds.toml"
    assert main(["-q", "config", str(prepared24), "-o", str(out)]) == 0
    text = out.read_text()
    ds = toml.loads(text)["datasets"][0]
    assert (ds["target_frames"], ds["frame_extraction"], ds["source_fps"]) == ([13], "head", 24.0)
    seen = _musubi_frames(_musubi_group(out, tmp_path), tmp_path)
    assert seen == [13, 13] and all((n - 1) % 4 == 0 for n in seen)
    longer = tmp_path / "longer.toml"
    longer.write_text(text.replace("target_frames = [13]", "target_frames = [17]"))
    assert _musubi_frames(_musubi_group(longer, tmp_path), tmp_path) == []  # 13 is the longest musubi gives
    # the comments say what happens at 24 fps, not what would at 16
    assert "drops no frames" not in text and "Clips are exactly this long" not in text
    said = " ".join(text.replace("\n# ", " ").split())  # the comments as one text, unwrapped
    assert "The clips hold 25 frames at 24 fps; musubi drops frames to bring them to 16 fps" in said
    assert "16 of every 24 frames" in said and "2 clip(s) of 25 frames at 24 fps (musubi takes 13 at 16 fps)" in text


def test_clips_under_16_fps_are_refused_with_the_fix_musubi_would_take_none(tmp_path, musubi, capsys):
    """musubi's source_fps only drops frames; under 16 fps its 'head' read stops at the target's
    index, which a slower clip reaches with fewer frames than the target: no clip gives an item."""
    prep = _prepare_at(tmp_path, 12, 9)
    (tmp_path / "hand.toml").write_text(f'[general]\nresolution = [64, 64]\ncaption_extension = ".txt"\n[[datasets]]\n'
                                        f'video_directory = "{(prep / "videos").as_posix()}"\n'
                                        f'cache_directory = "{(tmp_path / "c").as_posix()}"\n'
                                        f'target_frames = [9]\nframe_extraction = "head"\nsource_fps = 12.0\n')
    assert _musubi_frames(_musubi_group(tmp_path / "hand.toml", tmp_path), tmp_path) == []  # the premise
    capsys.readouterr()
    assert main(["-q", "config", str(prep), "-o", str(tmp_path / "ds.toml")]) == 2
    err = capsys.readouterr().err
    assert "at 12 fps, under Wan2.2's 16" in err and "fix: prepare them again with --fps 16" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "ds.toml").exists()


def test_config_comments_follow_the_values_written(prepared, prepared24, tmp_path):
    """Batch size, rescaling and QC are said as they are, not as the defaults would have them."""
    plain = tmp_path / "plain.toml"
    assert main(["-q", "config", str(prepared), "-o", str(plain)]) == 0
    text = plain.read_text()
    assert "# One clip per step" in text and "checked to orbit by `circle-rotate prepare` (--qc strict)" in text
    said = " ".join(text.replace("\n# ", " ").split())  # the comments as one text, unwrapped
    assert "prepare cut the clips to exactly those sizes, so nothing is resampled twice" in said
    other = tmp_path / "other.toml"
    assert main(["-q", "config", str(prepared24), "-o", str(other), "--batch-size", "2", "--resolution", "128x128"]) == 0
    text = other.read_text()
    assert toml.loads(text)["general"]["batch_size"] == 2
    assert "One clip per step" not in text and "# 2 clips per step" in text
    said = " ".join(text.replace("\n# ", " ").split())  # the comments as one text, unwrapped
    assert "nothing is" not in said and "2 clip(s) are not at their bucket, so musubi rescales them (first: " in said
    assert " 80x48 -> 160x96)" in said and "`circle-rotate prepare --resolution 128x128` would cut them" in said
    assert "checked to orbit" not in text and "kept by `circle-rotate prepare --qc off` (no orbit check)" in text


def test_a_jsonl_config_relative_to_the_training_folder_moves_with_it(prepared, tmp_path, musubi, capsys):
    """musubi opens each video_path of a JSONL as written, from its working folder. A config written
    --relative-to over a JSONL of absolute paths would break once the folder moves: config refuses it
    and names the fix, caption --jsonl --relative-to writes paths that move with it."""
    project = tmp_path / "project"
    shutil.copytree(prepared, project / "prepared", ignore=shutil.ignore_patterns("dataset.jsonl", "*.toml", "cache"))
    copy = project / "prepared"
    absolute = copy / "absolute.jsonl"
    assert main(["-q", "caption", str(copy), "--jsonl", str(absolute)]) == 0
    capsys.readouterr()
    assert main(["-q", "config", str(copy), "-o", str(copy / "ds.toml"), "--jsonl", str(absolute),
                 "--relative-to", str(project)]) == 2
    err = capsys.readouterr().err
    assert "video_path value(s) in it are absolute" in err and len(err.strip().splitlines()) == 1
    assert f"--jsonl {absolute} --relative-to {project}" in err and not (copy / "ds.toml").exists()
    relative = copy / "relative.jsonl"
    assert main(["-q", "caption", str(copy), "--jsonl", str(relative), "--relative-to", str(project)]) == 0
    paths = [json.loads(line)["video_path"] for line in relative.read_text().splitlines()]
    assert paths and all(p.startswith("prepared/videos/") for p in paths)
    assert main(["-q", "config", str(copy), "-o", str(copy / "ds.toml"), "--jsonl", str(relative),
                 "--relative-to", str(project)]) == 0
    assert "relative to the folder training runs from" in (copy / "ds.toml").read_text()
    moved = tmp_path / "elsewhere"
    shutil.move(str(project), str(moved))
    report = check_config(moved / "prepared" / "ds.toml", base_dir=moved, use_musubi=False)
    assert report.ok and report.datasets[0].videos == len(paths), [p.one_line() for p in report.problems]
    assert _musubi_frames(_musubi_group(moved / "prepared" / "ds.toml", moved), moved) == [9] * len(paths)
