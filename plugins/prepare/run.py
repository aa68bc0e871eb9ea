"""``prepare``: a folder of turntable footage -> orbit-checked 4n+1 clips and a manifest.

Sources are processed in parallel, one worker process per core (each source is decoded
once, see :mod:`circle_rotate.prepare.source`). The manifest is rewritten atomically
after every source, so a re-run (or a run after Ctrl-C) skips sources whose content
fingerprint and settings are unchanged and whose clips are all present, re-encodes no
clip it already has, and picks up new sources. Sources are only ever read.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

from circle_rotate.kernel.atomic import write_json
from circle_rotate.kernel.errors import ManifestMismatchError, UserError
from circle_rotate.prepare.manifest import (MANIFEST_NAME, by_source, clip_path, fingerprint, read_manifest, relative_posix,
                                    write_manifest)
from circle_rotate.kernel.progress import progress
from circle_rotate.kernel.video_io import VIDEO_SUFFIXES, video_files_under
from circle_rotate.kernel.write_checks import check_output_dir
from circle_rotate.prepare.options import PrepareOptions
from circle_rotate.prepare.prepared_folder import folder_diff
from circle_rotate.prepare.source import SourceJob, process_source

logger = logging.getLogger(__name__)

SUMMARY_NAME = "prepare_summary.json"
PLOT_NAME = "prepare_summary.png"
FAILED = ("error", "truncated", "too_short")  # statuses of sources that count as failed


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

    @property
    def ok(self) -> bool:
        return not self.failed


def find_sources(raw: Path, *, exclude: Path) -> List[Path]:
    """Video files under ``raw`` (recursively, sorted; hidden files and ``exclude`` skipped)."""
    if raw.is_file():
        return [raw]
    return [p for p in video_files_under(raw) if exclude != p and exclude not in p.parents]


def _clips_present(out_dir: Path, records: List[dict]) -> bool:
    return all(clip_path(out_dir, r).exists() for r in records if r.get("type") == "clip" and r.get("clip"))


def _plan_jobs(raw: Path, out_dir: Path, sources: List[Path], old: Dict[str, List[dict]],
               options: PrepareOptions, redo: frozenset = frozenset()) -> Tuple[List[SourceJob], Dict[str, List[dict]]]:
    """Jobs for sources that need work; records kept as they are for the rest."""
    jobs, kept = [], {}
    key = options.settings_key()
    for path in sources:
        rel = path.name if raw.is_file() else relative_posix(path, raw)
        try:
            fp = fingerprint(path)
        except OSError as exc:
            kept[rel] = [{"type": "source", "source": rel, "status": "error", "reason": f"cannot be read ({exc})"}]
            continue
        prev = old.get(rel, [])
        head = next((r for r in prev if r.get("type") == "source"), {})
        if (head.get("fingerprint") == fp and head.get("settings") == key and head.get("status") not in FAILED
                and _clips_present(out_dir, prev) and rel not in redo):
            kept[rel] = prev
            continue
        reuse = frozenset(r["id"] for r in prev if r.get("type") == "clip" and r.get("clip")
                          and clip_path(out_dir, r).exists() and r.get("id"))
        jobs.append(SourceJob(str(path), rel, fp, str(out_dir), options, reuse))
    return jobs, kept


def _remove_stale(out_dir: Path, old: List[dict], new: List[dict]) -> None:
    """Delete clip files an earlier run made for this source that the new run no longer
    lists (musubi would train on them); caption files, possibly edited by hand, stay."""
    keep = {r["clip"] for r in new if r.get("type") == "clip" and r.get("clip")}
    for r in old:
        if r.get("type") == "clip" and r.get("clip") and r["clip"] not in keep:
            clip_path(out_dir, r).unlink(missing_ok=True)


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
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(process_source, job): job for job in jobs}
            _prefetch_matplotlib()  # only now: workers are forked, no thread is copied into them
            try:
                for fut in as_completed(futures):
                    on_done(futures[fut], fut.result())
                    bar.update()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        bar.close()


def prepare_dataset(raw_dir: Path, out_dir: Path, *, options: PrepareOptions = PrepareOptions(),
                    repair: bool = False) -> PrepareReport:
    """Cut every video under ``raw_dir`` into QC'd clips in ``out_dir/videos``.

    Args:
        raw_dir: a folder of source videos (searched recursively) or one video file.
        out_dir: where clips, ``manifest.jsonl`` and the summary go (created).
        options: see :class:`PrepareOptions`.
        repair: re-process the sources whose clips on disk and manifest lines disagree, and
            delete clip files no line names (without it such a folder is refused).

    Returns:
        A :class:`PrepareReport`; bad sources are in ``failed``, never raised.

    Raises:
        UserError: bad options, a missing ``raw_dir``, ``out_dir`` equal to it, or a
            broken manifest.
    """
    options.validate()
    raw, out = Path(raw_dir).absolute(), Path(out_dir).absolute()
    if not raw.exists():
        raise UserError("raw footage folder not found", path=raw, fix="check the path")
    if out == raw or (raw.is_file() and out == raw.parent):
        raise UserError("output folder is the raw folder itself; sources are never written to", path=out,
                        fix="choose a separate OUT_DIR")
    if out in raw.parents:  # prepare writes (and deletes stale) clips under OUT: never where sources are
        raise UserError(f"the raw footage {raw} is inside the output folder", path=out,
                        fix="choose an OUT_DIR that does not hold the sources")
    sources = find_sources(raw, exclude=out)
    if not sources:  # checked before anything is written
        raise UserError("no video files found", path=raw, fix=f"put {'/'.join(sorted(VIDEO_SUFFIXES))} files in it")
    check_output_dir(out, flag="OUT_DIR")
    manifest = out / MANIFEST_NAME
    records = read_manifest(manifest)
    diff = folder_diff(out, records)
    redo = frozenset(diff.sources(records)) if diff else frozenset()
    if redo and not repair:
        raise ManifestMismatchError(manifest, unlisted=diff.unlisted, missing=diff.missing)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _prepare(raw, out, sources, records, redo, options, repair)
    except BaseException:
        if created:  # a first run that failed before writing anything leaves no empty folders behind
            for d in (out / "videos", out / "rejected", out):
                with contextlib.suppress(OSError):
                    d.rmdir()
        raise


def _prepare(raw: Path, out: Path, sources: List[Path], records: List[dict], redo: frozenset, options: PrepareOptions,
             repair: bool) -> PrepareReport:
    manifest = out / MANIFEST_NAME
    old = by_source(records)
    jobs, state = _plan_jobs(raw, out, sources, old, options, redo)
    seen = set(state) | {j.rel for j in jobs}
    state.update({k: v for k, v in old.items() if k not in seen})  # sources not in this run keep their records
    logger.info("%d source(s): %d to process, %d unchanged", len(sources), len(jobs), len(sources) - len(jobs))

    def on_done(job: SourceJob, records: List[dict]) -> None:
        _remove_stale(out, old.get(job.rel, []), records)
        state[job.rel] = records
        write_manifest(manifest, [r for recs in state.values() for r in recs])

    _run_jobs(jobs, options, on_done)
    write_manifest(manifest, [r for recs in state.values() for r in recs])
    if repair:  # clip files no source claims any more: musubi would train on them
        for rel in folder_diff(out, [r for recs in state.values() for r in recs]).unlisted:
            (out / rel).unlink(missing_ok=True)
    return _summarise(out, manifest, sources, state, processed=len(jobs), options=options)


def _prefetch_matplotlib() -> None:
    # The summary plot needs matplotlib (~1 s to import); the main process mostly waits on
    # workers meanwhile, so import it on the side.
    def load() -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401

    threading.Thread(target=load, daemon=True).start()


def _summarise(out: Path, manifest: Path, sources: List[Path], state: Dict[str, List[dict]], *,
               processed: int, options: PrepareOptions) -> PrepareReport:
    from circle_rotate.prepare.plot import plot_summary

    records = [r for recs in state.values() for r in recs]
    heads = [r for r in records if r.get("type") == "source"]
    statuses: Dict[str, int] = {}
    for h in heads:
        statuses[h["status"]] = statuses.get(h["status"], 0) + 1
    clips = [r for r in records if r.get("type") == "clip"]
    accepted = sum(r["verdict"] == "accept" for r in clips)
    failed = tuple((h["source"], h["status"], h.get("reason") or "") for h in heads if h["status"] in FAILED)
    hdr = tuple((h["source"], h["probe"]["hdr"]) for h in heads
                if h["status"] not in FAILED and (h.get("probe") or {}).get("hdr"))  # decoded, so tone-mapped
    summary = {"options": asdict(options), "sources": len(sources), "processed": processed, "unchanged": len(sources) - processed,
               "statuses": statuses, "clips_accepted": accepted, "clips_rejected": len(clips) - accepted,
               "failed": [{"source": s, "status": st, "reason": why} for s, st, why in failed],
               "hdr_tone_mapped": [{"source": s, "transfer": t} for s, t in hdr]}
    summary_path = write_json(out / SUMMARY_NAME, summary)
    plot_path = plot_summary(clips, heads, out / PLOT_NAME)
    return PrepareReport(out, manifest, len(sources), processed, len(sources) - processed, accepted,
                         len(clips) - accepted, statuses, failed, summary_path, plot_path, hdr)
