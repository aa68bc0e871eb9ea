"""``circle-rotate cache [run|status]``: the latent + text-encoder caches both experts train on."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from circle_rotate.cli._common import new_parser, print_json
from circle_rotate.cli._recipe_args import add_recipe_options, recipe_env
from circle_rotate.kernel.arg_types import whole_number
from circle_rotate.kernel.errors import UserError

ORDER = 40


def add_parser(sub) -> None:
    p = new_parser(sub, "cache", help="cache latents (--i2v) and text-encoder outputs once for both experts",
                   description="Runs recipes/cache.sh: musubi's wan_cache_latents.py --i2v and "
                               "wan_cache_text_encoder_outputs.py with --skip_existing --keep_cache, so an interrupted "
                               "run resumes. The caches depend on the VAE, the T5, the clips and --i2v, never on the "
                               "expert: one pass serves both. Refuses when the disk cannot hold the estimate; "
                               "`cache status` lists cached / missing / stale clips and the space used.",
                   examples="  circle-rotate cache --dataset-config datasets/circle/circle.toml --dry-run\n"
                            "  circle-rotate cache --vae models/wan_2.1_vae.safetensors --t5 models/t5.pth --gpus 0,1\n"
                            "  circle-rotate cache status --dataset-config my.toml\n"
                            "  circle-rotate cache --gpus 0-7 --nodes 2 --node-rank 0   # on each node, its rank\n")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    p.default_action = "run"  # `cache --dry-run` is `cache run --dry-run` (see cli.main)
    r = actions.add_parser("run", help="cache latents and text-encoder outputs (the default action)",
                           description="Plan, check and run the cache pass (recipes/cache.sh).")
    add_recipe_options(r)
    r.add_argument("--t5", type=Path, help="the umt5-xxl text encoder (T5)")
    r.add_argument("--device", choices=("cuda", "cpu"), help="where the VAE and T5 run (DEVICE; default cuda)")
    r.add_argument("--refresh-stale", action="store_true",
                   help="delete caches made without --i2v, older than their clip or with an old caption, and redo them")
    r.add_argument("--nodes", type=whole_number(1), default=1, help="machines sharing the pass (cache directory on shared storage)")
    r.add_argument("--node-rank", type=whole_number(0), help="this machine, 0 to nodes-1 (the dry run lists every node's shards)")
    r.add_argument("--dry-run", action="store_true", help="print the plan and the exact commands, run nothing")
    r.add_argument("--json", action="store_true", help="the plan and the commands as JSON")
    r.set_defaults(func=run)
    st = actions.add_parser("status", help="what is cached, missing or stale, and the space used (nothing runs)",
                            description="List cached / missing / stale clips of the dataset config and the space used.")
    add_recipe_options(st)
    st.add_argument("--json", action="store_true", help="status as JSON")
    st.set_defaults(func=status)


def status(args: argparse.Namespace) -> int:
    from circle_rotate.musubi.cache_plan import plan_cache
    from circle_rotate.musubi.cache_status import check_cache
    from circle_rotate.musubi.recipe_reader import CACHE_RECIPE, recipe_variables

    env = recipe_env(args, {}, recipes=[CACHE_RECIPE])
    config = args.dataset_config or Path(recipe_variables(["DATASET_CONFIG"], env=dict(env))["DATASET_CONFIG"])
    result = check_cache(plan_cache(config))
    if args.json:
        print_json(result.to_dict())
        return 0
    d = result.to_dict()
    print(f"{config}: {d['cached']} cached, {d['missing']} missing, {d['stale']} stale, {len(d['strays'])} stray; "
          f"{d['used_bytes'] / 1e9:.2f} GB used, about {d['to_write_bytes'] / 1e9:.2f} GB to write")
    for item in d["items"]:
        print(f"  {item['state']:<7} {item['video']}: {'; '.join(item['reasons'])}")
    for stray in d["strays"]:
        print(f"  stray   {stray} (no clip of the config; training would still use it)")
    return 0


def _require_models(env) -> None:
    """The VAE and the T5 the recipe will load, there as files (a dry run says so too)."""
    from circle_rotate.musubi.recipe_reader import recipe_variables

    for name, value in recipe_variables(["VAE", "T5"], env=dict(env)).items():
        if not Path(value).is_file():
            raise UserError(f"{name} {value}: not found", path=value,
                            fix=f"circle-rotate download models, or --{name.lower()} PATH")


def _require_long_enough(config: Path) -> None:
    """Clips shorter than ``target_frames`` are cached, then skipped by musubi's training without a word:
    refused here as ``train``'s preflight refuses them (a dataset where only some are short is a warning)."""
    from circle_rotate.dataset.check import check_config

    for problem in check_config(config, use_musubi=False).problems:
        if problem.key == "target_frames" and "shorter than" in problem.message:
            if problem.severity == "error":
                raise UserError(problem.message, path=config, fix=problem.fix)
            print(f"warning: {problem.one_line()}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from circle_rotate.musubi.cache import CacheRequest, describe_job, prepare_cache, run_cache
    from circle_rotate.musubi.recipe_reader import CACHE_RECIPE

    env = recipe_env(args, {"T5": args.t5, "DEVICE": args.device}, recipes=[CACHE_RECIPE])
    job = prepare_cache(CacheRequest(args.dataset_config, gpus=args.gpus or ("0",), env=env,
                                     refresh_stale=args.refresh_stale, nodes=max(1, args.nodes),
                                     node_rank=args.node_rank))
    _require_models(env)  # after the config's own checks: they name the dataset's problems first
    _require_long_enough(job.plan.config)
    lines = describe_job(job)
    if args.json:
        print_json({"config": str(job.plan.config), "clips": len(job.plan.items), "planned_bytes": job.plan.total_bytes,
                    "commands": [[c.shell() for c in chain] for _, chain in job.commands], "dry_run": args.dry_run})
    else:
        for line in lines:
            print(line)
    if not args.dry_run:
        from circle_rotate.kernel.musubi_env import require_cuda

        require_cuda("caching (the VAE and the T5)")
        run_cache(job)
    return 0
