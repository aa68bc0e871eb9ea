"""Check a musubi-tuner command line with musubi-tuner's own argument parser for that script.

Each parser is built the way the script's ``main()`` builds it (musubi-tuner 0.3.4):

- ``wan_train_network``: ``training.parser_common.setup_parser_common()`` +
  ``wan_train_network.wan_setup_parser()``;
- ``wan_cache_latents``: ``cache_latents.setup_parser_common()`` + ``wan_cache_latents.wan_setup_parser()``;
- ``wan_cache_text_encoder_outputs``: ``cache_text_encoder_outputs.setup_parser_common()`` +
  ``wan_cache_text_encoder_outputs.wan_setup_parser()``;
- ``wan_generate_video``: its ``parse_args()`` itself (the parser is local to it), which also
  runs the script's own checks on the parsed values.

An ``accelerate launch`` launcher is checked with accelerate's own ``launch_command_parser``.
``--task`` choices are read from ``WAN_CONFIGS`` when the parser is built, so a task added to
:mod:`circle_rotate.musubi.tasks` is registered first when a command names it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, Sequence

from circle_rotate.kernel.errors import UserError
from circle_rotate.kernel.musubi_env import import_error, import_musubi
from circle_rotate.kernel.wan_arch import WanDiTConfig
from circle_rotate.musubi.recipe_reader import MusubiCommand
from circle_rotate.musubi.tasks import register_named


class _ParseError(Exception):
    pass


@contextlib.contextmanager
def _raising_argparse() -> Iterator[io.StringIO]:
    """argparse errors raise instead of printing usage and exiting; stderr is captured."""
    original = argparse.ArgumentParser.error

    def error(self, message):  # noqa: ANN001 - argparse's signature
        raise _ParseError(message)

    argparse.ArgumentParser.error = error
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            yield captured
    finally:
        argparse.ArgumentParser.error = original


def _train_parser() -> argparse.ArgumentParser:
    common = import_musubi("training.parser_common")
    wan = import_musubi("wan_train_network")
    return wan.wan_setup_parser(common.setup_parser_common())


def _cache_latents_parser() -> argparse.ArgumentParser:
    common = import_musubi("cache_latents")
    wan = import_musubi("wan_cache_latents")
    return wan.wan_setup_parser(common.setup_parser_common())


def _cache_te_parser() -> argparse.ArgumentParser:
    common = import_musubi("cache_text_encoder_outputs")
    wan = import_musubi("wan_cache_text_encoder_outputs")
    return wan.wan_setup_parser(common.setup_parser_common())


_PARSERS: Dict[str, Callable[[], argparse.ArgumentParser]] = {
    "wan_train_network": _train_parser,
    "wan_cache_latents": _cache_latents_parser,
    "wan_cache_text_encoder_outputs": _cache_te_parser,
}


def parse_musubi_args(script: str, args: Sequence[str]) -> argparse.Namespace:
    """Parse ``args`` with musubi's own parser for ``script``.

    Args:
        script: ``wan_train_network``, ``wan_cache_latents``, ``wan_cache_text_encoder_outputs``
            or ``wan_generate_video``.
        args: the script's arguments (no script path).

    Returns:
        The namespace musubi would work with.

    Raises:
        UserError: musubi-tuner is missing, or its parser rejects an argument (unknown option,
            invalid value or choice, missing required option); the message is argparse's.
    """
    register_named(args)  # a --task musubi does not ship must be in WAN_CONFIGS before its parser runs
    if script == "wan_generate_video":
        module = import_musubi("wan_generate_video")
        saved = sys.argv
        sys.argv = [f"{script}.py", *args]
        try:
            with _raising_argparse():
                return module.parse_args()
        except _ParseError as exc:
            raise UserError(f"musubi's {script}.py rejects the command: {exc}", fix="fix or remove that argument") from None
        except (ValueError, AssertionError) as exc:  # the script's own checks after parsing
            raise UserError(f"musubi's {script}.py rejects the command: {exc}", fix="fix that argument") from None
        finally:
            sys.argv = saved
    if script not in _PARSERS:
        raise ValueError(f"no musubi parser for {script!r}")
    parser = _PARSERS[script]()
    try:
        with _raising_argparse():
            return parser.parse_args(list(args))
    except _ParseError as exc:
        raise UserError(f"musubi's {script}.py rejects the command: {exc}", fix="fix or remove that argument") from None


def check_launcher(command: MusubiCommand) -> None:
    """Check an ``accelerate launch ...`` launcher with accelerate's own parser (others pass).

    Raises:
        UserError: accelerate rejects its options.
    """
    launcher = list(command.launcher)
    if len(launcher) < 2 or Path(launcher[0]).name != "accelerate" or launcher[1] != "launch":
        return
    try:
        from accelerate.commands.launch import launch_command_parser
    except ImportError as exc:  # musubi-tuner installed with --no-deps leaves accelerate out: one line, not a traceback
        raise import_error(exc, "the `accelerate launch` that runs musubi's scripts") from None
    try:
        with _raising_argparse():
            ns = launch_command_parser().parse_args([*launcher[2:], command.script_path or command.script, *command.args])
    except _ParseError as exc:
        raise UserError(f"accelerate launch rejects the command: {exc}", path=command.source or None,
                        fix="fix the launcher options") from None
    if ns.training_script != (command.script_path or command.script):
        raise UserError(f"accelerate launch would run {ns.training_script}, not {command.script}", path=command.source or None,
                        fix="put the launcher options before the script")


def check_command(command: MusubiCommand) -> argparse.Namespace:
    """Check a whole command (launcher and script arguments); return musubi's namespace.

    Raises:
        UserError: either parser rejects it; the message names the recipe it came from.
    """
    check_launcher(command)
    try:
        return parse_musubi_args(command.script, command.args)
    except UserError as exc:
        if command.source:
            raise UserError(str(exc), path=command.source) from None
        raise


def task_config(task: str) -> WanDiTConfig:
    """The DiT shapes musubi builds for ``--task`` (read from its ``WAN_CONFIGS``)."""
    register_named([task])
    c = import_musubi("wan.configs").WAN_CONFIGS[task]
    return WanDiTConfig(dim=c.dim, ffn_dim=c.ffn_dim, num_heads=c.num_heads, num_layers=c.num_layers, in_dim=c.in_dim,
                        out_dim=c.out_dim, freq_dim=c.freq_dim, patch_size=tuple(c.patch_size),
                        model_version="2.2" if c.v2_2 else "2.1")
