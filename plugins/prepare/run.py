"""``prepare``: a folder of turntable footage -> orbit-checked 4n+1 clips and a manifest.

Sources are processed in parallel, one worker process per core (each source is decoded
once, see :mod:`circle_rotate.prepare.source`). The manifest is rewritten atomically
after every source, so a re-run (or a run after Ctrl-C) skips sources whose content
fingerprint and settings are unchanged and whose clips are all present, re-encodes no
clip it already has, and picks up new sources. Sources are only ever read.

A source being re-made keeps its old lines until its new ones replace them, and Ctrl-C
removes the clips of sources it did not finish, so an interrupted run leaves a folder whose
clips and lines agree. A run killed outright leaves clips no line names; the folder's journal
(:mod:`circle_rotate.prepare.prepared_folder`) says which, and the next run removes them. Other
files in ``videos/`` that no line names (put there by hand) are never deleted: the run is
refused, and ``--repair`` moves them to ``set_aside/``.
"""

from __future__ import annotations

import contextlib
import glob
import dataclasses
import logging
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from circle_rotate.kernel.atomic import exclusive_folder, write_json
from circle_rotate.kernel.errors import ManifestMismatchError, UserError
from circle_rotate.prepare.caption import CARRIED, SOURCE_CAPTION
from circle_rotate.prepare.manifest import (MANIFEST_NAME, accepted_clips, by_source, clip_path, fingerprint, read_manifest,
                                    relative_posix, write_manifest)
from circle_rotate.kernel.progress import progress
from circle_rotate.kernel.animated_image import ANIMATED_SUFFIXES, is_animation
from circle_rotate.kernel.video_io import VIDEO_SUFFIXES, first_of_each, walk_visible
from circle_rotate.kernel.worker_signals import quiet_stop, stop_workers
from circle_rotate.kernel.write_checks import check_output_dir
from circle_rotate.prepare.options import PrepareOptions
from circle_rotate.prepare.prepared_folder import (FolderDiff, clear_journal, clip_files, folder_diff, left_by_killed_run,
                                                  note_clip)
from circle_rotate.prepare.source import BARS_NOTE, SourceJob, process_source
from circle_rotate.prepare.source_caption import (SOURCE_CAPTION_EXT, SourceCaption, apply_caption_writes, carry,
                                                 caption_file_of, judge_clip_captions, read_source_captions)

logger = logging.getLogger(__name__)

SUMMARY_NAME = "prepare_summary.json"
PLOT_NAME = "prepare_summary.png"
FAILED = ("error", "truncated", "too_short")  # statuses of sources that count as failed
#: Where ``--repair`` moves files in the clip folders that no manifest line names (outside
#: ``videos/``, so musubi does not train on them; nothing a user put there is deleted).
SET_ASIDE = "set_aside"


class PrepareInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``prepare``, saying what the folder now holds (the CLI prints it)."""

    def __init__(self, kept: str, signum: int = signal.SIGINT):
        super().__init__(kept)
        self.kept = kept
        self.signum = signum  # Ctrl-C, or SIGTERM/SIGHUP (cli.main.Terminated)


@dataclass(frozen=True)
class PrepareReport:
    """What a run did. ``failed`` lists (source, status, reason) of unusable sources, ``hdr``
    (source, "HLG" or "PQ") those tone-mapped from HDR to SDR."""

    out_dir: Path
    manifest: Path
    sources: int
    processed: int
    unchanged: int
    clips: int
    rejected: int
    statuses: Dict[str, int] = field(default_factory=dict)
    failed: Tuple[Tuple[str, str, str], ...] = ()
    summary: Path = Path()
    plot: Path = Path()
    hdr: Tuple[Tuple[str, str], ...] = ()
    absent: Tuple[str, ...] = ()  # sources in the manifest no longer under the raw folder (lines and clips kept)
    absent_clips: int = 0  # accepted clips of those sources, still in videos/
    pruned: Tuple[str, ...] = ()  # such sources whose lines and clips --prune removed
    set_aside: Tuple[str, ...] = ()  # files --repair (or --prune: captions) moved out of the clip folders, relative to OUT_DIR
    passed_over: Tuple[str, ...] = ()  # clips under the raw folder in an earlier prepare's output, not taken as footage
    not_video: Tuple[str, ...] = ()  # files under the raw folder not named as videos (not read)
    linked_again: Tuple[str, ...] = ()  # names under the raw folder of a video listed already (a link to it): not read twice
    smaller: int = 0  # accepted clips under the size asked for (their sources are; no --upscale)
    all_smaller: bool = False  # every accepted clip is (config then trains them at their own size)
    barred: Tuple[Tuple[str, str], ...] = ()  # (source, note) whose clips keep black bars, with the source's crop
    unfinished: Tuple[str, ...] = ()  # clips a killed earlier run left unlisted, removed before this run
    source_captions: Tuple[str, ...] = ()  # the sources' own caption files (relative to RAW) carried to their clips
    carried: int = 0  # accepted clips whose caption is their source's
    caption_edits: Tuple[str, ...] = ()  # clip captions (relative to OUT_DIR) left as edited, not the source's text
    no_motion: Tuple[Tuple[str, str], ...] = ()  # (source, reason) of this run's sources that gave no clip: no motion found

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class RawFiles:
    """What a raw folder holds, from one walk (hidden files and the output folder passed over)."""

    sources: Tuple[Path, ...]  # the footage
    earlier_output: Tuple[Path, ...]  # videos inside a folder holding a prepare manifest: clips of clips
    not_video: Tuple[Path, ...]  # files whose suffix is no video container's, not read
    captions: Tuple[Tuple[Path, Path], ...] = ()  # (source, its caption file beside it, as musubi pairs them)
    linked_again: Tuple[Path, ...] = ()  # links to a source listed already (the first name in sorted order kept)


def scan_raw(raw: Path, *, exclude: Path) -> RawFiles:
    """Sort the files under ``raw`` (recursively, in name order) into footage, an earlier prepare's
    output (which would count each take twice), and files that are not videos by name (so that a
    run can name them); ``exclude`` (the output folder) and hidden files are passed over."""
    if raw.is_file():
        beside = caption_file_of(raw)
        return RawFiles((raw,), (), (), ((raw, beside),) if beside.is_file() else ())
    files, dangling = walk_visible(raw)  # linked folders followed; links to nothing passed over, and named
    outputs = {m.parent for m in files if m.name == MANIFEST_NAME}  # an earlier prepare's folders, its set_aside/ too
    sources: List[Path] = []
    earlier: List[Path] = []
    other: List[Path] = [p for p in dangling if not (exclude == p or exclude in p.parents)]
    for p in files:
        if exclude == p or exclude in p.parents:
            continue
        inside = not outputs.isdisjoint(p.parents)
        if p.suffix.lower() in VIDEO_SUFFIXES or (p.suffix.lower() in ANIMATED_SUFFIXES and is_animation(p)):
            (earlier if inside else sources).append(p)
        elif not inside:
            other.append(p)
    sources, again = first_of_each(sources)
    # a video's own caption (clip_0001.mp4 + clip_0001.txt): carried to its clips, not passed over;
    # musubi pairs it with every video of that stem in the folder (clip.mp4 and clip.mov alike)
    paired: Dict[Path, List[Path]] = {}
    for s in sources:
        paired.setdefault(caption_file_of(s), []).append(s)
    captions = tuple((s, p) for p in other if p.suffix == SOURCE_CAPTION_EXT for s in paired.get(p, ()))
    taken = {c for _, c in captions}
    return RawFiles(tuple(sources), tuple(earlier), tuple(sorted(p for p in other if p not in taken)), captions,
                    tuple(again))


def _clips_present(out_dir: Path, records: List[dict]) -> bool:
    return all(clip_path(out_dir, r).exists() for r in records if r.get("type") == "clip" and r.get("clip"))


def _plan_jobs(raw: Path, out_dir: Path, sources: List[Path], old: Dict[str, List[dict]],
               options: PrepareOptions, redo: frozenset = frozenset(),
               captions: Optional[Dict[Path, SourceCaption]] = None) -> Tuple[List[SourceJob], Dict[str, List[dict]]]:
    """Jobs for sources that need work; records kept for the rest, with their source's caption now."""
    captions = captions or {}
    jobs, kept = [], {}
    key = options.settings_key()
    named = {path: path.name if raw.is_file() else relative_posix(path, raw) for path in sources}
    earlier = {}  # fingerprint -> the name an earlier run gave that file
    for rel_old, recs in old.items():
        head = next((r for r in recs if r.get("type") == "source"), {})
        if head.get("fingerprint"):
            earlier.setdefault(head["fingerprint"], rel_old)
    for path in sources:
        rel = named[path]
        try:
            fp = fingerprint(path)
        except OSError as exc:
            kept[rel] = [{"type": "source", "source": rel, "status": "error", "reason": f"cannot be read ({exc})"}]
            continue
        if rel not in old and earlier.get(fp) not in (None, *named.values()):
            rel = earlier[fp]  # the same file given another way (alone, or its subfolder): one source, not two
        prev = old.get(rel, [])
        head = next((r for r in prev if r.get("type") == "source"), {})
        if (head.get("fingerprint") == fp and head.get("settings") == key and head.get("status") not in FAILED
                and _clips_present(out_dir, prev) and rel not in redo):
            kept[rel] = carry(prev, captions.get(path))  # a caption file added or edited since: taken up
            continue
        reuse = frozenset(r["id"] for r in prev if r.get("type") == "clip" and r.get("clip")
                          and clip_path(out_dir, r).exists() and r.get("id"))
        jobs.append(SourceJob(str(path), rel, fp, str(out_dir), options, reuse))
    return jobs, kept


def _dropped(old: List[dict], new: List[dict]) -> List[str]:
    """The clips (relative paths) of ``old`` records that ``new`` ones no longer list."""
    keep = {r["clip"] for r in new if r.get("type") == "clip" and r.get("clip")}
    return [r["clip"] for r in old if r.get("type") == "clip" and r.get("clip") and r["clip"] not in keep]


def _remove_stale(out_dir: Path, old: List[dict], new: List[dict]) -> None:
    """Delete clip files an earlier run made for this source that the new run no longer
    lists (musubi would train on them); caption files, possibly edited by hand, stay."""
    for rel in _dropped(old, new):
        clip_path(out_dir, {"clip": rel}).unlink(missing_ok=True)


def _run_jobs(jobs: List[SourceJob], options: PrepareOptions, on_done) -> None:
    workers = options.workers(len(jobs))
    bar = progress(total=len(jobs), desc="prepare", unit="source")
    try:
        if workers == 1:
            _prefetch_matplotlib()
            for job in jobs:
                on_done(job, process_source(job))
                bar.update()
            return
        with ProcessPoolExecutor(max_workers=workers, initializer=quiet_stop) as pool:
            futures = {pool.submit(process_source, job): job for job in jobs}
            _prefetch_matplotlib()  # only now: workers are forked, no thread is copied into them
            try:
                for fut in as_completed(futures):
                    try:
                        records = fut.result()
                    except SystemExit:  # a worker stopped by a signal (worker_signals): the run is interrupted
                        raise KeyboardInterrupt from None
                    except BrokenProcessPool:
                        # a Ctrl-C that ended an idle worker first reaches this process a moment later
                        time.sleep(1.0)
                        raise UserError("a worker process died while preparing (killed for memory?)",
                                        path=futures[fut].path, fix="run again with --jobs 1") from None
                    on_done(futures[fut], records)
                    bar.update()
            except BaseException:
                stop_workers(pool)
                raise
    finally:
        bar.close()


@dataclass(frozen=True)
class PreparePlan:
    """What a run would do (``prepare --dry-run``): sources to make or re-make, and those unchanged."""

    to_process: Tuple[str, ...]
    unchanged: Tuple[str, ...]
    unfinished: Tuple[str, ...] = ()  # clips a killed run left, which the run removes first


def plan_prepare(raw_dir: Path, out_dir: Path, *, options: PrepareOptions = PrepareOptions(), repair: bool = False,
                 prune: bool = False) -> PreparePlan:
    """Every check :func:`prepare_dataset` makes, and what it would do; nothing is written."""
    with exclusive_folder(Path(out_dir), command="prepare"):  # a running one's half-written folder is no plan
        raw, out, files, records, diff, killed, captions = _checked_run(raw_dir, out_dir, options, repair=repair,
                                                                        prune=prune)
    redo = frozenset(diff.sources(records)) if diff else frozenset()
    jobs, kept = _plan_jobs(raw, out, list(files.sources), by_source(records), options, redo, captions)
    return PreparePlan(tuple(j.rel for j in jobs), tuple(kept), killed)


def _checked_run(raw_dir: Path, out_dir: Path, options: PrepareOptions, *, repair: bool, prune: bool):
    """(raw, out, what raw holds, manifest records, folder diff, clips a killed run left, the sources'
    own captions), once every input is fit to run on; the diff leaves out the killed run's clips."""
    options.validate()
    raw, out = Path(raw_dir).absolute(), Path(out_dir).absolute()
    if prune and raw.is_file():
        raise UserError("--prune with one video as RAW_DIR would drop every other source of the folder", path=raw,
                        fix="give the folder of all the footage with --prune")
    if not raw.exists():
        raise UserError("raw footage folder not found", path=raw, fix="check the path")
    # through links and ``..`` as the file system sees them: `-o link_to_raw` is RAW itself
    real_raw, real_out = raw.resolve(), out.resolve()
    if real_out == real_raw or (raw.is_file() and real_out == real_raw.parent):
        raise UserError("output folder is the raw folder itself; sources are never written to", path=out,
                        fix="choose a separate OUT_DIR")
    if real_out in real_raw.parents:  # prepare writes (and deletes stale) clips under OUT: never where sources are
        raise UserError(f"the raw footage {raw} is inside the output folder", path=out,
                        fix="choose an OUT_DIR that does not hold the sources")
    files = scan_raw(raw, exclude=out)
    if not files.sources:  # checked before anything is written
        earlier = files.earlier_output
        if earlier:
            raise UserError(f"it holds only an earlier prepare's output ({len(earlier)} clip(s), first: "
                            f"{relative_posix(earlier[0], raw)}), which is not footage", path=raw,
                            fix="pass the folder of the original videos")
        raise UserError("no video files found", path=raw, fix=f"put {'/'.join(sorted(VIDEO_SUFFIXES))} files (or animated .webp/.png) in it")
    captions = read_source_captions(files.captions, raw=raw)  # a bad one is refused before anything is written
    check_output_dir(out, flag="OUT_DIR")
    manifest = out / MANIFEST_NAME
    records = read_manifest(manifest)
    diff = folder_diff(out, records)
    killed = left_by_killed_run(out, diff)
    if killed:
        diff = FolderDiff(tuple(c for c in diff.unlisted if c not in killed), diff.missing)
    if diff and not records and not repair:
        raise UserError(f"{len(diff.unlisted)} video file(s) already in its clip folders and no {MANIFEST_NAME}: "
                        f"not a folder prepare wrote (first: {diff.unlisted[0]})", path=out,
                        fix=f"choose an empty OUT_DIR, or pass --repair to move them to {out / SET_ASIDE}")
    if diff and not repair:
        raise ManifestMismatchError(manifest, unlisted=diff.unlisted, missing=diff.missing)
    return raw, out, files, records, diff, killed, captions


def prepare_dataset(raw_dir: Path, out_dir: Path, *, options: PrepareOptions = PrepareOptions(),
                    repair: bool = False, prune: bool = False) -> PrepareReport:
    """Cut every video under ``raw_dir`` into QC'd clips in ``out_dir/videos``.

    Args:
        raw_dir: a folder of source videos (searched recursively) or one video file.
        out_dir: where clips, ``manifest.jsonl`` and the summary go (created).
        options: see :class:`PrepareOptions`.
        repair: re-process the sources whose clips on disk and manifest lines disagree, and
            move files no line names to ``out_dir/set_aside`` (without it such a folder is refused).
        prune: drop the lines and clips of sources the manifest lists that are no longer
            under ``raw_dir`` (without it they are kept and reported).

    Returns:
        A :class:`PrepareReport`; bad sources are in ``failed``, never raised.

    Raises:
        UserError: bad options, a missing ``raw_dir``, ``out_dir`` equal to it, a broken
            manifest, or clip folders holding files no manifest line names (without ``repair``).
        PrepareInterrupted: Ctrl-C; the finished sources are kept, the rest left as they were.
    """
    out_p = Path(out_dir).absolute()
    made = [d for d in (out_p, *out_p.parents) if not d.exists()]  # deepest first
    if made:
        with contextlib.suppress(OSError):  # a parent that is a file: the checks below name it
            out_p.mkdir(parents=True)
    # held from reading the manifest to its last write: two runs would each write their own lines
    with exclusive_folder(out_p, command="prepare"):
        try:
            raw, out, files, records, diff, killed, captions = _checked_run(raw_dir, out_dir, options, repair=repair,
                                                                            prune=prune)
            redo = frozenset(diff.sources(records)) if diff else frozenset()
            out.mkdir(parents=True, exist_ok=True)
            for rel in killed:
                (out / rel).unlink(missing_ok=True)
            clear_journal(out)
            report = _prepare(raw, out, list(files.sources), records, redo, options, repair, prune, captions)
        except BaseException:
            if made:  # a first run that failed before writing anything leaves no empty folders behind
                for d in (out_p / "videos", out_p / "rejected", *made):
                    with contextlib.suppress(OSError):
                        d.rmdir()
            raise
    return dataclasses.replace(report, passed_over=tuple(relative_posix(p, raw) for p in files.earlier_output),
                               not_video=tuple(relative_posix(p, raw) for p in files.not_video), unfinished=killed,
                               linked_again=tuple(relative_posix(p, raw) for p in files.linked_again))


def _prepare(raw: Path, out: Path, sources: List[Path], records: List[dict], redo: frozenset, options: PrepareOptions,
             repair: bool, prune: bool, captions: Dict[Path, SourceCaption]) -> PrepareReport:
    manifest = out / MANIFEST_NAME
    old = by_source(records)
    before = {relative_posix(p, out) for p in clip_files(out)}
    jobs, state = _plan_jobs(raw, out, sources, old, options, redo, captions)
    redone = {j.rel for j in jobs}
    # the kept sources' clip captions, judged now (their lines take what musubi will read), written
    # once the manifest says where they came from
    caption_writes, caption_edits = [], []
    for rel, recs in state.items():
        writes, edits = judge_clip_captions(out, recs, old.get(rel, []))
        caption_writes += writes
        caption_edits += edits
    absent = [k for k in old if k not in state and k not in redone]
    # a source being re-made keeps its old lines (and clips) until its new ones replace them,
    # so an interrupted run loses nothing it had; sources not in this run keep theirs
    state.update({k: v for k, v in old.items() if k not in state})
    pruned = tuple(absent) if prune else ()
    pruned_sidecars = []
    for rel in pruned:
        records_of = state.pop(rel)
        _remove_stale(out, records_of, [])
        # a pruned clip's caption may be hand-edited: set aside, not deleted, and not left to
        # caption a clip of the same name a later run makes
        pruned_sidecars += [_set_aside(out, relative_posix(f, out)) for f in _sidecars(out, records_of)]
    logger.info("%d source(s): %d to process, %d unchanged", len(sources), len(jobs), len(sources) - len(jobs))
    finished = []

    def on_done(job: SourceJob, records: List[dict]) -> None:
        # the lines first: if writing them fails (a full disk), the source's old lines and clips
        # stand, and its new clips, which no line names, go with the run's other unfinished ones;
        # the old clips they drop are journaled first, as a kill before their removal leaves them unlisted
        for rel in _dropped(old.get(job.rel, []), records):
            note_clip(out, rel)
        records = carry(records, captions.get(Path(job.path)))
        writes, edits = judge_clip_captions(out, records, old.get(job.rel, []))
        write_manifest(manifest, _lines({**state, job.rel: records}))
        state[job.rel] = records
        finished.append(job.rel)
        _remove_stale(out, old.get(job.rel, []), records)
        apply_caption_writes(writes)
        caption_edits.extend(edits)

    kept_absent = [k for k in absent if k not in pruned]
    try:
        if pruned:
            write_manifest(manifest, _lines(state))
        _run_jobs(jobs, options, on_done)
        write_manifest(manifest, _lines(state))
        apply_caption_writes(caption_writes)
        clear_journal(out)
        moved: Tuple[str, ...] = ()
        if repair:  # files no source claims: musubi would train on them, and a user may have put them there
            moved = tuple(_set_aside(out, rel)
                          for rel in folder_diff(out, _lines(state)).unlisted)
        report = _summarise(out, manifest, sources, state, processed=len(jobs), options=options, absent=kept_absent)
    except BaseException as exc:
        # a signal may have cut the manifest's write after a source's lines joined ``state``: write
        # it again, so that the clips kept below and the lines on disk are the same set
        with contextlib.suppress(Exception):
            if state or manifest.exists():  # not an empty manifest where none was
                write_manifest(manifest, _lines(state))
        _remove_unfinished(out, before, state)
        with contextlib.suppress(OSError):
            if not folder_diff(out, _lines(state)).unlisted:  # tidy: nothing left for a later run to remove
                clear_journal(out)
        if isinstance(exc, KeyboardInterrupt):
            raise PrepareInterrupted(
                f"{len(finished)} of {len(jobs)} source(s) finished and are in the manifest, the clips of the "
                f"others removed; run the same command again to resume",
                getattr(exc, "signum", signal.SIGINT)) from None
        raise
    absent_clips = sum(1 for k in kept_absent for r in state[k] if r.get("type") == "clip" and r.get("verdict") == "accept")
    carried = [r for recs in state.values() for r in accepted_clips(recs) if r.get(CARRIED) is not None]
    return dataclasses.replace(report, absent=tuple(kept_absent), absent_clips=absent_clips, pruned=pruned,
                               set_aside=tuple(pruned_sidecars) + moved,
                               source_captions=tuple(sorted({r[SOURCE_CAPTION] for r in carried})),
                               carried=len(carried), caption_edits=tuple(sorted(set(caption_edits))))


def _lines(state: Dict[str, List[dict]]) -> List[dict]:
    """The manifest's lines: every source's, in the order the sources joined."""
    return [r for recs in state.values() for r in recs]


def _remove_unfinished(out: Path, before: set, state: Dict[str, List[dict]]) -> None:
    """After a failed or interrupted run: delete the clip files this run wrote that no manifest
    line names (sources it did not finish), so the folder's clips and lines agree again."""
    listed = {r["clip"] for recs in state.values() for r in recs if r.get("type") == "clip" and r.get("clip")}
    for path in clip_files(out):
        rel = relative_posix(path, out)
        if rel not in before and rel not in listed:
            path.unlink(missing_ok=True)


def _sidecars(out: Path, records: List[dict]) -> List[Path]:
    """Files beside these records' clips that share a clip's name (its caption, whatever the --ext)."""
    found = []
    for r in records:
        if r.get("type") == "clip" and r.get("clip"):
            clip = clip_path(out, r)
            found += [f for f in clip.parent.glob(glob.escape(clip.stem) + ".*") if f != clip and f.is_file()]
    return found


def _set_aside(out: Path, rel: str) -> str:
    """Move ``out/rel`` to ``out/set_aside/rel`` (a free name), returning where it went, relative to ``out``."""
    target = out / SET_ASIDE / rel
    n = 1
    while target.exists():
        target = out / SET_ASIDE / Path(rel).with_name(f"{Path(rel).stem}.{n}{Path(rel).suffix}")
        n += 1
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(out / rel, target)
    return relative_posix(target, out)


def _prefetch_matplotlib() -> None:
    # The summary plot needs matplotlib (~1 s to import); the main process mostly waits on
    # workers meanwhile, so import it on the side.
    def load() -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401

    threading.Thread(target=load, daemon=True).start()


def _summarise(out: Path, manifest: Path, sources: List[Path], state: Dict[str, List[dict]], *,
               processed: int, options: PrepareOptions, absent: Sequence[str] = ()) -> PrepareReport:
    from circle_rotate.prepare.plot import plot_summary

    records = _lines(state)
    heads = [r for r in records if r.get("type") == "source"]
    current = [h for h in heads if h.get("source") not in absent]  # statuses and failures are of this run's sources
    statuses: Dict[str, int] = {}
    for h in current:
        statuses[h["status"]] = statuses.get(h["status"], 0) + 1
    clips = [r for r in records if r.get("type") == "clip"]
    accepted = sum(r["verdict"] == "accept" for r in clips)
    failed = tuple((h["source"], h["status"], h.get("reason") or "") for h in current if h["status"] in FAILED)
    # not failures (exit 0: a still or cut-up video is no broken file), yet no clip: the CLI names them
    no_motion = tuple((h["source"], h.get("reason") or "") for h in current if h["status"] == "no_motion")
    hdr = tuple((h["source"], h["probe"]["hdr"]) for h in heads
                if h["status"] not in FAILED and (h.get("probe") or {}).get("hdr"))  # decoded, so tone-mapped
    barred = tuple((h["source"], n) for h in current for n in h.get("notes") or () if n.startswith(BARS_NOTE))
    summary = {"options": asdict(options), "sources": len(sources), "processed": processed, "unchanged": len(sources) - processed,
               "statuses": statuses, "clips_accepted": accepted, "clips_rejected": len(clips) - accepted,
               "failed": [{"source": s, "status": st, "reason": why} for s, st, why in failed],
               "hdr_tone_mapped": [{"source": s, "transfer": t} for s, t in hdr],
               "black_bars": [{"source": s, "note": n} for s, n in barred],
               "not_under_raw": list(absent)}
    summary_path = write_json(out / SUMMARY_NAME, summary)
    plot_path = plot_summary(clips, heads, out / PLOT_NAME)
    size = options.size
    area = size.width * size.height if size.mode in ("bucket", "fit") and not size.upscale else 0
    smaller = sum(1 for c in clips if c["verdict"] == "accept" and c["width"] * c["height"] < 0.9 * area)
    all_smaller = bool(smaller) and smaller == accepted
    return PrepareReport(out, manifest, len(sources), processed, len(sources) - processed, accepted,
                         len(clips) - accepted, statuses, failed, summary_path, plot_path, hdr, smaller=smaller,
                         all_smaller=all_smaller, barred=barred, no_motion=no_motion)
