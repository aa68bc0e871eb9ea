"""Captions: Circle-Rotate templates, the subject map, and files musubi-tuner reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from circle_rotate.cli.main import main
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.video_io import write_video
from circle_rotate.prepare.caption import CaptionOptions, caption_dataset, caption_for, lookup, read_subject_map
from circle_rotate.prepare.caption_templates import TRAJECTORY, CaptionFields, render_caption
from circle_rotate.prepare.manifest import MANIFEST_NAME, read_manifest, write_manifest

import numpy as np


def test_tags_follow_the_circle_rotate_structure():
    f = CaptionFields(subject="Silver Sedan", context=("Urban Night View", "Static Display"),
                      viewpoint="Side View (Right)", shot_scale="Medium Shot", direction="left")
    assert render_caption(f) == ("Silver Sedan, Urban Night View, Static Display, Side View (Right), Medium Shot, "
                                 "Circle Right->Left")
    assert render_caption(f, lang="zh") == "Silver Sedan，城市夜景，静态展示，右侧视角，中景，从右向左环绕"


def test_trajectory_follows_the_measured_direction_convention():
    # right = the camera travels towards its own right = sweeps the scene from left to right
    assert TRAJECTORY["en"] == {"right": "Circle Left->Right", "left": "Circle Right->Left"}
    right = render_caption(CaptionFields(subject="a red car", direction="right", steady=True, speed_deg_s=20),
                           style="sentence")
    assert right == "A red car. The camera smoothly circles around the subject from left to right."
    zh = render_caption(CaptionFields(subject="a red car", subject_zh="一辆红色汽车", direction="left", speed_deg_s=5),
                        lang="zh", style="sentence")
    assert zh == "一辆红色汽车。镜头缓慢地从右向左环绕主体拍摄。"
    assert render_caption(CaptionFields(subject="a cup", direction="none")) == "a cup"
    with pytest.raises(ValueError):
        render_caption(CaptionFields(subject="x"), lang="fr")


def _map(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "subjects.csv"
    p.write_text(text, encoding="utf-8")
    return p


def test_subject_map_matches_by_path_name_glob_and_folder(tmp_path):
    rows = read_subject_map(_map(tmp_path, "match,subject,context\n"
                                           "cars,a car,Street\n"
                                           "cars/red/take2.mp4,the red car's second take,\n"
                                           "take3,a third take,\n"
                                           "*/blue_*.mp4,a blue car,Showroom;Static Display\n"))
    assert lookup(rows, "cars/red/take1.mp4") == {"subject": "a car", "context": "Street"}  # folder
    assert lookup(rows, "cars/red/take2.mp4")["subject"] == "the red car's second take"  # exact beats folder
    assert lookup(rows, "cars/take3.mov")["subject"] == "a third take"  # stem
    assert lookup(rows, "cars/blue_1.mp4")["context"] == "Showroom;Static Display"  # glob beats folder
    assert lookup(rows, "other/x.mp4") == {}
    rec = {"source": "cars/blue_1.mp4", "orbit": {"motion": "orbit", "direction": "right", "speed_cv": 0.1}}
    assert caption_for(rec, rows=rows) == "a blue car, Showroom, Static Display, Circle Left->Right"
    folder_only = {"source": "red_fire_truck/a.mp4", "orbit": {"motion": "orbit", "direction": "left"}}
    assert caption_for(folder_only) == "red fire truck, Circle Right->Left"


def test_shipped_example_map_reads_and_matches():
    rows = read_subject_map(Path(__file__).resolve().parents[1] / "datasets" / "custom" / "subjects.csv")
    assert lookup(rows, "red_car/take1.mp4")["subject"] == "a red hatchback"
    rec = {"source": "shoes/product_01.mp4", "orbit": {"motion": "orbit", "direction": "left"}}
    assert caption_for(rec, rows=rows, options=CaptionOptions(lang="zh")) == "一只白色运动鞋，白色背景，转台，四分之三侧视角，特写，从右向左环绕"


def test_bad_subject_maps_list_every_problem(tmp_path):
    with pytest.raises(UserError) as err:
        read_subject_map(_map(tmp_path, "match,subjekt,colour\n,thing,red\n"))
    assert "missing column(s) subject" in str(err.value) and "unknown column(s) subjekt, colour" in str(err.value)
    with pytest.raises(UserError, match="line 3: empty match"):
        read_subject_map(_map(tmp_path, "match,subject\na,b\n,c\n"))


def test_a_row_with_an_unquoted_comma_or_a_conflicting_repeat_is_refused_not_shifted(tmp_path):
    text = ("match,subject,viewpoint,shot_scale,context\n"
            "My Car,a red sedan, with a comma,Side View (Right),Full Shot,Studio\n"
            "vase,a vase,,,\nvase,a jug,,,\n")
    with pytest.raises(UserError) as err:
        read_subject_map(_map(tmp_path, text))
    message = str(err.value)
    assert "line 2: 6 fields, the header has 5" in message and "quote" in message
    assert "line 4 repeats the match 'vase' of line 3" in message
    quoted = read_subject_map(_map(tmp_path, 'match,subject,viewpoint\n"My Car","a red sedan, with a comma",Side\n'
                                             "vase,a vase,\nvase,a vase,\n"))  # a repeat that agrees is harmless
    assert lookup(quoted, "My Car/a.mp4") == {"subject": "a red sedan, with a comma", "viewpoint": "Side"}


@pytest.fixture
def prepared(tmp_path) -> Path:
    """A prepared folder: two accepted clips and a rejected one, as prepare records them."""
    out = tmp_path / "prep"
    frames = [np.full((32, 48, 3), v, np.uint8) for v in (40, 120, 200, 90, 60)]
    recs = [{"type": "source", "source": "red_car/a.mp4", "status": "ok"}]
    for i, (direction, verdict) in enumerate([("right", "accept"), ("left", "accept"), ("right", "reject")]):
        clip = f"videos/a_{i:03d}_x.mp4" if verdict == "accept" else None
        if clip:
            write_video(out / clip, frames, fps=16)
        recs.append({"type": "clip", "id": str(i), "clip": clip, "source": "red_car/a.mp4", "frames": 5, "fps": 16.0,
                     "width": 48, "height": 32, "verdict": verdict, "reasons": [], "caption": None,
                     "orbit": {"motion": "orbit", "direction": direction, "speed_cv": 0.5, "angular_speed_deg_s": 20}})
    write_manifest(out / MANIFEST_NAME, recs)
    return out


def test_caption_files_are_written_and_user_edits_kept(prepared):
    r = caption_dataset(prepared, options=CaptionOptions(context=("Studio",)))
    assert (r.written, r.unchanged, r.kept) == (2, 0, ())
    a, b = prepared / "videos/a_000_x.txt", prepared / "videos/a_001_x.txt"
    assert a.read_text() == "red car, Studio, Circle Left->Right\n"
    assert b.read_text() == "red car, Studio, Circle Right->Left\n"
    b.write_text("my own words\n")
    r = caption_dataset(prepared, options=CaptionOptions(context=("Studio",)))
    assert (r.written, r.unchanged, r.kept) == (0, 1, (str(b),))
    assert b.read_text() == "my own words\n"
    assert [c["caption"] for c in read_manifest(prepared / MANIFEST_NAME) if c.get("clip")][1] == "my own words"
    r = caption_dataset(prepared, options=CaptionOptions(context=("Studio",), overwrite=True))
    assert r.written == 1 and b.read_text() == "red car, Studio, Circle Right->Left\n"


def test_jsonl_output_and_cli(prepared, tmp_path, capsys):
    jsonl = tmp_path / "ds.jsonl"
    assert main(["caption", str(prepared), "--jsonl", str(jsonl), "--subject", "x", "--lang", "zh"]) == 0
    lines = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
    assert [Path(d["video_path"]).name for d in lines] == ["a_000_x.mp4", "a_001_x.mp4"]
    assert all(Path(d["video_path"]).is_absolute() and "\\" not in d["video_path"] for d in lines)
    assert lines[0]["caption"] == "x，从左向右环绕"  # --subject beats the folder name
    assert main(["caption", str(prepared), "--jsonl", str(jsonl)]) == 2  # exists: needs --force
    assert "already exists" in capsys.readouterr().err
    assert main(["caption", str(prepared), "--jsonl", str(jsonl), "--force"]) == 0
    shipped = Path(__file__).resolve().parents[1] / "datasets" / "custom" / "subjects.csv"
    assert main(["caption", str(prepared), "--map", str(shipped)]) == 0
    assert (prepared / "videos/a_000_x.txt").read_text() == ("a red hatchback, Urban Night View, Static Display, "
                                                             "Side View (Right), Full Shot, Circle Left->Right\n")


@pytest.mark.parametrize("text", ["a,a red car\na.mp4,a blue car\n", "red_car,a red car\nred_car/,a blue car\n",
                                  "*/a.mp4,a red car\nred*/a*,a blue car\n"])  # stem and name; folder; globs as long
def test_two_rows_matching_a_clip_equally_with_other_values_are_an_error(prepared, tmp_path, text):
    with pytest.raises(UserError, match="lines 2 and 3 match 'red_car/a.mp4' equally"):
        caption_dataset(prepared, subject_map=_map(tmp_path, "match,subject\n" + text))
    assert not list(prepared.glob("videos/*.txt"))


def test_a_header_with_trailing_empty_columns_reads(tmp_path):
    assert read_subject_map(_map(tmp_path, "match,subject,,\nred_car,a red car,,\n"))[0].values == {"subject": "a red car"}


def test_map_rows_no_clip_uses_are_named(prepared, tmp_path, capsys):
    rows = _map(tmp_path, "match,subject\nred_car,a red car\nRed_Car,a car\nnot_there/*,x\n")
    r = caption_dataset(prepared, subject_map=rows)
    assert r.unmatched == ((3, "Red_Car"), (4, "not_there/*"))
    assert main(["caption", str(prepared), "--map", str(rows), "--force"]) == 0
    assert "warning: 2 row(s) of" in capsys.readouterr().out


def test_musubi_reads_the_captions(prepared, musubi):
    from musubi_tuner.dataset.datasources import VideoDirectoryDatasource

    caption_dataset(prepared)
    ds = VideoDirectoryDatasource(str(prepared / "videos"), caption_extension=".txt")
    assert len(ds) == 2
    assert ds.get_caption(0)[1] == "red car, Circle Left->Right"
