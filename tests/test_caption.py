"""Captions: Circle-Rotate templates, the subject map, and files musubi-tuner reads."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from circle_rotate.cli.main import main
from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.video_io import write_video
from circle_rotate.prepare.caption import CaptionOptions, caption_dataset, caption_for, folder_subject, read_caption_file
from circle_rotate.prepare.subject_map import lookup, read_subject_map
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
    # musubi reads the user's text; what the tool wrote is kept beside it, so the edit stays the user's
    clip = [c for c in read_manifest(prepared / MANIFEST_NAME) if c.get("clip")][1]
    assert (clip["caption"], clip["generated_caption"]) == ("my own words", "red car, Studio, Circle Right->Left")
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


def _state(prepared: Path) -> dict:
    """Every file of a prepared folder, byte for byte."""
    return {p: p.read_bytes() for p in sorted(prepared.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("data", ["my words, café".encode("utf-16"),  # Notepad's "Unicode": a BOM, then UTF-16-LE
                                  "my words, café".encode("latin-1"),  # a Western code page
                                  "my words".encode("utf-16-le")],  # UTF-16 without a BOM: UTF-8 with NULs
                         ids=["utf16", "latin1", "utf16-no-bom"])
def test_a_caption_file_musubi_cannot_decode_is_refused_before_anything_is_written(prepared, data, capsys):
    assert main(["caption", str(prepared), "--subject", "a toy"]) == 0
    b = prepared / "videos/a_001_x.txt"
    b.write_bytes(data)
    before = _state(prepared)
    # a_000's caption would change (another subject) and comes first: nothing may be half-done
    assert main(["caption", str(prepared), "--subject", "a car"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(b) in err and "not in UTF-8" in err
    assert "save them as UTF-8, or pass --force" in err
    assert _state(prepared) == before
    assert main(["caption", str(prepared), "--subject", "a car", "--force"]) == 0
    assert b.read_bytes() == "a car, Circle Right->Left\n".encode()
    assert (prepared / "videos/a_000_x.txt").read_text(encoding="utf-8") == "a car, Circle Left->Right\n"
    assert [c["caption"] for c in read_manifest(prepared / MANIFEST_NAME) if c.get("clip")][:2] == \
        ["a car, Circle Left->Right", "a car, Circle Right->Left"]


def test_the_tools_own_captions_follow_new_inputs_and_hand_edits_stay_for_good(prepared, tmp_path):
    m1 = tmp_path / "m1.csv"
    m1.write_text("match,subject\nred_car,a red hatchback\n", encoding="utf-8")
    m2 = tmp_path / "m2.csv"
    m2.write_text("match,subject\nred_car,a red sports car\n", encoding="utf-8")
    a, b = prepared / "videos/a_000_x.txt", prepared / "videos/a_001_x.txt"
    assert caption_dataset(prepared, subject_map=m1).written == 2
    r = caption_dataset(prepared, subject_map=m2)  # the subject changed: both files are still the tool's
    assert (r.written, r.kept) == (2, ())
    assert a.read_text() == "a red sports car, Circle Left->Right\n"
    b.write_text("my own words\n")
    for options in (CaptionOptions(style="sentence"), CaptionOptions(lang="zh"), CaptionOptions()):
        r = caption_dataset(prepared, subject_map=m1, options=options)
        assert (r.written, r.kept) == (1, (str(b),))  # the edit survives every change of inputs
        assert b.read_text() == "my own words\n"
    assert a.read_text() == "a red hatchback, Circle Left->Right\n"
    assert caption_dataset(prepared, subject_map=m1).unchanged == 1


def test_a_blank_caption_file_is_no_caption_and_gets_written(prepared, caplog):
    a, b = prepared / "videos/a_000_x.txt", prepared / "videos/a_001_x.txt"
    a.write_bytes(b"")
    b.write_bytes(b" \r\n\t\n")
    r = caption_dataset(prepared)
    assert (r.written, r.kept, r.filled) == (2, (), (str(a), str(b)))
    assert a.read_text() == "red car, Circle Left->Right\n" and b.read_text() == "red car, Circle Right->Left\n"
    assert "2 caption file(s) were empty" in caplog.text


def test_a_byte_order_mark_is_dropped_from_our_captions_and_named_on_hand_edits(prepared, caplog):
    a, b = prepared / "videos/a_000_x.txt", prepared / "videos/a_001_x.txt"
    caption_dataset(prepared)
    a.write_bytes(b"\xef\xbb\xbfred car, Circle Left->Right\r\n")  # ours, re-saved by Notepad
    b.write_bytes(b"\xef\xbb\xbfmy own words\r\n")
    r = caption_dataset(prepared)
    assert (r.written, r.kept, r.bom) == (1, (str(b),), (str(b),))
    assert a.read_bytes() == b"red car, Circle Left->Right\n"
    assert b.read_bytes() == b"\xef\xbb\xbfmy own words\r\n"
    assert "byte-order mark" in caplog.text and str(b) in caplog.text and "without BOM" in caplog.text
    assert caption_dataset(prepared, options=CaptionOptions(overwrite=True)).written == 1
    assert b.read_bytes() == b"red car, Circle Right->Left\n"


_MAP = "match,subject,context\nred_car,a red car,Street;Night\n"


@pytest.mark.parametrize("data", [b"match;subject;context\r\nred_car;a red car;\"Street;Night\"\r\n;;\r\n",  # Excel (de)
                                  b"match\tsubject\tcontext\nred_car\ta red car\tStreet;Night\n\t\t\n",  # tab
                                  b"\xef\xbb\xbf Match , SUBJECT ,Context\r\n,,\r\nred_car , a red car ,Street;Night\r\n",
                                  _MAP.encode("utf-16"), b"\xfe\xff" + _MAP.encode("utf-16-be")],
                         ids=["semicolon", "tab", "case-spaces-blank-rows", "utf16-le", "utf16-be"])
def test_subject_maps_as_spreadsheets_save_them_read(tmp_path, data):
    path = tmp_path / "subjects.csv"
    path.write_bytes(data)
    rows = read_subject_map(path)
    assert [(r.match, r.values) for r in rows] == [("red_car", {"subject": "a red car", "context": "Street;Night"})]


def test_a_map_in_another_code_page_or_unknown_layout_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "subjects.csv"
    path.write_bytes("match,subject\nred_car,un café\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"not UTF-8 text \(line 2.*save it as UTF-8"):
        read_subject_map(path)
    path.write_bytes(b"match|subject\nred_car|a car\n")
    with pytest.raises(UserError, match=r"missing column\(s\) match, subject \(the header line reads 'match\|subject'"):
        read_subject_map(path)


def test_map_matches_and_folder_names_compare_in_nfc(tmp_path):
    nfd = unicodedata.normalize("NFD", "Café 雕像")  # how macOS names the folder
    assert nfd != "Café 雕像"
    path = tmp_path / "subjects.csv"
    path.write_bytes(f"match,subject\n{nfd}/take1.mp4,a statue\nCafé 雕像,a café\n".encode())
    rows = read_subject_map(path)
    assert lookup(rows, "Café 雕像/take1.mp4") == {"subject": "a statue"}  # NFD row, NFC source
    assert lookup(rows, f"{nfd}/take2.mp4") == {"subject": "a café"}  # NFC row, NFD source
    assert folder_subject(f"{nfd}/take2.mp4") == "Café 雕像"


def test_a_hand_edit_the_manifest_of_an_earlier_version_records_as_the_caption_is_never_overwritten(prepared, tmp_path):
    """Before generated_caption, a kept edit was recorded as the clip's caption: such a file cannot be
    told from the tool's own text, so only the new caption counts as ours there."""
    b = prepared / "videos/a_001_x.txt"
    caption_dataset(prepared)
    b.write_text("my own words\n")
    records = read_manifest(prepared / MANIFEST_NAME)
    for rec in records:  # as the earlier version left it: the edit recorded, no generated_caption
        if rec.get("clip"):
            rec.pop("generated_caption")
            rec["caption"] = b.read_text().strip() if rec["clip"].endswith("a_001_x.mp4") else rec["caption"]
    write_manifest(prepared / MANIFEST_NAME, records)
    m = tmp_path / "m.csv"
    m.write_text("match,subject\nred_car,a red sports car\n", encoding="utf-8")
    r = caption_dataset(prepared, subject_map=m)  # both kept, as that version would have: none is lost
    assert str(b) in r.kept and b.read_text() == "my own words\n"


def _carried(prepared: Path, text: str = "The camera orbits right around a car.") -> None:
    """As prepare leaves a clip whose source video had its own caption file: a_000 carries it."""
    records = read_manifest(prepared / MANIFEST_NAME)
    for rec in records:
        if rec.get("clip", "") and rec["clip"].endswith("a_000_x.mp4"):
            rec.update(source_caption="red_car/a.txt", carried_caption=text, caption=text)
    write_manifest(prepared / MANIFEST_NAME, records)
    (prepared / "videos/a_000_x.txt").write_text(text + "\n", encoding="utf-8")


def test_a_caption_carried_from_the_source_is_kept_like_a_hand_edit_until_force(prepared, tmp_path, capsys):
    a, b = prepared / "videos/a_000_x.txt", prepared / "videos/a_001_x.txt"
    _carried(prepared)
    r = caption_dataset(prepared)
    assert (r.written, r.kept, r.carried) == (1, (), (str(a),))
    assert a.read_text() == "The camera orbits right around a car.\n" and b.read_text() == "red car, Circle Right->Left\n"
    a.unlink()  # lost: the source's caption is written back, not the generated one
    assert caption_dataset(prepared).carried == (str(a),) and a.read_text() == "The camera orbits right around a car.\n"
    jsonl = tmp_path / "ds.jsonl"
    assert main(["caption", str(prepared), "--jsonl", str(jsonl)]) == 0
    assert json.loads(jsonl.read_text().splitlines()[0])["caption"] == "The camera orbits right around a car."
    assert main(["caption", str(prepared)]) == 0
    assert "kept 1 caption(s) carried from the source videos (--force replaces them)" in capsys.readouterr().out
    a.write_text("my own words\n")  # an edit of the carried text is the user's
    assert caption_dataset(prepared).kept == (str(a),) and a.read_text() == "my own words\n"
    assert main(["caption", str(prepared), "--force"]) == 0
    assert a.read_text() == "red car, Circle Left->Right\n"
    # from then on the generated caption is ours and follows new inputs; the source's does not come back
    r = caption_dataset(prepared, options=CaptionOptions(subject="a car"))
    assert (r.written, r.carried) == (2, ()) and a.read_text() == "a car, Circle Left->Right\n"
    clip = [c for c in read_manifest(prepared / MANIFEST_NAME) if c.get("clip")][0]
    assert (clip["caption"], clip["source_caption"]) == ("a car, Circle Left->Right", "red_car/a.txt")


@pytest.mark.parametrize("data", [b"A car.\r\nSecond line.\r\n", b"A car.\rSecond line.", b"A car.\nSecond line.\n"])
def test_a_caption_file_reads_as_musubi_opens_it_with_universal_newlines(tmp_path, data):
    path = tmp_path / "clip.txt"
    path.write_bytes(data)
    with open(path, "r", encoding="utf-8") as f:  # musubi's get_caption (datasources.py)
        musubi = f.read().strip()
    found = read_caption_file(path)
    assert found.text == musubi == "A car.\nSecond line."  # before: "A car.\r\nSecond line."


def test_jsonl_paths_relative_to_the_training_folder(prepared, tmp_path, capsys):
    """musubi opens a JSONL's video_path as written, from its working folder: --relative-to DIR (the
    folder training runs from, as config's) writes them relative to it, forward slashes; caption
    files hold no paths, so --relative-to without --jsonl is refused before anything is written."""
    jsonl = tmp_path / "ds.jsonl"
    assert main(["caption", str(prepared), "--jsonl", str(jsonl), "--relative-to", str(prepared.parent)]) == 0
    paths = [json.loads(line)["video_path"] for line in jsonl.read_text(encoding="utf-8").splitlines()]
    assert paths == [f"{prepared.name}/videos/a_000_x.mp4", f"{prepared.name}/videos/a_001_x.mp4"]
    assert all((prepared.parent / p).is_file() for p in paths)
    capsys.readouterr()
    assert main(["caption", str(prepared), "--relative-to", str(prepared.parent)]) == 2
    err = capsys.readouterr().err
    assert "--relative-to is for --jsonl" in err and len(err.strip().splitlines()) == 1
    assert not list(prepared.glob("videos/*.txt"))
