"""``check-config``: every problem of a musubi-tuner dataset TOML, with its line and the fix.

Problems musubi-tuner reports late or never are found here up front: unknown keys,
``source_fps`` written as an integer, target lengths that are not 4n+1, missing folders
(musubi silently finds 0 videos), clips too short for the target after musubi's own frame
dropping (silently skipped), missing captions (fail only at text-encoder caching), video
file names that share a cache folder (their caches would overwrite each other), and
backslash paths. When musubi-tuner is importable, its own validator and dataset loader
run too and their verdict is reported.

Relative paths are resolved against ``base_dir`` (default: the current folder), as
musubi-tuner resolves them against the folder it runs in.
"""

from __future__ import annotations

import argparse
import re
import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import tomlkit
import tomlkit.exceptions

from circle_rotate.dataset.items import FRAME_EXTRACTIONS, DatasetItems, directory_items, jsonl_items, round_4n1
from circle_rotate.dataset.schema import check_keys, dataset_kind, general_section, key_lines, resolved_params
from circle_rotate.kernel.buckets import nearest_bucket
from circle_rotate.kernel.errors import UserError, listed
from circle_rotate.kernel.input_files import read_text_file
from circle_rotate.kernel.musubi_env import import_musubi, musubi_available, musubi_version
from circle_rotate.kernel.video_io import TO_SDR
from circle_rotate.kernel.wan_arch import NATIVE_FPS, is_4n_plus_1
from circle_rotate.prepare.manifest import MANIFEST_NAME
from circle_rotate.prepare.prepared_folder import check_prepared

logger = logging.getLogger(__name__)
_SHOW = 3  # names listed per problem


@dataclass(frozen=True)
class ConfigProblem:
    """One problem. ``line`` is 1-based in ``file`` (None when it has no single line)."""

    severity: str  # "error" | "warning"
    file: str
    line: Optional[int]
    key: Optional[str]
    message: str
    fix: str

    def one_line(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" [{self.key}]" if self.key else ""
        return f"{where}: {self.severity}{key}: {self.message}; fix: {self.fix}"


@dataclass(frozen=True)
class DatasetReport:
    """What musubi will find in one ``[[datasets]]`` table."""

    index: int
    kind: str  # "video" | "image" | "unknown"
    source: Optional[str]
    cache_directory: Optional[str]
    videos: int = 0
    usable: int = 0
    too_short: int = 0
    missing_captions: int = 0
    unreadable: int = 0
    items: int = 0


@dataclass(frozen=True)
class ConfigCheckReport:
    path: str
    problems: Tuple[ConfigProblem, ...]
    musubi_verdict: Optional[str]
    datasets: Tuple[DatasetReport, ...]
    cache_directories: Tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d


class _Problems:
    def __init__(self, file: str, lines: Dict[tuple, int]):
        self.file, self.lines, self.items = file, lines, []

    def add(self, severity: str, where: tuple, key: Optional[str], message: str, fix: str, *,
            file: Optional[str] = None, line: Optional[int] = None) -> None:
        """A problem at ``where``/``key`` of the TOML, or in another ``file`` (a jsonl) at its own ``line``."""
        if file is None:
            line = (self.lines.get((*where, key)) or self.lines.get(where)) if key else self.lines.get(where)
        self.items.append(ConfigProblem(severity, file or self.file, line, key, message, fix))


def _first_line(entries: List[str]) -> Optional[int]:
    """The jsonl line number of the first of ``entries`` ("line 7" or "line 7: clip.mp4")."""
    m = re.match(r"line (\d+)\b", entries[0]) if entries else None
    return int(m.group(1)) if m else None


def _path_value(value: str, where: tuple, key: str, out: _Problems, base: Path) -> Optional[Path]:
    if "\\" in value:
        out.add("error", where, key, f"path {value!r} has backslashes", "use forward slashes (C:/data/clips works on Windows too)")
        return None
    p = Path(value)
    return p if p.is_absolute() else base / p


BOM = b"\xef\xbb\xbf"


def _check_params(params: dict, where: tuple, out: _Problems) -> None:
    targets = params["target_frames"]
    bad = [t for t in targets if not (t >= 1 and is_4n_plus_1(t))]
    if bad:
        out.add("error", where, "target_frames", f"{bad} not of the form 4n+1; musubi silently uses "
                f"{[round_4n1(t) for t in bad]}", f"use {[round_4n1(t) for t in bad]} or {[round_4n1(t) + 4 for t in bad]}")
    if params["frame_extraction"] not in FRAME_EXTRACTIONS:
        out.add("error", where, "frame_extraction", f"{params['frame_extraction']!r} is not one of "
                f"{', '.join(FRAME_EXTRACTIONS)} (musubi fails only when caching)", 'use "head" for prepared clips')
    res = params["resolution"]
    if any(v % 16 for v in res):
        # musubi's buckets keep the area, not each side: 170x100 trains at 176x96, not 160x96
        out.add("warning", where, "resolution", f"{list(res)} is not a multiple of 16; musubi's bucket of this shape "
                f"is {list(nearest_bucket(tuple(res), tuple(res)))}", f"use {list(nearest_bucket(tuple(res), tuple(res)))}")
    for key in ("batch_size", "num_repeats"):
        if params[key] < 1:
            out.add("error", where, key, f"must be at least 1, got {params[key]}", f"{key} = 1")


def _given(ds: dict, general: dict, key: str) -> bool:
    """Is ``key`` set (to anything) in the dataset or [general]? A bad value is that key's own error."""
    return key in ds or key in general


def _report_items(items: DatasetItems, where: tuple, src_key: str, params: dict, out: _Problems, *,
                  jsonl: Optional[str], captions_checked: bool = True) -> None:
    if items.bad_lines:
        out.add("error", where, src_key, f"{len(items.bad_lines)} line(s) of the jsonl are not objects with "
                f"video_path: {listed(items.bad_lines, _SHOW)}", 'one {"video_path": ..., "caption": ...} per line', file=jsonl,
                line=_first_line(items.bad_lines))
    if items.missing_files:
        out.add("error", where, src_key, f"{len(items.missing_files)} video_path(s) do not exist: "
                f"{listed(items.missing_files, _SHOW)}", "fix the paths (relative ones resolve against the training folder)",
                file=jsonl, line=_first_line(items.missing_files))
    if items.videos == 0 and not items.missing_files:
        out.add("error", where, src_key, "no videos found (musubi would train on nothing)",
                "point it at the clips folder (circle-rotate prepare writes OUT_DIR/videos)")
    if items.unreadable:
        out.add("error", where, src_key, f"{len(items.unreadable)} video(s) cannot be read: {listed(items.unreadable, _SHOW)}",
                "re-export them or remove them")
    if items.unreadable_captions and captions_checked:
        out.add("error", where, "caption_extension", f"{len(items.unreadable_captions)} caption file(s) musubi cannot "
                f"read: {listed(items.unreadable_captions, _SHOW)} (it stops at text-encoder caching)",
                "save them as UTF-8 (or run circle-rotate caption --force to write them again)")
    if items.bom_captions and captions_checked:
        out.add("warning", where, "caption_extension", f"{len(items.bom_captions)} caption file(s) start with a "
                f"byte-order mark, which musubi passes to the text encoder as part of the caption: "
                f"{listed(items.bom_captions, _SHOW)}", "save them as UTF-8 without BOM")
    if items.missing_captions and captions_checked:
        out.add("error", where, "caption_extension" if not jsonl else src_key,
                f"{len(items.missing_captions)} video(s) have no caption: {listed(items.missing_captions, _SHOW)} "
                "(missing or empty: musubi fails at text-encoder caching, or trains on an empty prompt)",
                "run circle-rotate caption, or write the captions")
    if items.too_short:
        severity = "error" if items.usable == 0 and items.videos else "warning"
        targets = sorted({round_4n1(t) for t in params["target_frames"]})
        fps = (f"after source_fps {params['source_fps']:g} -> {NATIVE_FPS} fps frame dropping"
               if params["source_fps"] else "(no source_fps: every frame used)")
        out.add(severity, where, "target_frames", f"{len(items.too_short)} of {items.videos} video(s) are shorter than "
                f"{targets} frames {fps}; musubi skips them silently: {listed(items.too_short, _SHOW)}",
                "prepare longer clips, or lower target_frames")
    if items.rotated:
        out.add("warning", where, src_key, f"{len(items.rotated)} video(s) are shown turned, mirrored or with "
                f"non-square pixels, or hold several video streams, which musubi's decoder ignores (they would train "
                f"sideways, squeezed or on the wrong stream): {listed(items.rotated, _SHOW)}",
                "run them through circle-rotate prepare, which writes what a player shows")
    if items.hdr:
        out.add("warning", where, src_key, f"{len(items.hdr)} video(s) are HDR, which musubi decodes as SDR "
                f"(flat, washed-out colours the LoRA would learn): {listed(items.hdr, _SHOW)}",
                f"run them through circle-rotate prepare, which tone-maps them to SDR, or convert them: {TO_SDR}")
    if items.misordered:
        out.add("error", where, src_key, f"{len(items.misordered)} frame folder(s) number their frames without "
                "leading zeros; musubi reads a folder's frames in name order, "
                f"so it would train on them shuffled: {listed(items.misordered, _SHOW)}",
                "rename the frames with zero-padded numbers (frame_0001.png, ...)")
    if items.resized:
        out.add("warning", where, "resolution", f"musubi's latent caching will rescale {len(items.resized)} video(s) to "
                f"its bucket for {list(params['resolution'])}: {listed(items.resized, _SHOW)}",
                "prepare them again with --upscale (a source smaller than the bucket keeps its own size without it) "
                "and the same --resolution, or set resolution to match them")
    dupes = sorted({s for s in items.stems if items.stems.count(s) > 1})
    if dupes:
        out.add("error", where, src_key, f"{len(dupes)} file name(s) repeat ({listed(dupes, _SHOW)}): their caches in one "
                "cache_directory would overwrite each other", "rename them, or split them into datasets with their own "
                "cache_directory")


def _check_dataset(i: int, ds: dict, general: dict, out: _Problems, base: Path) -> DatasetReport:
    where = ("datasets", i)
    kind = dataset_kind(ds)
    params = resolved_params(ds, general)
    _check_params(params, where, out)
    if params["frame_extraction"] not in FRAME_EXTRACTIONS:  # its own error; count items as its fix ("head") would
        params = {**params, "frame_extraction": "head"}
    src_key = next((k for k in ("video_directory", "video_jsonl_file", "image_directory", "image_jsonl_file") if k in ds), None)
    if src_key is None:
        out.add("error", where, None, "dataset has no video_directory or video_jsonl_file",
                'add video_directory = "<prepared>/videos" (or video_jsonl_file)')
        return DatasetReport(i, kind, None, None)
    src = _path_value(str(ds[src_key]), where, src_key, out, base)
    cache_value = ds.get("cache_directory")
    cache = _path_value(str(cache_value), where, "cache_directory", out, base) if cache_value else None
    if cache_value is None:
        if src_key.endswith("jsonl_file"):
            out.add("error", where, src_key, "a jsonl dataset needs a cache_directory (musubi asserts at caching)",
                    'add cache_directory = "<somewhere>/cache"')
        else:
            out.add("warning", where, src_key, "no cache_directory: caches go into the video folder itself",
                    'add cache_directory = "<prepared>/cache"')
        cache = src if not src_key.endswith("jsonl_file") else None
    report = dict(index=i, kind=kind, source=str(src) if src else None, cache_directory=str(cache) if cache else None)
    if src is None or kind == "image":
        return DatasetReport(**report)
    if src_key == "video_directory" and not src.is_dir():
        out.add("error", where, src_key, f"folder {src} does not exist (musubi would silently find 0 videos)",
                "create it with circle-rotate prepare, or fix the path")
        return DatasetReport(**report)
    if src_key == "video_jsonl_file" and not src.is_file():
        out.add("error", where, src_key, f"file {src} does not exist", "write it with circle-rotate caption --jsonl")
        return DatasetReport(**report)
    if src_key == "video_directory" and (src.parent / MANIFEST_NAME).is_file():
        try:  # a folder prepare wrote: its clips must be the ones its manifest lists
            check_prepared(src.parent)
        except UserError as exc:
            out.add("error", where, src_key, exc.problem, exc.fix or "run circle-rotate prepare RAW -o OUT --repair")
    if src_key == "video_directory" and not params["caption_extension"] and not _given(ds, general, "caption_extension"):
        out.add("error", where, None, "no caption_extension: musubi cannot find captions for a video_directory",
                'add caption_extension = ".txt" (here or in [general])')
    items = (directory_items(src, caption_extension=params["caption_extension"], params=params)
             if src_key == "video_directory" else jsonl_items(src, base=base, params=params))
    bad_extension = not params["caption_extension"] and _given(ds, general, "caption_extension")  # its own error
    _report_items(items, where, src_key, params, out, jsonl=str(src) if src_key == "video_jsonl_file" else None,
                  captions_checked=src_key == "video_jsonl_file" or not bad_extension)
    return DatasetReport(**report, videos=items.videos, usable=items.usable, too_short=len(items.too_short),
                         missing_captions=len(items.missing_captions), unreadable=len(items.unreadable), items=items.items)


@contextlib.contextmanager
def _in_folder(folder: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.CRITICAL)  # musubi logs every dataset at INFO, and its rejection at ERROR, which we report
    try:
        yield
    finally:
        log.setLevel(level)


def musubi_verdict(path: Path, *, base_dir: Path) -> Tuple[str, Optional[str]]:
    """Run musubi-tuner's own validator and dataset construction on ``path``.

    Returns:
        (verdict line, error message or None).
    """
    cu = import_musubi("dataset.config_utils")
    toml = path.absolute()  # before the folder changes: the path is the user's, relative to where they are
    try:
        with _quiet("musubi_tuner"), _in_folder(base_dir):
            user_config = cu.load_user_config(str(toml))
            blueprint = cu.BlueprintGenerator(cu.ConfigSanitizer()).generate(
                user_config, argparse.Namespace(debug_dataset=False), architecture="wan")
            group = cu.generate_dataset_group_by_blueprint(blueprint.dataset_group, training=False)
            found = sum(len(ds.datasource) for ds in group.datasets)
    except Exception as exc:  # voluptuous.MultipleInvalid, ValueError, AssertionError...
        message = " ".join(str(exc).split()) or exc.__class__.__name__
        return f"rejected by musubi-tuner {musubi_version()}: {message}", message
    return (f"accepted by musubi-tuner {musubi_version()}: {len(group.datasets)} dataset(s), {found} video(s) found",
            None)


def check_config(path: Path, *, use_musubi: bool = True, base_dir: Optional[Path] = None) -> ConfigCheckReport:
    """Check a musubi-tuner dataset TOML.

    Args:
        path: the TOML.
        use_musubi: also run musubi-tuner's validator when it is importable.
        base_dir: folder relative paths resolve against (default: the current folder).
            musubi-tuner's own check runs with that as the working directory (changed
            and restored around it, so not alongside other threads that rely on it).

    Returns:
        A :class:`ConfigCheckReport` (``ok`` when there is no error).

    Raises:
        UserError: the file does not exist.
    """
    path = Path(path)
    base = Path(base_dir or Path.cwd()).absolute()
    text = read_text_file(path, what="dataset config", fix="give the .toml passed to --dataset_config")
    out = _Problems(str(path), key_lines(text))
    if path.read_bytes().startswith(BOM):  # we read past it; musubi's toml/json readers stop at it
        out.items.append(ConfigProblem("error", str(path), 1, None, "the file starts with a UTF-8 byte-order mark "
                                       "(Windows Notepad adds one), which musubi-tuner's reader rejects",
                                       "save it as UTF-8 without BOM (Notepad: Save as, Encoding 'UTF-8')"))
        use_musubi = False  # its verdict would only repeat this, in its own words
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomlkit.parse(text).unwrap()
    except json.JSONDecodeError as exc:
        out.items.append(ConfigProblem("error", str(path), exc.lineno, None, f"not valid JSON ({exc.msg})",
                                       "fix the JSON syntax at that line"))
        return ConfigCheckReport(str(path), tuple(out.items), None, (), ())
    except tomlkit.exceptions.ParseError as exc:
        hint = ("a backslash in a \"...\" string is an escape: use forward slashes" if "\\" in text
                else "fix the TOML syntax at that line")
        out.items.append(ConfigProblem("error", str(path), exc.line, None, f"not valid TOML ({exc})", hint))
        return ConfigCheckReport(str(path), tuple(out.items), None, (), ())
    check_keys(data, out)
    general = general_section(data)
    datasets = data.get("datasets") if isinstance(data.get("datasets"), list) else []
    if not datasets:
        out.add("error", (), "datasets", "no [[datasets]] table", "add one [[datasets]] per clip folder")
    reports = [_check_dataset(i, ds, general, out, base) for i, ds in enumerate(datasets) if isinstance(ds, dict)]
    caches = [r.cache_directory for r in reports if r.cache_directory]
    for c in sorted({c for c in caches if caches.count(c) > 1}):
        out.add("error", (), "cache_directory", f"several datasets share the cache folder {c} (musubi refuses this; "
                "an unset cache_directory means the video folder)", "give each [[datasets]] its own cache_directory")
    verdict = None
    if use_musubi and musubi_available():
        verdict, error = musubi_verdict(path, base_dir=base)
        if error:
            out.add("error", (), None, f"musubi-tuner rejects it: {error}", "fix the problems above, then check again")
    return ConfigCheckReport(str(path), tuple(out.items), verdict, tuple(reports), tuple(dict.fromkeys(caches)))
