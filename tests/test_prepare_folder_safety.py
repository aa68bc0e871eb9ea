"""``prepare`` keeps an output folder whose clips and manifest lines agree, and deletes nothing it
did not write: foreign files, Ctrl-C (first run and a settings change), sources gone from RAW,
an earlier output folder inside RAW, camcorder containers."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from circle_rotate.cli.main import main
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.video_io import probe_video, read_video, write_video
from circle_rotate.prepare import run as prepare_run
from circle_rotate.prepare.manifest import MANIFEST_NAME, read_manifest
from circle_rotate.prepare.options import PrepareOptions
from circle_rotate.prepare.prepared_folder import check_prepared, clip_files
from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec, write_footage, write_turntable

ARGS = ["--frames", "9", "--fps", "16", "--resolution", "160x96", "--jobs", "1", "--preset", "ultrafast"]
OPTIONS = dict(frames=9, fps=16.0, jobs=1, preset="ultrafast")


def _orbit(folder: Path, name: str, seed: int, direction: str = "right") -> Path:
    spec = TurntableSpec(name=name, width=160, height=96, frames=30, fps=24.0, total_angle_deg=40, subject="car",
                         direction=direction, seed=seed)
    return write_footage(spec, folder)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("raw")
    for i, direction in enumerate(("right", "left", "right")):
        _orbit(folder, f"take{i}", seed=20 + i, direction=direction)
    return folder


def _prepare(raw: Path, out: Path, *extra: str) -> int:
    return main(["-q", "prepare", str(raw), "-o", str(out), *ARGS, *extra])


def _clip_names(out: Path) -> set:
    return {p.name for p in clip_files(out)}


def test_a_folder_holding_someone_elses_videos_is_refused_and_repair_moves_them_aside(raw, tmp_path, capsys):
    out = tmp_path / "proj"
    (out / "videos").mkdir(parents=True)
    own = out / "videos" / "my edit.mp4"
    own.write_bytes((raw / "take0.mp4").read_bytes())
    data = own.read_bytes()
    assert _prepare(raw, out) == 2
    err = capsys.readouterr().err
    assert "no manifest.jsonl: not a folder prepare wrote" in err and "videos/my edit.mp4" in err and "--repair" in err
    assert err.count("\n") == 1 and own.read_bytes() == data and not (out / MANIFEST_NAME).exists()

    assert _prepare(raw, out, "--repair") == 0
    assert "moved 1 file(s)" in capsys.readouterr().out
    assert not own.exists() and (out / "set_aside" / "videos" / "my edit.mp4").read_bytes() == data  # nothing lost
    check_prepared(out)  # every clip left in videos/ is prepare's, with its line
    assert main(["-q", "caption", str(out)]) == 0  # its readers take it


def test_a_stray_clip_beside_prepared_ones_is_refused_without_repair(raw, tmp_path, capsys):
    out = tmp_path / "P"
    assert _prepare(raw, out) == 0
    stray = out / "videos" / "stray.mp4"
    stray.write_bytes((raw / "take1.mp4").read_bytes())
    assert _prepare(raw, out) == 2
    assert "1 clip(s) on disk not in the manifest (first: videos/stray.mp4)" in capsys.readouterr().err
    assert stray.is_file()


def _interrupting(monkeypatch, after: int) -> None:
    """Ctrl-C arriving while source ``after`` (0-based) is being made, after it wrote its clips:
    the clips are on disk and no manifest line names them, as with a worker cut short."""
    real, calls = prepare_run.process_source, []

    def process(job):
        records = real(job)
        calls.append(job.rel)
        if len(calls) > after:
            raise KeyboardInterrupt
        return records

    monkeypatch.setattr(prepare_run, "process_source", process)


def test_ctrl_c_in_a_first_run_keeps_finished_sources_and_removes_the_rest(raw, tmp_path, monkeypatch):
    out = tmp_path / "P"
    _interrupting(monkeypatch, after=1)
    with pytest.raises(prepare_run.PrepareInterrupted) as caught:
        prepare_run.prepare_dataset(raw, out, options=PrepareOptions(**OPTIONS))
    assert "1 of 3 source(s) finished" in caught.value.kept
    records = check_prepared(out)  # agree: the unfinished source's clips are gone with it
    assert {r["source"] for r in records if r.get("type") == "source"} == {"take0.mp4"}
    assert all(name.startswith("take0_") for name in _clip_names(out))

    monkeypatch.undo()
    report = prepare_run.prepare_dataset(raw, out, options=PrepareOptions(**OPTIONS))
    assert (report.processed, report.unchanged) == (2, 1)
    check_prepared(out)


def test_ctrl_c_while_remaking_with_new_settings_loses_no_old_line(raw, tmp_path, monkeypatch):
    out = tmp_path / "P"
    prepare_run.prepare_dataset(raw, out, options=PrepareOptions(**OPTIONS))
    old = _clip_names(out)
    _interrupting(monkeypatch, after=1)
    with pytest.raises(prepare_run.PrepareInterrupted):
        prepare_run.prepare_dataset(raw, out, options=PrepareOptions(**{**OPTIONS, "frames": 13}))
    records = check_prepared(out)
    frames = {r["source"]: r["frames"] for r in records if r.get("type") == "clip"}
    assert frames == {"take0.mp4": 13, "take1.mp4": 9, "take2.mp4": 9}  # the unfinished keep their old clips
    assert {n for n in old if not n.startswith("take0_")} <= _clip_names(out)

    monkeypatch.undo()
    prepare_run.prepare_dataset(raw, out, options=PrepareOptions(**{**OPTIONS, "frames": 13}))
    assert {r["frames"] for r in check_prepared(out) if r.get("type") == "clip"} == {13}
    assert not old & _clip_names(out)  # the old 9-frame clips went as their sources were re-made


def test_the_cli_says_what_an_interrupted_run_kept(raw, tmp_path, monkeypatch, capsys):
    _interrupting(monkeypatch, after=0)
    assert _prepare(raw, tmp_path / "P") == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("circle-rotate prepare: interrupted; 0 of 3 source(s) finished") and "resume" in err


def test_a_source_gone_from_raw_is_reported_and_pruned_on_request(raw, tmp_path, capsys):
    mine = tmp_path / "raw"
    mine.mkdir()
    for name in ("take0.mp4", "take1.mp4"):
        (mine / name).write_bytes((raw / name).read_bytes())
    out = tmp_path / "P"
    assert _prepare(mine, out) == 0
    take1 = {n for n in _clip_names(out) if n.startswith("take1_")}
    assert take1
    (mine / "take1.mp4").unlink()
    capsys.readouterr()
    assert main(["prepare", str(mine), "-o", str(out), *ARGS]) == 0
    printed = capsys.readouterr().out
    assert "1 source(s) (0 processed, 1 unchanged): 1 ok" in printed
    assert f"1 source(s) in the manifest are not under {mine} (first: take1.mp4): their {len(take1)} clip(s)" \
        in printed and "--prune" in printed
    assert take1 <= _clip_names(out)
    assert json.loads((out / "prepare_summary.json").read_text())["not_under_raw"] == ["take1.mp4"]

    captions = [(out / "videos" / name).with_suffix(".txt") for name in sorted(take1)]
    captions[0].write_text("hand-edited caption")
    assert main(["prepare", str(mine), "-o", str(out), *ARGS, "--prune"]) == 0
    printed = capsys.readouterr().out
    assert "pruned 1 source(s)" in printed
    assert "moved 1 file(s)" in printed
    assert not take1 & _clip_names(out)
    # the pruned clip's caption is set aside, not deleted, and not left for a later clip of that name
    assert not captions[0].exists()
    assert (out / "set_aside" / "videos" / captions[0].name).read_text() == "hand-edited caption"
    assert {r["source"] for r in check_prepared(out)} == {"take0.mp4"}


def test_an_earlier_output_folder_inside_raw_is_not_footage(raw, tmp_path, capsys):
    mine = tmp_path / "raw"
    mine.mkdir()
    (mine / "take0.mp4").write_bytes((raw / "take0.mp4").read_bytes())
    (mine / "notes.txt").write_text("lens: 35 mm\n")
    assert _prepare(mine, mine / "prepared") == 0
    capsys.readouterr()
    assert main(["prepare", str(mine), "-o", str(tmp_path / "again"), *ARGS]) == 0
    printed = capsys.readouterr().out
    n = len(clip_files(mine / "prepared"))
    assert "1 source(s) (1 processed, 0 unchanged)" in printed  # not clips of clips
    assert f"passed over {n} clip(s) of an earlier prepare's output" in printed
    assert "passed over 1 text file(s) that are no video's caption as musubi pairs them (first: notes.txt)" in printed
    assert {r["source"] for r in read_manifest(tmp_path / "again" / MANIFEST_NAME)} == {"take0.mp4"}


def test_camcorder_containers_are_footage(raw, tmp_path):
    """AVCHD (.MTS) and MPEG-TS: the same H.264 stream remuxed, read like the .mp4."""
    mine = tmp_path / "raw"
    mine.mkdir()
    for name in ("studio_cam.MTS", "capture.ts"):
        with av.open(str(raw / "take0.mp4")) as src, av.open(str(mine / name), "w", format="mpegts") as dst:
            stream = dst.add_stream_from_template(src.streams.video[0])
            for packet in src.demux(src.streams.video[0]):
                if packet.dts is not None:
                    packet.stream = stream
                    dst.mux(packet)
    report = prepare_run.prepare_dataset(mine, tmp_path / "P", options=PrepareOptions(**OPTIONS))
    assert report.statuses == {"ok": 2} and report.clips >= 2 and not report.not_video


def test_an_animated_webp_is_footage_and_a_still_png_is_not(raw, tmp_path):
    """An orbit saved as an animated WebP (as ComfyUI saves): read through Pillow, cut like a video."""
    from PIL import Image

    mine = tmp_path / "raw"
    mine.mkdir()
    frames = [Image.fromarray(f) for f in read_video(raw / "take0.mp4")]
    frames[0].save(mine / "orbit.webp", save_all=True, append_images=frames[1:], duration=1000 // 24, lossless=True)
    frames[0].save(mine / "poster.png")
    report = prepare_run.prepare_dataset(mine, tmp_path / "P", options=PrepareOptions(**OPTIONS))
    assert report.statuses == {"ok": 1} and report.clips >= 1 and report.not_video == ("poster.png",)
    clip = read_video(clip_files(tmp_path / "P")[0])
    assert clip.shape[0] == 9


def _boxed_and_plain(raw: Path, folder: Path, pad: tuple, crf: int) -> Path:
    """``folder`` holding take0 (160x96) as it is (plain.mp4) and padded with black by ``pad``
    ((top, bottom), (left, right)) (boxed.mp4)."""
    folder.mkdir()
    frames = read_video(raw / "take0.mp4")
    write_video(folder / "boxed.mp4", [np.pad(f, (*pad, (0, 0))) for f in frames], fps=24, crf=crf)
    write_video(folder / "plain.mp4", frames, fps=24, crf=crf)
    return folder


def test_letterboxed_footage_gets_a_note_with_the_crop_that_removes_the_bars(raw, tmp_path, capsys):
    """The clips keep what the source shows; the note gives FFmpeg's crop of the source, exactly."""
    mine = _boxed_and_plain(raw, tmp_path / "raw", ((20, 20), (0, 0)), crf=16)
    assert _prepare(mine, tmp_path / "P") == 0
    heads = {r["source"]: r for r in read_manifest(tmp_path / "P" / MANIFEST_NAME) if r["type"] == "source"}
    note = next(n for n in heads["boxed.mp4"]["notes"] if n.startswith("black bars"))
    assert "crop=160:96:0:20 " in note
    assert not any(n.startswith("black bars") for n in heads["plain.mp4"]["notes"])
    assert "1 source(s) keep black bars in their clips (first: boxed.mp4: black bars in" in capsys.readouterr().out


def test_crop_bars_trains_on_the_picture_the_bars_frame(raw, tmp_path, capsys):
    """Bars on all four sides, unequal: the clips of the boxed source are the plain source's clips."""
    from circle_rotate.media.borders import find_bars
    import cv2

    mine = _boxed_and_plain(raw, tmp_path / "raw", ((10, 30), (24, 16)), crf=12)
    assert _prepare(mine, tmp_path / "P", "--crop-bars") == 0
    assert "keep black bars" not in capsys.readouterr().out
    records = read_manifest(tmp_path / "P" / MANIFEST_NAME)
    heads = {r["source"]: r for r in records if r["type"] == "source"}
    assert "black bars cropped off (10 rows at the top, 30 rows at the bottom, 24 columns at the left, 16 columns " \
           "at the right of the source: crop=160:96:24:10)" in heads["boxed.mp4"]["notes"]
    assert not any("black bars" in n for n in heads["plain.mp4"]["notes"])
    first = {}  # each source's first clip
    for r in records:
        if r["type"] == "clip":
            first.setdefault(r["source"], tmp_path / "P" / r["clip"])
    boxed, plain = read_video(first["boxed.mp4"]), read_video(first["plain.mp4"])
    assert boxed.shape == plain.shape == (9, 96, 160, 3)
    assert np.abs(boxed.astype(int) - plain).mean() < 3  # the same picture, two encodes apart
    assert not find_bars(np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in boxed]))


def test_a_second_prepare_into_the_same_folder_is_refused_while_the_first_runs(raw, tmp_path):
    import fcntl
    import os

    out = tmp_path / "P"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)  # the first run's hold
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(UserError, match="another prepare is writing into this folder"):
            prepare_run.prepare_dataset(raw, out, options=PrepareOptions(**OPTIONS))
        with pytest.raises(UserError, match="another prepare is writing into this folder"):  # --dry-run too
            prepare_run.plan_prepare(raw, out, options=PrepareOptions(**OPTIONS))
    finally:
        os.close(fd)
    assert list(out.iterdir()) == []
    assert prepare_run.prepare_dataset(raw, out, options=PrepareOptions(**OPTIONS)).ok  # once it is gone


def test_a_manifest_that_cannot_be_written_leaves_a_folder_the_next_run_takes(raw, tmp_path, monkeypatch):
    """A full disk while writing the lines of a finished source: its clips go with them, so the
    plain rerun (not --repair) goes on."""
    import errno

    real, calls = prepare_run.write_manifest, []

    def full_disk_on_the_second(path, lines):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, lines)

    monkeypatch.setattr(prepare_run, "write_manifest", full_disk_on_the_second)
    out = tmp_path / "P"
    with pytest.raises(OSError):
        prepare_run.prepare_dataset(raw, out, options=PrepareOptions(**OPTIONS))
    check_prepared(out)  # clips and lines agree
    monkeypatch.setattr(prepare_run, "write_manifest", real)
    report = prepare_run.prepare_dataset(raw, out, options=PrepareOptions(**OPTIONS))
    assert report.ok and report.statuses == {"ok": 3}


def _dies(job):
    import os

    os._exit(9)  # as the OOM killer ends a worker


def test_a_worker_that_dies_is_one_line_naming_the_source(raw, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_run, "process_source", _dies)
    with pytest.raises(UserError, match="take.*: a worker process died while preparing .*fix: run again with --jobs 1"):
        prepare_run.prepare_dataset(raw, tmp_path / "P", options=PrepareOptions(**{**OPTIONS, "jobs": 2}))
    assert not (tmp_path / "P").exists()


def test_a_dv_tape_capture_reads_at_its_frame_rate_not_its_time_base(tmp_path):
    """DV's demuxer reports the 1/60000 time base as the average rate: 29.97 fps it is."""
    path = tmp_path / "tape.dv"
    with av.open(str(path), "w", format="dv") as dst:
        stream = dst.add_stream("dvvideo", rate=Fraction(30000, 1001))
        stream.width, stream.height, stream.pix_fmt = 720, 480, "yuv411p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((480, 720, 3), 20 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    with av.open(str(path)) as src:
        assert src.streams.video[0].average_rate == 60000  # the container's claim this guards against
    info = probe_video(path)
    assert info.fps == pytest.approx(30000 / 1001) and info.frame_count == 10
    assert info.duration == pytest.approx(10 * 1001 / 30000, abs=1e-3)


def test_one_frame_clips_are_refused(raw, tmp_path, capsys):
    assert _prepare(raw, tmp_path / "P", "--frames", "1") == 2
    assert "--frames 1 is too few: a clip needs at least 5 frames" in capsys.readouterr().err
    assert not (tmp_path / "P").exists()


def test_sources_smaller_than_asked_are_said_and_configured_at_their_own_size(raw, tmp_path, capsys):
    import tomllib

    out = tmp_path / "P"
    assert main(["prepare", str(raw), "-o", str(out), *ARGS, "--resolution", "832x480"]) == 0
    report = capsys.readouterr().out
    n = len(clip_files(out))
    assert f"{n} clip(s) are smaller than 832x480, as their sources are (--upscale scales them up)" in report
    assert main(["-q", "caption", str(out)]) == 0 and main(["-q", "config", str(out)]) == 0
    config = tomllib.loads((out / "dataset.toml").read_text())
    assert config["general"]["resolution"] == [160, 96]  # not 832x480, which musubi would blow them up to
    assert "rescale" not in capsys.readouterr().out


@pytest.mark.parametrize("second", [dict(start_azimuth_deg=120), dict(direction="left", start_azimuth_deg=60)])
def test_a_cut_between_two_takes_of_one_set_is_a_cut(tmp_path, second):
    """The colours barely change, so PySceneDetect misses it; the picture jumps (the subject stands
    at another angle), which the motion-compensated residual sees. Under --qc lenient a clip across
    it was kept, with one caption for two takes."""
    from circle_rotate.kernel.video_io import write_video
    from circle_rotate.selfcheck.synthetic.turntable import render_frames

    def take(**kw):
        spec = TurntableSpec(width=192, height=112, frames=60, fps=30.0, total_angle_deg=45, subject="car",
                             background="studio", seed=51, **kw)
        return [f.image for f in render_frames(spec)]

    raw = tmp_path / "raw"
    raw.mkdir()
    write_video(raw / "takes.mp4", take() + take(**second), fps=30, preset="veryfast")
    report = prepare_run.prepare_dataset(raw, tmp_path / "P", options=PrepareOptions(
        **{**OPTIONS, "frames": 17, "qc": "lenient"}))
    records = read_manifest(report.manifest)
    head = next(r for r in records if r.get("type") == "source")
    assert "1 scene cut(s)" in head["notes"]
    clips = [r for r in records if r.get("type") == "clip"]
    assert clips and all(not (c["start_time"] < 2.0 <= c["end_time"]) for c in clips), \
        [(c["start_time"], c["end_time"]) for c in clips]


def test_a_dry_run_makes_the_runs_checks_and_says_what_is_unchanged(raw, tmp_path, capsys):
    out = tmp_path / "P"
    assert _prepare(raw, out, "--dry-run", "--frames", "1") == 2  # the run's own option check
    assert main(["prepare", str(raw), "-o", str(out), *ARGS, "--dry-run"]) == 0
    assert "3 source(s) would be prepared" in capsys.readouterr().out and not out.exists()
    assert _prepare(raw, out) == 0
    (out / "videos" / "mine.mp4").write_bytes((raw / "take0.mp4").read_bytes())
    assert _prepare(raw, out, "--dry-run") == 2  # a file prepare did not write, as the run would say
    (out / "videos" / "mine.mp4").unlink()
    capsys.readouterr()
    assert main(["prepare", str(raw), "-o", str(out), *ARGS, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("0 source(s) would be prepared into") and ", 3 unchanged" in printed


def test_a_source_given_alone_is_the_same_source_and_prune_needs_the_folder(raw, tmp_path, capsys):
    out = tmp_path / "P"
    assert _prepare(raw, out) == 0
    lines = len(read_manifest(out / MANIFEST_NAME))
    assert _prepare(raw / "take1.mp4", out) == 0  # the same file, named another way: not a second source
    records = read_manifest(out / MANIFEST_NAME)
    assert len(records) == lines and {r["source"] for r in records if r.get("type") == "source"} == {
        "take0.mp4", "take1.mp4", "take2.mp4"}
    assert _prepare(raw / "take1.mp4", out, "--prune") == 2
    assert "--prune with one video as RAW_DIR" in capsys.readouterr().err


def test_a_raw_folder_holding_only_an_earlier_output_says_so(raw, tmp_path, capsys):
    out = tmp_path / "P"
    assert _prepare(raw, out) == 0
    assert _prepare(out, tmp_path / "again") == 2
    assert "it holds only an earlier prepare's output" in capsys.readouterr().err


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_to_the_process_group_mid_run_is_one_line_with_workers(tmp_path, signame):
    """Ctrl-C (and timeout's SIGTERM) reach every worker too; none may print its traceback."""
    import os
    import signal
    import subprocess
    import sys
    import time

    mine = tmp_path / "raw"
    for i in range(6):
        spec = TurntableSpec(name=f"t{i}", width=160, height=96, frames=90, fps=24.0, total_angle_deg=60, seed=30 + i)
        write_turntable(spec, mine).truth.unlink()
    out = tmp_path / "P"
    run = subprocess.Popen([sys.executable, "-m", "circle_rotate", "-q", "prepare", str(mine), "-o", str(out), *ARGS[:6],
                            "--jobs", "2", "--preset", "ultrafast"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    deadline = time.time() + 120
    while not (out / MANIFEST_NAME).exists() and run.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, getattr(signal, signame))
    _, err = run.communicate(timeout=120)
    if run.returncode == 0:
        pytest.skip("the run finished before the signal arrived (a fast machine): nothing to see")
    assert run.returncode == 128 + getattr(signal, signame)
    assert "Traceback" not in err and "Error" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("circle-rotate prepare: ")
    check_prepared(out)  # the folder agrees with its manifest


_KILLER = """
import os, signal, sys
from circle_rotate.cli.main import main
from circle_rotate.prepare import run
where, after = sys.argv[1], int(sys.argv[2])
real, done = getattr(run, where), []

def killed(*args, **kwargs):  # SIGKILL: no handler, no finally, no tidying runs
    if where == "_remove_stale":  # before it does its work
        os.kill(os.getpid(), signal.SIGKILL)
    out = real(*args, **kwargs)
    done.append(1)
    if len(done) > after:
        os.kill(os.getpid(), signal.SIGKILL)
    return out

setattr(run, where, killed)
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("where, after, remake", [
    ("process_source", 0, False),  # killed in the first run's first source: clips and no manifest at all
    ("process_source", 1, False),  # killed after one source's lines: a manifest and clips it does not name
    ("_remove_stale", 0, True),  # killed between a re-made source's new lines and dropping its old clips
])
def test_a_run_killed_outright_is_resumed_by_the_same_command(raw, tmp_path, capsys, where, after, remake):
    import subprocess
    import sys

    out = tmp_path / "P"
    args = ["-q", "prepare", str(raw), "-o", str(out), *ARGS]
    if remake:
        assert _prepare(raw, out) == 0
        args[args.index("9")] = "13"  # new settings: every source is re-made, its 9-frame clips dropped
    run = subprocess.run([sys.executable, "-c", _KILLER, where, str(after), *args], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == -9, run.stderr[-2000:]
    left = _clip_names(out)
    assert left, "the kill left no clip behind: nothing was tested"

    assert main(["-q", "caption", str(out)]) == 2  # its readers say what happened and what to run
    err = capsys.readouterr().err
    assert "a prepare run writing here was stopped before it finished" in err and "run the same prepare command" in err
    assert err.count("\n") == 1

    stray = out / "videos" / "mine.mp4"  # a file the user put there is still theirs
    stray.write_bytes((raw / "take0.mp4").read_bytes())
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "(first: videos/mine.mp4)" in err and "--repair" in err and stray.is_file()
    stray.unlink()

    assert main([*args, "--dry-run"]) == 0
    assert "left unfinished (it was killed) would be removed first" in capsys.readouterr().out
    assert _clip_names(out) == left  # a dry run removes nothing

    assert main(args[1:]) == 0  # the same command, no --repair
    said = capsys.readouterr().out
    assert "an earlier prepare run was killed before listing" in said
    records = check_prepared(out)
    assert {r["source"] for r in records if r.get("type") == "source"} == {"take0.mp4", "take1.mp4", "take2.mp4"}
    assert {r["frames"] for r in records if r.get("type") == "clip"} == {13 if remake else 9}
    assert not (out / ".prepare_journal").exists()


def test_footage_that_turns_back_is_rejected_by_strict_qc_and_kept_by_lenient(tmp_path):
    from circle_rotate.selfcheck.synthetic.turntable import render_frames

    spec = TurntableSpec(name="pingpong", width=160, height=96, frames=33, total_angle_deg=50, subject="car", seed=71)
    render = [f.image for f in render_frames(spec)]
    frames = render[0:33:2] + render[31:15:-2]  # 17 frames forward, 8 back: one 25-frame clip
    src = tmp_path / "raw" / "pingpong.mp4"
    src.parent.mkdir()
    write_video(src, frames, fps=16)
    for qc, verdict in (("strict", "reject"), ("lenient", "accept")):
        out = tmp_path / qc
        assert main(["-q", "prepare", str(src.parent), "-o", str(out), "--frames", "25", "--fps", "16",
                     "--resolution", "160x96", "--jobs", "1", "--preset", "ultrafast", "--qc", qc]) == 0
        (clip,) = [r for r in read_manifest(out / MANIFEST_NAME) if r["type"] == "clip"]
        assert clip["verdict"] == verdict and clip["orbit"]["reversal"] > 0.2
        assert any("the camera turns back" in r for r in clip["reasons"]), clip["reasons"]


def test_a_run_killed_before_its_first_clip_is_no_prepared_folder_yet(raw, tmp_path, capsys):
    from circle_rotate.prepare.prepared_folder import JOURNAL_NAME

    out = tmp_path / "P"
    (out / "videos").mkdir(parents=True)
    (out / JOURNAL_NAME).write_text("")  # a first run killed while decoding its first source
    assert main(["-q", "caption", str(out)]) == 2
    assert "stopped before it finished a source" in capsys.readouterr().err
    assert _prepare(raw, out) == 0 and check_prepared(out) and not (out / JOURNAL_NAME).exists()


def _title_card(frames):
    import cv2

    card = []
    for _ in range(30):  # over a second of white text on black before the footage
        c = np.zeros_like(frames[0])
        cv2.putText(c, "MY CAR", (30, 50), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
        card.append(c)
    return card + list(frames)


def _bars_first_half(frames):
    out = [f.copy() for f in frames]
    for f in out[:len(out) // 2]:
        f[:12], f[-12:] = 0, 0
    return out


def _dark_sky(frames):
    return [np.concatenate([(f[:30] * 0.08), (f[30:] * 0.6)]).astype(np.uint8) for f in frames]


@pytest.mark.parametrize("make", [_title_card, _bars_first_half, _dark_sky], ids=["title-card", "bars-first-half",
                                                                                  "dark-sky"])
def test_crop_bars_never_crops_what_is_no_letterbox_of_the_whole_video(raw, tmp_path, make):
    """Black that is not bars around the whole video: a title card, bars only at the start, a dark
    sky above the scene. The picture is kept whole, and no note offers a crop of the source."""
    mine = tmp_path / "raw"
    mine.mkdir()
    write_video(mine / "odd.mp4", make(read_video(raw / "take0.mp4")), fps=24, crf=16)
    assert main(["-q", "prepare", str(mine), "-o", str(tmp_path / "P"), *ARGS, "--crop-bars", "--qc", "off"]) == 0
    records = read_manifest(tmp_path / "P" / MANIFEST_NAME)
    (head,) = [r for r in records if r["type"] == "source"]
    assert not any("cropped off" in n or "crop=" in n for n in head["notes"]), head["notes"]
    assert {(r["width"], r["height"]) for r in records if r["type"] == "clip"} == {(160, 96)}


def test_an_output_that_is_raw_through_a_link_or_dotdot_is_refused(raw, tmp_path, capsys):
    link = tmp_path / "link_to_raw"
    link.symlink_to(raw, target_is_directory=True)
    before = sorted(p.name for p in raw.iterdir())
    for out in (link, raw / ".." / raw.name, link / "sub" / ".."):
        assert _prepare(raw, out) == 2, out
        assert "raw folder itself" in capsys.readouterr().err
    inside = tmp_path / "holder"
    (inside / "raw_inside").mkdir(parents=True)
    (tmp_path / "holder_link").symlink_to(inside, target_is_directory=True)
    assert _prepare(inside / "raw_inside", tmp_path / "holder_link") == 2  # RAW inside OUT, through a link
    assert "inside the output folder" in capsys.readouterr().err
    assert sorted(p.name for p in raw.iterdir()) == before  # nothing written into RAW
