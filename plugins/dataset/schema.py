"""The keys of musubi-tuner's dataset config, their types, and where they sit in the file.

Key names and types are musubi-tuner 0.3.4's (``dataset/config_utils.ConfigSanitizer``);
when musubi-tuner is installed its own key lists are used, so a newer version's keys are
not reported as unknown.
"""

from __future__ import annotations

import difflib
import re
from typing import Dict, Optional, Tuple

from circle_rotate.kernel.musubi_env import import_musubi, musubi_available

SECTION_GENERAL = "general"

#: key -> expected kind: "str", "int", "bool", "float", "res" (int or [w, h]), "ints" ([int, ...]).
GENERAL_KEYS = {"caption_extension": "str", "batch_size": "int", "num_repeats": "int", "resolution": "res",
                "enable_bucket": "bool", "bucket_no_upscale": "bool"}
VIDEO_KEYS = {"video_directory": "str", "video_jsonl_file": "str", "control_directory": "str", "target_frames": "ints",
              "frame_extraction": "str", "frame_stride": "int", "frame_sample": "int", "max_frames": "int",
              "cache_directory": "str", "source_fps": "float", "fp_latent_window_size": "int"}
IMAGE_KEYS = {"image_directory": "str", "image_jsonl_file": "str", "cache_directory": "str", "control_directory": "str",
              "multiple_target": "bool", "fp_latent_window_size": "int", "fp_1f_clean_indices": "ints",
              "fp_1f_target_index": "int", "fp_1f_no_post": "bool", "no_resize_control": "bool", "control_resolution": "res"}
DEPRECATED = {"flux_kontext_no_resize_control": "no_resize_control",
              "qwen_image_edit_no_resize_control": "no_resize_control",
              "qwen_image_edit_control_resolution": "control_resolution"}
_EXAMPLE = {"str": '"text"', "int": "1", "bool": "true", "float": "16.0", "res": "[832, 480]", "ints": "[81]"}


def _allowed() -> Tuple[set, set, set]:
    """(general, video dataset, image dataset) key sets: musubi's own when installed."""
    if musubi_available():
        try:
            s = import_musubi("dataset.config_utils").ConfigSanitizer
            asc = set(s.DATASET_ASCENDABLE_SCHEMA)
            return asc, asc | set(s.VIDEO_DATASET_DISTINCT_SCHEMA), asc | set(s.IMAGE_DATASET_DISTINCT_SCHEMA)
        except Exception:  # a broken or changed install: use the known lists
            pass
    return set(GENERAL_KEYS), set(GENERAL_KEYS) | set(VIDEO_KEYS), set(GENERAL_KEYS) | set(IMAGE_KEYS)


def key_lines(text: str) -> Dict[tuple, int]:
    """1-based line of each table header and key: ("general",) / ("datasets", i) /
    (..., key) for keys; top-level keys under ()."""
    lines: Dict[tuple, int] = {}
    where: tuple = ()
    count = -1
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("[["):
            name = line.strip("[] \t").split("#")[0].strip()
            count += name == "datasets"
            where = ("datasets", count) if name == "datasets" else (name,)
            lines.setdefault(where, n)
        elif line.startswith("["):
            where = (line.strip("[] \t").split("#")[0].strip(),)
            lines.setdefault(where, n)
        else:
            m = re.match(r"""^\s*["']?([A-Za-z0-9_\-]+)["']?\s*=""", raw)
            if m:
                lines.setdefault((*where, m.group(1)), n)
    return lines


def kind_ok(value, kind: str) -> bool:
    """Whether ``value`` has the type musubi's validator wants for ``kind``."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return is_int(value)
    if kind == "float":
        return isinstance(value, float)
    if kind == "ints":
        return isinstance(value, list) and all(is_int(v) for v in value)
    return is_int(value) or (isinstance(value, list) and len(value) == 2 and all(is_int(v) for v in value))


#: Keys whose number must be at least 1 (musubi divides by them, or they count something).
_POSITIVE_INTS = ("batch_size", "num_repeats", "frame_stride", "frame_sample", "max_frames", "fp_latent_window_size")


def value_problem(key: str, value) -> Optional[Tuple[str, str]]:
    """(what is wrong, fix) for a well-typed value musubi cannot use, else None."""
    if key == "caption_extension" and isinstance(value, str) and not value.startswith("."):
        return f"{value!r} has no leading dot (musubi looks for 'clip{value}')", f'write caption_extension = ".{value}"'
    if key == "source_fps" and isinstance(value, (int, float)) and not value > 0:
        return f"{value!r} is not a frame rate", "write the clips' real rate, e.g. source_fps = 30.0, or remove it"
    if key in ("resolution", "control_resolution") and kind_ok(value, "res"):
        sizes = value if isinstance(value, list) else [value]
        if any(v < 16 for v in sizes):
            return f"{value!r} has a side under 16 pixels", "write e.g. resolution = [832, 480]"
    if key in _POSITIVE_INTS and kind_ok(value, "int") and value < 1:
        return f"{value!r} must be 1 or more", f"write e.g. {key} = 1"
    if key == "target_frames" and kind_ok(value, "ints") and (not value or any(v < 1 for v in value)):
        return f"{value!r} needs frame counts of 1 or more", "write e.g. target_frames = [81]"
    return None


def _type_fix(key: str, value, kind: str) -> str:
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return f"write {key} = {value}.0 (musubi's validator rejects an integer)"
    if kind == "ints" and isinstance(value, int):
        return f"write {key} = [{value}]"
    return f"write e.g. {key} = {_EXAMPLE[kind]}"


def _check_section(section: dict, where: tuple, allowed: set, out, *, name: str) -> None:
    kinds = {**GENERAL_KEYS, **VIDEO_KEYS, **IMAGE_KEYS}
    for key, value in section.items():
        if key in DEPRECATED:
            out.add("warning", where, key, f"deprecated key (musubi renames it to {DEPRECATED[key]})",
                    f"rename it to {DEPRECATED[key]}")
            continue
        if key not in allowed:
            if name == SECTION_GENERAL and key in kinds:
                out.add("error", where, key, "belongs in each [[datasets]] table, not in [general] "
                        "(musubi: extra keys not allowed)", "move it into the [[datasets]] tables")
                continue
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            out.add("error", where, key, f"unknown key in {name} (musubi: extra keys not allowed)",
                    f"did you mean {close[0]!r}?" if close else "remove it")
            continue
        kind = kinds.get(key)
        if kind and not kind_ok(value, kind):
            out.add("error", where, key, f"{value!r} has the wrong type (expected {kind})", _type_fix(key, value, kind))
        elif value_problem(key, value):
            out.add("error", where, key, *value_problem(key, value))


def dataset_kind(ds: dict) -> str:
    if "video_directory" in ds or "video_jsonl_file" in ds:
        return "video"
    if "image_directory" in ds or "image_jsonl_file" in ds:
        return "image"
    return "unknown"


def general_section(data: dict) -> dict:
    """The [general] table, or the one a misspelt name (``[generl]``) holds: its values are what the
    user meant the datasets to inherit, so their checks do not pile up knock-on errors."""
    if isinstance(data.get(SECTION_GENERAL), dict):
        return data[SECTION_GENERAL]
    for key, value in data.items():
        if isinstance(value, dict) and difflib.get_close_matches(key, (SECTION_GENERAL,), n=1):
            return value
    return {}


def check_keys(data: dict, out) -> None:
    """Unknown, misplaced, deprecated and mistyped keys of a parsed dataset config."""
    general, video, image = _allowed()
    for key in data:
        if key not in (SECTION_GENERAL, "datasets"):
            close = difflib.get_close_matches(key, (SECTION_GENERAL, "datasets"), n=1)
            out.add("error", (key,) if isinstance(data[key], dict) else (), key,
                    "unknown top-level key (only [general] and [[datasets]] exist)",
                    f"did you mean [{close[0]}]?" if close else "remove it")
    if isinstance(data.get(SECTION_GENERAL), dict):
        _check_section(data[SECTION_GENERAL], (SECTION_GENERAL,), general, out, name=SECTION_GENERAL)
    for i, ds in enumerate(data.get("datasets") or []):
        if isinstance(ds, dict):
            allowed = image if dataset_kind(ds) == "image" else video
            _check_section(ds, ("datasets", i), allowed, out, name=f"[[datasets]] #{i + 1}")


def _pick(key: str, ds: dict, general: dict, default, kind: str):
    for source in (ds, general):
        if key in source and kind_ok(source[key], kind) and not value_problem(key, source[key]):
            return source[key]
    return default


def resolved_params(ds: dict, general: dict) -> dict:
    """The settings musubi uses for a dataset: its own, else [general], else musubi's
    defaults (values of the wrong type fall through, as they are reported elsewhere)."""
    res = _pick("resolution", ds, general, [960, 544], "res")
    fps = ds.get("source_fps")
    return {
        "resolution": tuple(res) if isinstance(res, list) else (res, res),
        "caption_extension": _pick("caption_extension", ds, general, None, "str"),
        "batch_size": _pick("batch_size", ds, general, 1, "int"),
        "num_repeats": _pick("num_repeats", ds, general, 1, "int"),
        "target_frames": list(_pick("target_frames", ds, {}, [1], "ints")),
        "frame_extraction": _pick("frame_extraction", ds, {}, "head", "str"),
        "frame_stride": _pick("frame_stride", ds, {}, 1, "int"),
        "frame_sample": _pick("frame_sample", ds, {}, 1, "int"),
        "max_frames": _pick("max_frames", ds, {}, 129, "int"),
        # an integer source_fps is an error already; count as musubi would use it if fixed
        "source_fps": float(fps) if isinstance(fps, (int, float)) and not isinstance(fps, bool) and fps > 0 else None,
    }
