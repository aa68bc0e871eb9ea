"""The shell recipes (``recipes/*.sh``), read as the musubi-tuner commands they run.

The recipes are the source of truth: this module never keeps a copy of their flags, so a
recipe edited by hand is what runs and what is checked. It runs a recipe with bash and ``CIRCLE_ROTATE_PRINT=1``, so bash itself
resolves every variable, default and memory knob exactly as it would for a real run, and
the recipe's ``musubi`` function prints each command (NUL-separated, see
``recipes/common.sh``) instead of running it.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from circle_rotate.kernel.errors import UserError

#: ``train --recipe NAME`` -> {expert: recipe file}.
TRAIN_RECIPES: Dict[str, Dict[str, str]] = {
    "reproduce": {"low": "reproduce_low.sh", "high": "reproduce_high.sh"},
    "recommended": {"low": "recommended_low.sh", "high": "recommended_high.sh"},
}
CACHE_RECIPE = "cache.sh"
EXPERTS = ("low", "high")
#: musubi-tuner entry scripts the recipes and commands may run.
MUSUBI_SCRIPTS = ("wan_cache_latents", "wan_cache_text_encoder_outputs", "wan_train_network", "wan_generate_video")
_MARKER = "CIRCLE_ROTATE_COMMAND"


@dataclass(frozen=True)
class MusubiCommand:
    """One musubi-tuner script invocation: ``env`` + ``launcher`` + the script + its ``args``.

    ``launcher`` is what runs the script (``accelerate launch --num_processes 1``, ``python``,
    or ``python -m circle_rotate.selfcheck.tiny_task``); ``script_path`` is the file it was given
    (empty for the tiny runner, which takes the script's module name).
    """

    script: str  # e.g. "wan_train_network"
    args: Tuple[str, ...]
    launcher: Tuple[str, ...] = ()
    script_path: str = ""
    env: Tuple[Tuple[str, str], ...] = ()
    source: str = ""  # the recipe it came from, for messages
    cwd: str = ""  # run in this directory ("" = the caller's)

    @property
    def argv(self) -> List[str]:
        """What to execute (the environment goes separately, see :attr:`env_dict`)."""
        script = [self.script_path] if self.script_path else [self.script]
        return [*self.launcher, *script, *self.args]

    @property
    def env_dict(self) -> Dict[str, str]:
        return dict(self.env)

    def shell(self) -> str:
        """The command as one copy-pasteable shell line."""
        prefix = [f"{k}={shlex.quote(v)}" for k, v in self.env]
        line = " ".join([*prefix, shlex.join(self.argv)])
        return f"(cd {shlex.quote(self.cwd)} && {line})" if self.cwd else line

    def with_args(self, args: Sequence[str]) -> "MusubiCommand":
        return replace(self, args=tuple(args))

    def with_env(self, **env: str) -> "MusubiCommand":
        merged = {**self.env_dict, **env}
        return replace(self, env=tuple(merged.items()))


def launcher_processes(launcher: Sequence[str]) -> int:
    """``--num_processes`` of an ``accelerate launch`` launcher (1 for any other launcher)."""
    items = list(launcher)
    if len(items) < 2 or Path(items[0]).name != "accelerate" or items[1] != "launch" or "--num_processes" not in items:
        return 1
    value = items[items.index("--num_processes") + 1] if items.index("--num_processes") + 1 < len(items) else ""
    return int(value) if value.isdigit() else 1


def recipe_path(name: str) -> Path:
    """The file of a shipped recipe (``reproduce_low.sh``), or ``name`` itself when it is a path.

    Raises:
        UserError: no such recipe.
    """
    candidate = Path(name)
    if candidate.suffix == ".sh" and candidate.exists() and (os.sep in name or "/" in name):
        return candidate
    path = Path(str(resources.files("circle_rotate.recipes").joinpath(name)))
    if not path.is_file():
        shipped = sorted(p.name for p in path.parent.glob("*.sh"))
        raise UserError(f"no recipe named '{name}'", fix=f"choose one of {', '.join(shipped)} or give a path to a .sh file")
    return path


def musubi_scripts_dir() -> Optional[Path]:
    """Where the installed musubi-tuner's entry scripts are (found without importing it)."""
    spec = importlib.util.find_spec("musubi_tuner")
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def default_env() -> Dict[str, str]:
    """Variables that make the recipes use this Python's musubi-tuner and accelerate."""
    env = {"PYTHON": sys.executable}
    accelerate = Path(sys.executable).with_name("accelerate")
    if accelerate.exists():
        env["ACCELERATE"] = str(accelerate)
    scripts = musubi_scripts_dir()
    if scripts is not None:
        env["MUSUBI_SCRIPTS"] = str(scripts)
    return env


def _run_bash(args: Sequence[str], env: Optional[Mapping[str, str]]) -> subprocess.CompletedProcess:
    """bash with the recipes' print mode on and ``env`` over this process's environment."""
    bash = shutil.which("bash")
    if bash is None:
        raise UserError("bash is not installed; the recipes are bash scripts", fix="install bash")
    full_env = {**os.environ, **default_env(), **(env or {}), "CIRCLE_ROTATE_PRINT": "1"}
    return subprocess.run([bash, *args], env=full_env, capture_output=True, text=True)


def _split_command(tokens: Sequence[str], source: str) -> MusubiCommand:
    tokens = list(tokens)
    env: List[Tuple[str, str]] = []
    if tokens and Path(tokens[0]).name == "env":
        tokens = tokens[1:]
        while tokens and "=" in tokens[0] and not tokens[0].startswith("-"):
            key, value = tokens.pop(0).split("=", 1)
            env.append((key, value))
    for i, tok in enumerate(tokens):
        stem = Path(tok).stem
        if tok.endswith(".py") and stem in MUSUBI_SCRIPTS:
            return MusubiCommand(script=stem, args=tuple(tokens[i + 1:]), launcher=tuple(tokens[:i]), script_path=tok,
                                 env=tuple(env), source=source)
    raise UserError(f"a command in the recipe runs none of musubi's scripts ({shlex.join(tokens)[:120]})", path=source,
                    fix="recipes may only run " + ", ".join(f"{s}.py" for s in MUSUBI_SCRIPTS) + " through `musubi`")


def parse_printed(output: str, *, source: str = "") -> Tuple[MusubiCommand, ...]:
    """Commands from a recipe's ``CIRCLE_ROTATE_PRINT=1`` output."""
    tokens = output.split("\0")
    commands = []
    i = 0
    while i < len(tokens):
        if tokens[i].endswith(_MARKER):  # anything the recipe echoed before the marker is ignored
            count = int(tokens[i + 1])
            commands.append(_split_command(tokens[i + 2:i + 2 + count], source))
            i += 2 + count
        else:
            i += 1
    return tuple(commands)


def read_recipe(name: str, *, env: Optional[Mapping[str, str]] = None) -> Tuple[MusubiCommand, ...]:
    """Run a recipe in print mode and return the commands it would run.

    Args:
        name: a shipped recipe's file name (``reproduce_low.sh``) or a path to one.
        env: recipe variables to set (``DIT_LOW``, ``GPU``, ``GRADIENT_CHECKPOINTING`` ...),
            on top of the process environment and :func:`default_env`.

    Raises:
        UserError: bash is missing, the recipe fails, or it prints no command.
    """
    path = recipe_path(name)
    proc = _run_bash([str(path)], env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise UserError(f"the recipe failed while resolving its variables: {last}", path=path,
                        fix="check the variables you set for it")
    commands = parse_printed(proc.stdout, source=str(path))
    if not commands:
        raise UserError("the recipe printed no musubi command", path=path, fix="run each command through `musubi`")
    return commands


def recipe_variables(names: Sequence[str], *, env: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Values of ``common.sh`` variables (``DIT_LOW``, ``VAE`` ...) as the recipes would resolve them."""
    common = recipe_path("common.sh")
    script = 'source "$1"; shift; for v in "$@"; do printf "%s\\0" "${!v-}"; done'
    proc = _run_bash(["-c", script, "bash", str(common), *names], env)
    if proc.returncode != 0:
        raise UserError(f"common.sh failed: {proc.stderr.strip()[-200:]}", path=common, fix="check the variables you set")
    return dict(zip(names, proc.stdout.split("\0")))


# --- flag editing on argv lists (values are the tokens up to the next --option) ---------------

def split_options(args: Sequence[str]) -> List[Tuple[str, List[str]]]:
    """``["--a", "1", "--b"]`` -> ``[("--a", ["1"]), ("--b", [])]`` (order kept)."""
    out: List[Tuple[str, List[str]]] = []
    for tok in args:
        if tok.startswith("--"):
            out.append((tok, []))
        elif out:
            out[-1][1].append(tok)
        else:
            raise ValueError(f"argument {tok!r} before any option")
    return out


def option_values(args: Sequence[str]) -> Dict[str, List[str]]:
    """Last value list of each option (argparse keeps the last occurrence)."""
    return {flag: values for flag, values in split_options(args)}


def edit_options(args: Sequence[str], changes: Mapping[str, Optional[Sequence[str]]]) -> List[str]:
    """Set (``[values]``; ``[]`` for a switch), or drop (``None``), options; others keep their order.

    A set option stays where it was, or is appended when it was absent.
    """
    out: List[str] = []
    done = set()
    for flag, values in split_options(args):
        if flag in changes:
            if changes[flag] is not None and flag not in done:
                out += [flag, *changes[flag]]
            done.add(flag)
            continue
        out += [flag, *values]
    for flag, values in changes.items():
        if flag not in done and values is not None:
            out += [flag, *values]
    return out


@dataclass(frozen=True)
class OptionDiff:
    """One option that differs between two commands."""

    option: str
    before: Optional[Tuple[str, ...]]  # None: absent
    after: Optional[Tuple[str, ...]]
    why: str = ""


def diff_options(before: Sequence[str], after: Sequence[str], *, why: Optional[Mapping[str, str]] = None) -> List[OptionDiff]:
    """Options whose values differ (absent ones included), in ``before``'s order then ``after``'s."""
    a, b = option_values(before), option_values(after)
    why = why or {}
    order = list(a) + [k for k in b if k not in a]
    return [OptionDiff(k, tuple(a[k]) if k in a else None, tuple(b[k]) if k in b else None, why.get(k, ""))
            for k in order if a.get(k) != b.get(k)]


def train_command(name: str, expert: str, *, env: Optional[Mapping[str, str]] = None) -> MusubiCommand:
    """The one ``wan_train_network`` command of training recipe ``name`` for ``expert``."""
    if name not in TRAIN_RECIPES:
        raise UserError(f"unknown recipe '{name}'", fix=f"choose one of {', '.join(TRAIN_RECIPES)}")
    if expert not in EXPERTS:
        raise UserError(f"unknown expert '{expert}'", fix="choose low, high or both")
    commands = read_recipe(TRAIN_RECIPES[name][expert], env=env)
    train = [c for c in commands if c.script == "wan_train_network"]
    if len(train) != 1:
        raise UserError(f"expected one wan_train_network command, found {len(train)}", path=commands[0].source,
                        fix="a training recipe runs exactly one training command")
    return train[0]
