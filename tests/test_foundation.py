"""Shared pieces: errors, atomic output, safetensors streaming, video I/O, the CLI shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from circle_rotate.kernel.atomic import atomic_path, check_output_path, write_json
from circle_rotate.kernel.errors import InputOverwriteError, UserError
from circle_rotate.kernel.safetensors_io import SafetensorsWriter, copy_raw, iter_tensors, read_header, read_tensor
from circle_rotate.kernel.video_io import iter_frames, probe_video, read_video, write_video


def test_user_error_is_one_line_with_path_and_fix():
    err = UserError("key 'a'\n has no pair", path="x.safetensors", fix="re-save it")
    assert str(err) == "x.safetensors: key 'a' has no pair; fix: re-save it"


def test_atomic_path_leaves_nothing_on_failure_or_interrupt(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with atomic_path(target) as tmp:
                tmp.write_bytes(b"partial")
                raise exc
        assert target.read_bytes() == b"old"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".bin" and tmp.parent == tmp_path
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"


def test_a_name_near_the_file_systems_limit_is_written_and_one_past_it_refused(tmp_path):
    """The temporary name adds ~15 bytes: the stem it carries is cut short, not the write."""
    near = tmp_path / ("é" * 118 + ".safetensors")  # 236 + 12 = 248 bytes
    write_json(near, {"a": 1})
    assert json.loads(near.read_text()) == {"a": 1} and sorted(tmp_path.iterdir()) == [near]
    past = tmp_path / ("z" * 251 + ".json")
    for call in (lambda: write_json(past, {}), lambda: check_output_path(past)):
        with pytest.raises(UserError, match="the file name is 256 bytes long; file systems take 255"):
            call()
    assert sorted(tmp_path.iterdir()) == [near]


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_a_killed_writes_temporary_file_goes_with_the_next_write_a_live_ones_stays(tmp_path):
    import fcntl

    target = tmp_path / "m.safetensors"
    dead = tmp_path / ".m.abcd1234.part.safetensors"  # a SIGKILLed merge's
    dead.write_bytes(b"x" * 1000)
    live = tmp_path / ".m.live_123.part.safetensors"  # another run writing it right now
    live.write_bytes(b"y")
    other = tmp_path / ".m2.abcd1234.part.safetensors"  # another output's
    other.write_bytes(b"z")
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        write_json(target, {"a": 1})
    assert not dead.exists() and live.exists() and other.exists() and target.exists()


def test_an_output_another_run_wrote_meanwhile_is_not_replaced(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(UserError, match="another run wrote this output while this one was writing it"):
        with atomic_path(target) as tmp:
            tmp.write_text("mine")
            target.write_text("theirs")  # a second run, started at the same time, finished first
    assert target.read_text() == "theirs" and sorted(tmp_path.iterdir()) == [target]
    with atomic_path(target) as tmp:  # replacing what existed when the write began is the caller's choice
        tmp.write_text("mine")
    assert target.read_text() == "mine"
    same = tmp_path / "shared.yaml"  # each node of a multi-node run writes the same config: no conflict
    with atomic_path(same) as tmp:
        tmp.write_text("num_machines: 2")
        same.write_text("num_machines: 2")
    assert same.read_text() == "num_machines: 2" and sorted(tmp_path.iterdir()) == [target, same]


def test_check_output_path_refuses_inputs_and_existing(tmp_path):
    src = tmp_path / "in.safetensors"
    src.write_bytes(b"x")
    with pytest.raises(InputOverwriteError):
        check_output_path(src, inputs=[src], force=True)
    link = tmp_path / "alias.safetensors"
    os.symlink(src, link)
    with pytest.raises(InputOverwriteError):
        check_output_path(link, inputs=[src], force=True)
    write_json(tmp_path / "o.json", {"a": 1})
    with pytest.raises(UserError, match="--force"):
        check_output_path(tmp_path / "o.json")
    assert check_output_path(tmp_path / "o.json", force=True) == (tmp_path / "o.json").absolute()


def _sample_tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(3, 5, generator=g).half(),
        "b": torch.randn(7, generator=g).to(torch.bfloat16),
        "scale": torch.tensor(0.25),
        "q": torch.randn(4, 4, generator=g).to(torch.float8_e4m3fn),
        "empty": torch.empty(0, dtype=torch.float8_e4m3fn),
        "ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
    }


_ENCODE = """
import sys
import numpy as np
from circle_rotate.kernel.video_io import write_video
from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec, render_frames
frames = [f.image for f in render_frames(TurntableSpec(width=192, height=112, frames=17, subject="car", seed=4))]
write_video(sys.argv[1] + ".warm.mp4", [np.zeros((64, 96, 3), np.uint8)] * 9, fps=16)  # other work first
write_video(sys.argv[1], frames, fps=16, crf=18, preset="medium", threads=1)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's MALLOC_PERTURB_")
def test_a_clip_is_a_function_of_its_frames_whatever_the_heap_held(tmp_path):
    """x264's mb-tree read uninitialised heap on AVX-512 CPUs: the same frames came out as other
    bytes after other work in the process. glibc's MALLOC_PERTURB_ fills fresh allocations with a
    chosen byte, so two values show any such read (where the CPU has that code path)."""
    outs = []
    for fill in ("1", "200"):
        out = tmp_path / f"perturb{fill}.mp4"
        subprocess.run([sys.executable, "-c", _ENCODE, str(out)], check=True, timeout=300,
                       env={**os.environ, "MALLOC_PERTURB_": fill})
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_writer_output_reads_back_with_the_safetensors_library(tmp_path):
    tensors = _sample_tensors()
    path = tmp_path / "w.safetensors"
    with SafetensorsWriter(path, {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}, metadata={"k": "v"}) as w:
        for k, v in tensors.items():
            w.write(k, v)
    back = load_file(str(path))
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8))
    header = read_header(path)
    assert header.metadata == {"k": "v"}
    assert torch.equal(read_tensor(header, "a.weight"), tensors["a.weight"])
    assert [k for k, _ in iter_tensors(header)] == list(tensors)


def test_writer_copies_raw_bytes_and_refuses_wrong_order(tmp_path):
    src = tmp_path / "src.safetensors"
    save_file({"x": torch.randn(64, 64), "y": torch.randn(3)}, str(src))
    h = read_header(src)
    out = tmp_path / "copy.safetensors"
    with SafetensorsWriter(out, {k: (t.torch_dtype, t.shape) for k, t in h.tensors.items()}) as w, open(src, "rb") as fh:
        for k in h.tensors:
            w.write_raw(k, copy_raw(h, k, fh, chunk=1000))
    assert load_file(str(out))["x"].equal(load_file(str(src))["x"])
    bad = tmp_path / "bad.safetensors"
    with pytest.raises(RuntimeError, match="expected x"):
        with SafetensorsWriter(bad, {"x": (torch.float32, (1,)), "y": (torch.float32, (1,))}) as w:
            w.write("y", torch.zeros(1))
    with pytest.raises(RuntimeError, match="never written"):
        with SafetensorsWriter(bad, {"x": (torch.float32, (1,)), "y": (torch.float32, (1,))}) as w:
            w.write("x", torch.zeros(1))
    assert not bad.exists() and not list(tmp_path.glob(".bad*"))


def test_read_header_rejects_truncated_garbage_and_pickles(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file({"w": torch.randn(100, 100)}, str(src))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(src.read_bytes()[:-1000])
    with pytest.raises(UserError, match="truncated") as e:
        read_header(cut)
    assert "cut.safetensors" in str(e.value) and "re-download" in str(e.value)
    junk = tmp_path / "junk.safetensors"
    junk.write_text("this is not a model")
    with pytest.raises(UserError, match="not a safetensors file"):
        read_header(junk)
    pkl = tmp_path / "lora.ckpt"
    torch.save({"w": torch.zeros(1)}, pkl)
    with pytest.raises(UserError, match="never unpickled"):
        read_header(pkl)


def test_video_roundtrip_frames_and_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(7)]
    for suffix in (".mp4", ".webm", ".gif"):
        path = tmp_path / f"v{suffix}"
        assert write_video(path, frames, fps=29.97) == 7
        got = read_video(path)
        assert got.shape == (7, 48, 64, 3)
    assert probe_video(tmp_path / "v.mp4").fps == pytest.approx(30000 / 1001)
    assert read_video(tmp_path / "v.mp4", indices=[0, 6]).shape[0] == 2
    assert next(iter_frames(tmp_path / "v.mp4", max_side=32)).shape == (24, 32, 3)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        probe_video(tmp_path / "empty.mp4")
    (tmp_path / "text.mp4").write_text("hello")
    with pytest.raises(UserError, match="text.mp4"):
        read_video(tmp_path / "text.mp4")
    data = (tmp_path / "v.mp4").read_bytes()
    (tmp_path / "trunc.mp4").write_bytes(data[: len(data) // 3])
    with pytest.raises(UserError):
        read_video(tmp_path / "trunc.mp4")


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "circle_rotate", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_version_doctor_and_help():
    import circle_rotate

    assert _cli("--version").stdout.strip() == f"circle-rotate {circle_rotate.__version__}"
    report = json.loads(_cli("doctor", "--json").stdout)
    assert report["encoders"]["libx264"] is True
    assert report["decode_roundtrip"] == {"pyav": True, "opencv": True}
    assert {j["job"].split(" ")[0] for j in report["jobs"]} >= {"prepare", "merge", "evaluate"}
    assert "doctor" in _cli("--help").stdout


def test_cli_user_error_is_one_line_exit_2(monkeypatch, capsys):
    from circle_rotate.cli import main as cli_main

    def boom(args):
        raise UserError("frame 3 is black", path="clip.mp4", fix="re-export it")

    def bug(args):
        raise ZeroDivisionError("a bug")

    parser = cli_main.build_parser()
    monkeypatch.setattr(cli_main, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["doctor"].set_defaults(func=boom)
    assert cli_main.main(["doctor"]) == 2
    err = capsys.readouterr().err
    assert err == "circle-rotate doctor: error: clip.mp4: frame 3 is black; fix: re-export it\n"
    parser._subparsers._group_actions[0].choices["doctor"].set_defaults(func=bug)
    with pytest.raises(ZeroDivisionError):  # bugs keep their traceback
        cli_main.main(["doctor"])


@pytest.mark.parametrize("delays_ms, fps", [([60, 70] * 6, 12 / 0.78), ([10] * 8, 10.0), ([0] * 8, 10.0),
                                            ([20, 40] * 4, 1 / 0.03), ([500] + [50] * 9, 20.0)])
def test_a_gif_plays_at_the_rate_its_frame_delays_give_as_a_browser_shows_them(tmp_path, delays_ms, fps):
    """The study's GIFs mix 60 and 70 ms delays (15 fps, not FFmpeg's 16.67); a delay of 10 ms or
    less is shown for 100 ms by browsers, so such a GIF plays at 10 fps, not 100; a first frame
    held for half a second lasts that long but moves nothing (the motion runs at 20 fps)."""
    from PIL import Image

    from circle_rotate.kernel.video_io import decode_all, probe_video

    path = tmp_path / "anim.gif"
    images = [Image.fromarray(np.full((32, 48, 3), 30 * i % 256, np.uint8)) for i in range(len(delays_ms))]
    images[0].save(path, save_all=True, append_images=images[1:], duration=delays_ms, loop=0)
    info = probe_video(path)
    assert info.fps == pytest.approx(fps, rel=1e-6) and info.frame_count == len(delays_ms)
    shown = sum(10 * max(1, round(d / 10)) if d > 10 else 100 for d in delays_ms) / 1000  # centiseconds, clamped
    assert info.duration == pytest.approx(shown)
    frames, rate, notes = decode_all(path)
    assert len(frames) == len(delays_ms) and rate == pytest.approx(fps) and not notes  # not "cut short"


def test_a_gif_cut_off_part_way_says_so(tmp_path):
    from PIL import Image

    from circle_rotate.eval.frames import load_clip
    from circle_rotate.kernel.errors import UserError
    from circle_rotate.kernel.video_io import decode_all

    rng = np.random.default_rng(0)
    path = tmp_path / "whole.gif"
    images = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)) for _ in range(6)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=60, loop=0)
    assert not decode_all(path)[2]  # whole: nothing to say
    data = path.read_bytes()
    for keep, frames in ((0.6, None), (0.12, 1)):
        cut = tmp_path / f"cut{keep}.gif"
        cut.write_bytes(data[:int(len(data) * keep)])
        if frames is None:  # some frames before the cut: read, and said
            decoded, _, notes = decode_all(cut)
            assert 1 < len(decoded) < 6 and any(n.startswith("the GIF is cut off (no end marker)") for n in notes)
        else:  # one frame left: the error says why, not "a still image"
            with pytest.raises(UserError, match="the GIF is cut off"):
                load_clip(cut)


def test_spread_frames_reach_across_a_video_of_one_group_of_pictures(tmp_path):
    """x264's default keyframe interval (250) makes this 120-frame file one group of pictures: every
    seek lands on frame 0, so the frames are decoded on to each target."""
    from circle_rotate.kernel.video_io import spread_frames, write_video

    path = tmp_path / "ramp.mp4"
    write_video(path, [np.full((32, 48, 3), 2 * i, np.uint8) for i in range(120)], fps=24, crf=0, preset="ultrafast")
    levels = [int(f[..., 0].mean().round()) for f in spread_frames(path, 6, (48, 32))]
    frames = [level / 2 for level in levels]
    assert len(frames) == 6 and frames == sorted(frames)
    assert frames[0] < 20 and frames[-1] > 100  # spread over the whole file, not the first frames
