"""``circle-rotate prepare RAW_DIR -o OUT_DIR``: footage -> orbit-checked 4n+1 clips + manifest."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from circle_rotate.cli._common import add_legacy_out, add_out, new_parser, out_path, print_json
from circle_rotate.kernel.arg_types import frame_size
from circle_rotate.kernel.errors import UserError
from circle_rotate.media.orbit_qc import QC_MODES
from circle_rotate.prepare.clip_plan import SIZE_MODES, SizePolicy

ORDER = 20


def add_parser(sub) -> None:
    p = new_parser(
        sub, "prepare", help="cut turntable footage into orbit-checked 4n+1 clips",
        description="Probe every video under RAW_DIR, cut it into clips of 4n+1 frames resampled to --fps by "
                    "timestamp (never across a scene cut; still heads, tails and pauses left out), measure each "
                    "clip's orbit from the pixels, keep what --qc accepts in OUT_DIR/videos and describe every "
                    "source and clip in OUT_DIR/manifest.jsonl. A video's own caption file beside it (clip.mp4 + "
                    "clip.txt, as musubi pairs them) is carried to each of its clips' .txt. Re-running skips finished "
                    "sources. Sources are never modified. Exit status 1 when a source could not be used, unless --keep-going.",
        examples="  circle-rotate prepare raw/ -o data/prepared\n"
                 "  circle-rotate prepare raw/ -o data/prepared --frames 81 --fps 16 --resolution 832x480 --qc strict\n"
                 "  circle-rotate prepare phone/ -o data/tiny --frames 9 --resolution 64x64 --size-mode exact --upscale\n"
                 "  circle-rotate prepare raw/ -o data/prepared --dry-run\n")
    p.add_argument("raw_dir", type=Path, help="folder of source videos (searched recursively) or one video")
    add_out(p, metavar="OUT_DIR", help="where clips (OUT_DIR/videos), manifest and summary go")
    add_legacy_out(p)  # the old spelling: prepare RAW_DIR OUT_DIR
    p.add_argument("--frames", type=int, default=81, help="frames per clip, 4n+1 (default 81, what Wan2.2 trains on)")
    p.add_argument("--fps", type=float, default=16.0, help="clip frame rate (default 16, what Wan2.2 expects)")
    p.add_argument("--resolution", type=frame_size, default=(832, 480), metavar="WxH",
                   help="target size (default 832x480; in bucket mode only the area counts, so 480x832 is the same); "
                        "use the same value as the dataset config's resolution")
    p.add_argument("--size-mode", choices=SIZE_MODES, default="bucket",
                   help="bucket (default): musubi's bucket of area WxH nearest the source's aspect, which its "
                        "caching keeps as it is; fit: inside WxH; exact: crop to WxH; keep: source size. Sides are "
                        "multiples of 16")
    p.add_argument("--upscale", action="store_true", help="allow scaling small sources up")
    p.add_argument("--keep-still", action="store_true", help="do not drop still heads, tails and pauses")
    p.add_argument("--max-clips", type=int, default=None, help="at most this many clips per source")
    p.add_argument("--qc", choices=QC_MODES, default="strict",
                   help="strict: clean orbits only (default); lenient: drop only static and cut clips; off: keep all")
    p.add_argument("--keep-rejected", action="store_true", help="also write rejected clips to OUT_DIR/rejected/")
    p.add_argument("--crf", type=int, default=18, help="x264 quality, lower is better (default 18)")
    p.add_argument("--preset", default="medium", help="x264 preset (default medium)")
    p.add_argument("--crop-bars", action="store_true",
                   help="crop black bars (letterbox, pillarbox) off each source before scaling (found on 24 frames "
                        "spread over the whole source); without it they are kept and named with the crop that removes them")
    p.add_argument("--hfov", type=float, default=60.0, help="camera horizontal field of view in degrees, for speeds")
    p.add_argument("--jobs", type=int, default=0, help="worker processes (default: one per core)")
    p.add_argument("--dry-run", action="store_true", help="list the sources that would be prepared, write nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--keep-going", action="store_true", help="exit 0 even when some sources failed")
    p.add_argument("--repair", action="store_true",
                   help="re-process sources whose clips on disk and manifest lines disagree (a line deleted, a clip "
                        "removed by hand) and move files in videos/ that no line names to OUT_DIR/set_aside/; "
                        "without it such a folder is refused")
    p.add_argument("--prune", action="store_true",
                   help="remove the manifest lines and clips of sources no longer under RAW_DIR, moving their "
                        "captions to OUT_DIR/set_aside/ (kept and reported without it)")
    p.set_defaults(func=run)


def _dry_run(args: argparse.Namespace, out: Path, options) -> int:
    from circle_rotate.prepare.run import plan_prepare

    plan = plan_prepare(args.raw_dir, out, options=options, repair=args.repair, prune=args.prune)
    if args.json:
        print_json({"to_process": list(plan.to_process), "unchanged": list(plan.unchanged),
                    "unfinished": list(plan.unfinished), "out": str(out),
                    "dry_run": True})
    else:
        print(f"{len(plan.to_process)} source(s) would be prepared into {out / 'videos'}, {len(plan.unchanged)} "
              f"unchanged (manifest {out / 'manifest.jsonl'}):")
        for source in plan.to_process:
            print(f"  {source}")
        if plan.unfinished:
            print(f"{len(plan.unfinished)} clip(s) an earlier prepare run left unfinished (it was killed) would be "
                  f"removed first (first: {plan.unfinished[0]})")
    return 0


def _first_rejection(manifest: Path) -> str:
    """`` (first: SOURCE clip N: REASON)`` for the first clip QC rejected in ``manifest``, or ""."""
    from circle_rotate.prepare.manifest import read_manifest

    try:
        records = read_manifest(manifest)
    except (OSError, UserError):
        return ""
    rejected = next((r for r in records if r.get("type") == "clip" and r.get("verdict") != "accept"
                     and r.get("reasons")), None)
    if rejected is None:
        return ""
    return f" (first: {rejected['source']} at {rejected.get('start_time', 0):g} s: {'; '.join(rejected['reasons'])})"


def _print_passed_over(raw: Path, not_video) -> None:
    """Name the files passed over: links that lead nowhere, text files that caption no video, and
    files not named as videos."""
    base = raw if raw.is_dir() else raw.parent
    dangling = [f for f in not_video if (base / f).is_symlink() and not (base / f).exists()]
    texts = [f for f in not_video if f not in dangling and Path(f).suffix.lower() == ".txt"]
    others = [f for f in not_video if f not in dangling and f not in texts]
    if dangling:
        print(f"passed over {len(dangling)} link(s) that lead nowhere (first: {dangling[0]} -> "
              f"{os.readlink(base / dangling[0])}); fix the link or copy the video in")
    if texts:  # upper.TXT, clip.mp4.txt, a caption whose video is gone: musubi would not read them either
        print(f"passed over {len(texts)} text file(s) that are no video's caption as musubi pairs them (first: "
              f"{texts[0]}): it reads <video name without its suffix>.txt, lower case, beside the video; rename "
              f"one to carry it to that video's clips")
    if others:
        kinds = sorted({Path(f).suffix.lower() or "(no suffix)" for f in others})
        print(f"passed over {len(others)} file(s) not named as videos ({', '.join(kinds[:8])}; first: "
              f"{others[0]}); rename a video whose suffix is not a container's")


def run(args: argparse.Namespace) -> int:
    from circle_rotate.prepare.options import PrepareOptions
    from circle_rotate.prepare.run import prepare_dataset

    w, h = args.resolution
    options = PrepareOptions(frames=args.frames, fps=args.fps, size=SizePolicy(args.size_mode, w, h, args.upscale),
                             trim_still=not args.keep_still, max_clips=args.max_clips, qc=args.qc, crf=args.crf,
                             preset=args.preset, jobs=args.jobs, keep_rejected=args.keep_rejected, hfov_deg=args.hfov,
                             crop_bars=args.crop_bars)
    out = out_path(args, "circle-rotate prepare")
    if out is None:
        raise UserError("no output folder given", fix=f"circle-rotate prepare {args.raw_dir} -o data/prepared")
    if args.dry_run:
        return _dry_run(args, out, options)
    report = prepare_dataset(args.raw_dir, out, options=options, repair=args.repair, prune=args.prune)
    if args.json:
        print_json(dataclasses.asdict(report))
        if not report.sources:
            raise UserError("no video files found", path=args.raw_dir, fix="put .mp4/.mov/.mkv/.webm files in it")
        return 0 if report.ok or args.keep_going else 1
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(report.statuses.items()))
    print(f"{report.sources} source(s) ({report.processed} processed, {report.unchanged} unchanged): {statuses or 'none'}")
    print(f"{report.clips} clip(s) kept in {report.out_dir / 'videos'}, {report.rejected} rejected by QC"
          f"{_first_rejection(report.manifest) if report.rejected else ''}")
    print(f"manifest: {report.manifest}\nsummary: {report.summary} (+ {report.plot.name})")
    if report.hdr:
        print(f"HDR tone-mapped to SDR (BT.709): {', '.join(f'{s} ({t})' for s, t in report.hdr)}")
    if report.smaller:
        w, h = args.resolution
        then = ("`circle-rotate config` trains them at their own size" if report.all_smaller else
                "musubi's caching scales them up to their bucket (--upscale does it here, from the source)")
        print(f"{report.smaller} clip(s) are smaller than {w}x{h}, as their sources are (--upscale scales them up); "
              f"{then}")
    if report.barred:
        source, note = report.barred[0]
        print(f"{len(report.barred)} source(s) keep black bars in their clips (first: {source}: {note})")
    if report.absent:
        print(f"{len(report.absent)} source(s) in the manifest are not under {args.raw_dir} (first: "
              f"{report.absent[0]}): their {report.absent_clips} clip(s) stay in videos/ and are trained on; "
              f"--prune removes them")
    if report.pruned:
        print(f"pruned {len(report.pruned)} source(s) no longer under {args.raw_dir} (first: {report.pruned[0]})")
    if report.unfinished:
        print(f"removed {len(report.unfinished)} clip(s) an earlier prepare run was killed before listing "
              f"(first: {report.unfinished[0]})")
    if report.set_aside:
        print(f"moved {len(report.set_aside)} file(s) no manifest line names to {report.out_dir / 'set_aside'} "
              f"(first: {report.set_aside[0]})")
    if report.carried:
        print(f"{report.carried} clip(s) took their caption from their source video's own caption file "
              f"({len(report.source_captions)} same-stem .txt file(s) beside the videos, first: "
              f"{report.source_captions[0]}); `circle-rotate caption` keeps them")
    if report.caption_edits:
        print(f"kept {len(report.caption_edits)} clip caption(s) that differ from their source's (edited, or "
              f"replaced by caption --force; first: {report.caption_edits[0]})")
    _print_passed_over(args.raw_dir, report.not_video)
    if report.linked_again:
        print(f"passed over {len(report.linked_again)} link(s) to a video already listed (first: "
              f"{report.linked_again[0]}): each video is a source once")
    if report.passed_over:
        print(f"passed over {len(report.passed_over)} clip(s) of an earlier prepare's output under {args.raw_dir} "
              f"(first: {report.passed_over[0]})")
    if report.no_motion:  # not a failure (exit 0), yet a source the user may expect clips from
        source, reason = report.no_motion[0]
        print(f"{len(report.no_motion)} source(s) gave no clip (first: {source}: {reason})")
    for source, status, reason in report.failed:
        # a file cut short that still gave clips is no failure of the run's making: said as what happened
        print(f"{'CUT SHORT' if status == 'truncated' else 'FAILED'} {source}: {status}: {reason}")
    return 0 if report.ok or args.keep_going else 1
