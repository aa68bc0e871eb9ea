"""``prepare`` on real encoded footage: mixed frame rates and sizes, a phone video, a cut, bad files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import av
import numpy as np
import pytest

from hdr_video import write_hevc

from circle_rotate.cli.main import main
from circle_rotate.kernel.video_io import probe_video, write_video
from circle_rotate.prepare.manifest import MANIFEST_NAME, read_manifest
from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec, render_frames, write_footage

FRAMES = 17  # 4n+1, about a second at 16 fps: small clips keep the test fast

ORBITS = {  # relative path -> spec (fps, size, length, direction vary)
    "red_car/orbit24.mp4": TurntableSpec(width=256, height=144, frames=53, fps=24.0, total_angle_deg=50, subject="car"),
    "red_car/orbit25.mp4": TurntableSpec(width=320, height=192, frames=45, fps=25.0, total_angle_deg=40,
                                         direction="left", subject="car", seed=3),
    "statue/orbit2997.mp4": TurntableSpec(width=192, height=112, frames=40, fps=30000 / 1001, total_angle_deg=30,
                                          subject="figure", seed=4),
    "statue/orbit30.mp4": TurntableSpec(width=224, height=128, frames=36, fps=30.0, total_angle_deg=30,
                                        direction="left", subject="lshape", seed=5),
    "orbit60.mp4": TurntableSpec(width=160, height=96, frames=75, fps=60.0, total_angle_deg=40, subject="box", seed=6),
    "cut25.mp4": TurntableSpec(width=256, height=144, frames=75, fps=25.0, total_angle_deg=90, subject="cylinder",
                               cut_at=35, seed=7),
}
PHONE = TurntableSpec(width=144, height=256, frames=40, fps=30.0, total_angle_deg=40, subject="figure", seed=8)
PAN = TurntableSpec(width=256, height=144, frames=40, fps=30.0, camera="pan", total_angle_deg=15, seed=9)


def _write(raw: Path, rel: str, spec: TurntableSpec) -> Path:
    path = raw / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_footage(TurntableSpec(**{**spec.__dict__, "name": path.stem}), path.parent)


def _write_phone(path: Path) -> np.ndarray:
    """A portrait orbit stored sideways with a 90-degree display matrix, as phones record."""
    upright = np.stack([f.image for f in render_frames(PHONE)])
    write_video(path, (np.ascontiguousarray(np.rot90(f, 1)) for f in upright), fps=PHONE.fps, rotation=90, preset="veryfast")
    return upright


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepare")
    raw, out = root / "raw", root / "out"
    for rel, spec in ORBITS.items():
        _write(raw, rel, spec)
    phone_frames = _write_phone(raw / "phone" / "portrait.mp4")
    _write(raw, "pan30.mp4", PAN)
    good = raw / "orbit60.mp4"
    (raw / "bad").mkdir()
    (raw / "bad" / "zero.mp4").write_bytes(b"")
    (raw / "bad" / "text.mp4").write_text("this is a caption, not a video\n")
    (raw / "bad" / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 5])
    write_video(root / "full.mkv", (f.image for f in render_frames(TurntableSpec(width=160, height=96, frames=60,
                                                                                 fps=30.0, total_angle_deg=40))), fps=30)
    data = (root / "full.mkv").read_bytes()  # Matroska keeps its index up front: a cut-off file still plays
    (raw / "bad" / "cut_off.mkv").write_bytes(data[: len(data) * 6 // 10])
    with av.open(str(raw / "red_car" / "orbit24.mp4")) as src, \
            av.open(str(root / "fast.mp4"), "w", options={"movflags": "faststart"}) as dst:
        stream = dst.add_stream("libx264", rate=24, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 256, 144, "yuv420p"
        for frame in src.decode(video=0):
            dst.mux(stream.encode(frame))
        dst.mux(stream.encode())
    data = (root / "fast.mp4").read_bytes()  # its index up front too: plays up to the cut, then bad data
    (raw / "bad" / "cut_faststart.mp4").write_bytes(data[: len(data) * 7 // 10])
    write_video(raw / "bad" / "one_frame.mp4", [np.full((96, 160, 3), 128, np.uint8)], fps=30)
    _write(raw, "bad/short.mp4", TurntableSpec(width=160, height=96, frames=12, fps=30.0))
    (raw / "notes.txt").write_text("not a video, ignored")
    hashes = {p: _sha(p) for p in raw.rglob("*") if p.is_file()}
    argv = ["-q", "prepare", str(raw), "-o", str(out), "--frames", str(FRAMES), "--fps", "16", "--resolution", "256x144",
            "--qc", "strict", "--jobs", "2"]
    rc = main(argv)
    records = read_manifest(out / MANIFEST_NAME)
    return dict(raw=raw, out=out, rc=rc, records=records, hashes=hashes, phone=phone_frames, argv=argv)


def _sources(records):
    return {r["source"]: r for r in records if r["type"] == "source"}


def _clips(records, source=None):
    return [r for r in records if r["type"] == "clip" and (source is None or r["source"] == source)]


def test_every_source_is_reported_and_bad_files_do_not_stop_the_batch(prepared):
    src = _sources(prepared["records"])
    assert set(src) == {*ORBITS, "phone/portrait.mp4", "pan30.mp4", "bad/zero.mp4", "bad/text.mp4",
                        "bad/truncated.mp4", "bad/one_frame.mp4", "bad/short.mp4", "bad/cut_off.mkv",
                        "bad/cut_faststart.mp4"}
    for rel in [*ORBITS, "phone/portrait.mp4"]:
        assert src[rel]["status"] == "ok" and src[rel]["clips"] >= 1, src[rel]
    assert src["bad/zero.mp4"]["status"] == "error" and "0 bytes" in src["bad/zero.mp4"]["reason"]
    assert src["bad/text.mp4"]["status"] == "error" and "cannot be opened" in src["bad/text.mp4"]["reason"]
    assert src["bad/one_frame.mp4"]["status"] == "too_short"
    assert src["bad/short.mp4"]["status"] == "too_short" and "need" in src["bad/short.mp4"]["reason"]
    assert src["bad/short.mp4"]["reason"].endswith("fix: a shorter --frames, or a longer take")
    # an MP4 cut off before its index cannot be opened; a cut-off MKV plays up to the cut
    assert src["bad/truncated.mp4"]["status"] == "error"
    cut_off = src["bad/cut_off.mkv"]
    assert cut_off["status"] == "truncated" and cut_off["clips"] == 1 and "of the 2.00 s" in cut_off["reason"]
    cut_fast = src["bad/cut_faststart.mp4"]  # the same thing, though its decoder ends on an error
    assert cut_fast["status"] == "truncated" and cut_fast["clips"] == 1, cut_fast
    assert cut_fast["reason"].startswith("cut short at frame ") and "of the 2.21 s the file declares;" in cut_fast["reason"]
    assert src["pan30.mp4"]["status"] == "rejected"
    assert all("not an orbit: pan" in r["reasons"][0] for r in _clips(prepared["records"], "pan30.mp4"))
    assert prepared["rc"] == 1  # something failed and --keep-going was not given
    summary = json.loads((prepared["out"] / "prepare_summary.json").read_text())
    assert {f["source"] for f in summary["failed"]} == {"bad/zero.mp4", "bad/text.mp4", "bad/short.mp4",
                                                        "bad/one_frame.mp4", "bad/truncated.mp4", "bad/cut_off.mkv",
                                                        "bad/cut_faststart.mp4"}
    assert (prepared["out"] / "prepare_summary.png").stat().st_size > 1000


def test_clips_are_4n1_frames_at_16_fps_sized_in_multiples_of_16(prepared):
    clips = [c for c in _clips(prepared["records"]) if c["verdict"] == "accept"]
    assert len(clips) >= 8
    for c in clips:
        path = prepared["out"] / c["clip"]
        info = probe_video(path, count_frames=True)
        assert (info.frame_count, info.codec, info.rotation) == (FRAMES, "h264", 0)
        assert info.fps == pytest.approx(16.0)
        assert (info.width, info.height) == (c["width"], c["height"])
        assert info.width % 16 == 0 and info.height % 16 == 0 and info.width * info.height <= 256 * 144
        assert c["frames"] == FRAMES and c["fps"] == 16.0
        assert c["start_time"] * 16 == pytest.approx(round(c["start_time"] * 16))
        assert c["end_time"] - c["start_time"] == pytest.approx((FRAMES - 1) / 16)
        with av.open(str(path)) as box:
            assert sum(1 for _ in box.decode(video=0)) == FRAMES


def test_measured_direction_matches_the_camera_path(prepared):
    truth = {**{rel: s.direction for rel, s in ORBITS.items()}, "phone/portrait.mp4": PHONE.direction}
    for rel, direction in truth.items():
        clips = _clips(prepared["records"], rel)
        assert clips, rel
        for c in clips:
            assert c["orbit"]["motion"] == "orbit" and c["orbit"]["direction"] == direction, (rel, c["orbit"])
            assert c["verdict"] == "accept", c["reasons"]
            assert ("Circle Left->Right" if direction == "right" else "Circle Right->Left") in c["caption"]


def test_no_clip_spans_the_scene_cut(prepared):
    spec = ORBITS["cut25.mp4"]
    cut_t = spec.cut_at / spec.fps
    clips = _clips(prepared["records"], "cut25.mp4")
    assert len(clips) >= 2
    for c in clips:
        assert not (c["start_time"] < cut_t <= c["end_time"] + 1 / 32), (c["start_time"], c["end_time"], cut_t)
    assert "1 scene cut(s)" in _sources(prepared["records"])["cut25.mp4"]["notes"]


def test_phone_video_is_turned_upright(prepared):
    clip = _clips(prepared["records"], "phone/portrait.mp4")[0]
    assert clip["height"] > clip["width"]
    with av.open(str(prepared["out"] / clip["clip"])) as box:
        first = next(box.decode(video=0)).to_ndarray(format="rgb24").astype(np.float64)
    k = int(round(clip["start_time"] * PHONE.fps))
    import cv2

    ref = cv2.resize(prepared["phone"][k], (first.shape[1], first.shape[0]), interpolation=cv2.INTER_AREA).astype(float)
    assert np.corrcoef(first.ravel(), ref.ravel())[0, 1] > 0.9


def test_sources_are_never_modified(prepared):
    for path, digest in prepared["hashes"].items():
        assert _sha(path) == digest, path


def test_musubi_loader_reads_every_clip(prepared, musubi):
    from musubi_tuner.dataset.media_utils import load_video

    for c in [c for c in _clips(prepared["records"]) if c["clip"]][:4]:
        frames = load_video(str(prepared["out"] / c["clip"]), source_fps=16.0, target_fps=16.0)
        assert len(frames) == FRAMES and frames[0].shape == (c["height"], c["width"], 3)


def test_rerun_skips_finished_work_and_picks_up_new_sources(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    _write(raw, "a/one.mp4", ORBITS["red_car/orbit24.mp4"])
    argv = ["-q", "prepare", str(raw), "-o", str(out), "--frames", str(FRAMES), "--resolution", "256x144", "--jobs", "1"]
    assert main(argv) == 0
    first = read_manifest(out / MANIFEST_NAME)
    stamps = {c["clip"]: os.stat(out / c["clip"]).st_mtime_ns for c in _clips(first) if c["clip"]}
    assert stamps
    assert main(argv) == 0
    assert read_manifest(out / MANIFEST_NAME) == first
    assert stamps == {k: os.stat(out / k).st_mtime_ns for k in stamps}
    _write(raw, "b/two.mp4", ORBITS["statue/orbit30.mp4"])
    assert main(argv) == 0
    again = read_manifest(out / MANIFEST_NAME)
    assert set(_sources(again)) == {"a/one.mp4", "b/two.mp4"}
    assert stamps == {k: os.stat(out / k).st_mtime_ns for k in stamps}
    # changing QC re-judges without re-encoding the clips it keeps
    assert main(argv + ["--qc", "lenient"]) == 0
    assert stamps == {k: os.stat(out / k).st_mtime_ns for k in stamps if (out / k).exists()}
    (raw / "c").mkdir()
    (raw / "c" / "broken.mp4").write_bytes(b"\x00" * 100)
    assert main(argv) == 1
    assert main(argv + ["--keep-going"]) == 0
    # one file as RAW, at most one clip from it
    single = tmp_path / "single"
    assert main(argv[:2] + [str(raw / "a" / "one.mp4"), "-o", str(single)] + argv[5:] + ["--max-clips", "1"]) == 0
    assert [c["source"] for c in _clips(read_manifest(single / MANIFEST_NAME))] == ["one.mp4"]


def test_bad_options_are_one_user_error(tmp_path, capsys):
    assert main(["prepare", str(tmp_path), "-o", str(tmp_path / "o"), "--frames", "80", "--fps", "0"]) == 2
    err = capsys.readouterr().err
    assert "4n+1" in err and "--fps" in err and len(err.strip().splitlines()) == 1


def test_hdr_phone_videos_are_tone_mapped_to_sdr_clips(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    spec = TurntableSpec(**{**PHONE.__dict__, "width": 144, "height": 256})
    write_hevc(raw / "iphone_hlg.mov", spec, "arib-std-b67")
    write_hevc(raw / "android_pq.mp4", spec, "smpte2084")
    write_hevc(raw / "sdr.mp4", spec, "bt709")
    write_hevc(raw / "short_hlg.mov", TurntableSpec(**{**spec.__dict__, "frames": 9}), "arib-std-b67")  # never decoded
    assert [probe_video(raw / n).hdr for n in ("iphone_hlg.mov", "android_pq.mp4", "sdr.mp4")] == ["HLG", "PQ", None]
    before = {p.name: _sha(p) for p in raw.iterdir()}
    assert main(["-q", "prepare", str(raw), "-o", str(out), "--frames", str(FRAMES), "--fps", "16",
                 "--resolution", "256x144", "--jobs", "1"]) == 1  # the short one fails
    manifest = read_manifest(out / MANIFEST_NAME)
    src = _sources(manifest)
    clips = {c["source"]: c for c in _clips(manifest)}
    for name in ("iphone_hlg.mov", "android_pq.mp4", "sdr.mp4"):
        assert src[name]["status"] == "ok" and src[name]["clips"] >= 1, src[name]
    for name, kind in (("iphone_hlg.mov", "HLG"), ("android_pq.mp4", "PQ")):
        assert any(f"{kind} HDR tone-mapped to SDR" in n for n in src[name]["notes"])
    assert not any("HDR" in n for n in src["sdr.mp4"]["notes"])
    # the clips are SDR BT.709 H.264, 8-bit, whatever the source was
    for name in ("iphone_hlg.mov", "android_pq.mp4"):
        info = probe_video(out / clips[name]["clip"])
        assert info.hdr is None and info.codec == "h264"
    printed = capsys.readouterr().out
    assert src["short_hlg.mov"]["status"] == "too_short"
    assert "HDR tone-mapped to SDR (BT.709): android_pq.mp4 (PQ), iphone_hlg.mov (HLG)\n" in printed
    assert {p.name: _sha(p) for p in raw.iterdir()} == before  # the sources are untouched


# musubi-tuner's dataset layout: each video's caption in a same-stem .txt beside it
OWN_CAPTION = "The camera orbits right around a red car, café lights behind it.\n"
LONG = TurntableSpec(width=160, height=96, frames=90, fps=24.0, total_angle_deg=80, subject="car", seed=11)


def _musubi_layout(raw: Path, caption: bytes = OWN_CAPTION.encode()) -> None:
    _write(raw, "takes/clip_0001.mp4", LONG)
    (raw / "takes" / "clip_0001.txt").write_bytes(caption)
    _write(raw, "takes/clip_0002.mp4", TurntableSpec(**{**LONG.__dict__, "direction": "left", "seed": 12}))
    (raw / "notes.txt").write_text("lens: 35 mm\n")  # no video of that stem: not a caption


def _prep(raw: Path, out: Path, *extra: str) -> int:
    return main(["prepare", str(raw), "-o", str(out), "--frames", str(FRAMES), "--resolution", "160x96", "--jobs", "1",
                 "--preset", "ultrafast", *extra])


def _txt(out: Path, clip: dict) -> Path:
    return (out / clip["clip"]).with_suffix(".txt")


def test_a_source_videos_own_caption_is_carried_to_every_clip_and_caption_keeps_it(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    _musubi_layout(raw)
    hashes = {p: _sha(p) for p in raw.rglob("*") if p.is_file()}
    assert _prep(raw, out) == 0
    printed = capsys.readouterr().out
    assert "passed over 1 text file(s) that are no video's caption as musubi pairs them (first: notes.txt)" in printed
    records = read_manifest(out / MANIFEST_NAME)
    own = [c for c in _clips(records, "takes/clip_0001.mp4") if c["verdict"] == "accept"]
    other = [c for c in _clips(records, "takes/clip_0002.mp4") if c["verdict"] == "accept"]
    assert len(own) >= 2 and other
    for c in own:  # every clip cut from the video gets its text, byte for byte
        assert _txt(out, c).read_bytes() == OWN_CAPTION.encode()
        assert (c["caption"], c["source_caption"], c["carried_caption"]) == \
            (OWN_CAPTION.strip(), "takes/clip_0001.txt", OWN_CAPTION.strip())
    for c in other:  # no caption file of its own: the generated caption, as before
        assert "source_caption" not in c and c["caption"] == "takes, Circle Right->Left"
        assert not _txt(out, c).exists()
    assert f"{len(own)} clip(s) took their caption from their source video's own caption file" in printed
    assert main(["caption", str(out)]) == 0
    assert f"kept {len(own)} caption(s) carried from the source videos (--force replaces them)" in capsys.readouterr().out
    assert all(_txt(out, c).read_bytes() == OWN_CAPTION.encode() for c in own)
    assert all(_txt(out, c).read_text() == "takes, Circle Right->Left\n" for c in other)
    assert main(["caption", str(out), "--force"]) == 0
    assert all(_txt(out, c).read_text() == "takes, Circle Left->Right\n" for c in own)
    assert {p: _sha(p) for p in raw.rglob("*") if p.is_file()} == hashes  # sources never modified


def test_a_source_caption_edited_or_added_between_runs_reaches_the_clips_and_hand_edits_stay(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    _musubi_layout(raw)
    assert _prep(raw, out) == 0 and main(["caption", str(out)]) == 0
    records = read_manifest(out / MANIFEST_NAME)
    own = [c for c in _clips(records, "takes/clip_0001.mp4") if c["verdict"] == "accept"]
    other = [c for c in _clips(records, "takes/clip_0002.mp4") if c["verdict"] == "accept"]
    (raw / "takes" / "clip_0001.txt").write_text("A slow orbit around the car.\n")
    (raw / "takes" / "clip_0002.txt").write_text("The camera circles left around a car.\n")  # after caption wrote ours
    _txt(out, own[0]).write_text("my own words\n")
    assert _prep(raw, out) == 0  # nothing to re-cut: the captions alone follow
    assert _txt(out, own[0]).read_text() == "my own words\n"
    assert all(_txt(out, c).read_text() == "A slow orbit around the car.\n" for c in own[1:])
    assert all(_txt(out, c).read_text() == "The camera circles left around a car.\n" for c in other)
    assert "kept 1 clip caption(s) that differ from their source's" in capsys.readouterr().out
    assert _prep(raw, out, "--qc", "lenient") == 0  # re-made clips get the source's caption again
    clips = {c["clip"]: c for c in read_manifest(out / MANIFEST_NAME) if c.get("type") == "clip"}
    assert clips[own[0]["clip"]]["caption"] == "my own words"
    assert clips[own[1]["clip"]]["caption"] == "A slow orbit around the car."
    assert _txt(out, own[1]).read_text() == "A slow orbit around the car.\n"
    assert main(["caption", str(out)]) == 0
    assert _txt(out, own[0]).read_text() == "my own words\n"
    assert all(_txt(out, c).read_text() == "The camera circles left around a car.\n" for c in other)


def test_a_source_caption_musubi_cannot_read_is_refused_before_any_clip_is_written(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    _musubi_layout(raw, caption=OWN_CAPTION.encode("utf-16"))  # Notepad's "Unicode"
    assert _prep(raw, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(raw / "takes" / "clip_0001.txt") in err
    assert "UTF-16" in err and "save them as UTF-8" in err
    assert not out.exists()


def test_a_disk_that_fills_up_stops_the_run_and_does_not_blame_the_footage(tmp_path, capsys, monkeypatch):
    import circle_rotate.prepare.source as source
    from circle_rotate.kernel.errors import DiskFullError

    raw, out = tmp_path / "raw", tmp_path / "out"
    _musubi_layout(raw)
    real, written = source.write_video, []

    def fills_up(path, *args, **kw):  # the second clip meets a full disk, as a tmpfs of 1.5 MB did
        if written:
            raise DiskFullError(path, device="tmpfs", need_gb=0.001)
        written.append(path)
        return real(path, *args, **kw)

    monkeypatch.setattr(source, "write_video", fills_up)
    assert _prep(raw, out) == 2
    captured = capsys.readouterr()
    assert "no space left on tmpfs" in captured.err and "truncated" not in captured.out + captured.err
    assert not (out / MANIFEST_NAME).exists() or all(s.get("status") != "truncated"
                                                     for s in _sources(read_manifest(out / MANIFEST_NAME)).values())
    monkeypatch.setattr(source, "write_video", real)
    assert _prep(raw, out) == 0  # space again: the same command finishes, the first clip's orphan removed first
    assert all(s["status"] == "ok" for s in _sources(read_manifest(out / MANIFEST_NAME)).values())


def test_one_caption_file_captions_every_video_of_its_stem_and_stray_text_files_are_named_as_text(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    _write(raw, "car/twin.mp4", LONG)
    _write(tmp_path / "made", "twin.mp4", TurntableSpec(**{**LONG.__dict__, "seed": 13})).rename(raw / "car" / "twin.mov")
    (raw / "car" / "twin.txt").write_bytes(b"A red car, orbit.\r\nSecond line.\r\n")  # saved on Windows
    (raw / "car" / "twin.mp4.txt").write_text("not read by musubi\n")
    (raw / "car" / "twin.TXT").write_text("nor this\n")
    assert _prep(raw, out, "--qc", "off") == 0
    printed = capsys.readouterr().out
    records = read_manifest(out / MANIFEST_NAME)
    for source in ("car/twin.mp4", "car/twin.mov"):  # before: only twin.mp4's clips carried it
        clips = [c for c in _clips(records, source) if c["verdict"] == "accept"]
        assert clips and all(c["source_caption"] == "car/twin.txt" for c in clips), source
        # what musubi reads (text mode: universal newlines); before: "A red car, orbit.\r\nSecond line."
        assert all(c["caption"] == "A red car, orbit.\nSecond line." for c in clips)
    # before: "... not named as videos (.txt; first: ...); rename a video whose suffix is not a container's"
    assert "passed over 2 text file(s) that are no video's caption as musubi pairs them (first: car/twin.TXT)" in printed
    assert "not named as videos" not in printed


def test_a_video_that_starts_still_gives_no_clip_says_so_and_keep_still_keeps_it_from_frame_0(tmp_path, capsys):
    """A clip-long video holding still for half a second before it turns: still trimming (on by
    default, --qc off or not) leaves no whole clip, which exits 0 like a success, so the CLI names
    the source and --keep-still; with --keep-still the clip starts at the video's first frame, the
    one musubi's 'head' extraction conditions I2V on."""
    # a slow turn: on a 160x96 frame a fast one starting after a still head reads as a scene cut
    orbit = [f.image for f in render_frames(TurntableSpec(width=160, height=96, frames=9, fps=16.0,
                                                          total_angle_deg=6, seed=11))]
    raw = tmp_path / "raw"
    write_video(raw / "still_head.mp4", [orbit[0]] * 8 + orbit, fps=16, preset="ultrafast")  # 17 frames, 8 still
    args = ["--frames", "17", "--fps", "16", "--resolution", "160x96", "--qc", "off", "--jobs", "1"]
    assert main(["prepare", str(raw), "-o", str(tmp_path / "trimmed"), *args]) == 0
    printed = capsys.readouterr().out
    assert "0 clip(s) kept" in printed
    assert ("1 source(s) gave no clip (first: still_head.mp4: no stretch of camera motion is a whole clip long once "
            "still or barely moving heads, tails and pauses are left out (or scene cuts split it); --keep-still keeps "
            "them)") in printed
    assert main(["prepare", str(raw), "-o", str(tmp_path / "kept"), *args, "--keep-still"]) == 0
    assert "gave no clip" not in capsys.readouterr().out
    (clip,) = _clips(read_manifest(tmp_path / "kept" / MANIFEST_NAME))
    assert clip["verdict"] == "accept" and clip["start_time"] == 0.0 and clip["frames"] == 17
