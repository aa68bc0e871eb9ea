"""CLI start-up: building the parser (what ``--help`` and every command pay first) imports no heavy library.

Each command imports its heavy libraries inside ``run``; what parsers need at start-up (dtype
names, QC modes, metric names) comes from light modules. These tests run a fresh interpreter,
because this test process has long imported torch and cv2 through other tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import circle_rotate.cli as cli_pkg

HEAVY = ("torch", "cv2", "av", "scenedetect", "scipy", "matplotlib", "musubi_tuner", "numpy", "tqdm", "tomlkit",
         "huggingface_hub", "PIL")
_PROBE = """
import json, sys
from circle_rotate.cli.main import build_parser
parser = build_parser()
{extra}
print(json.dumps(sorted(m.split(".")[0] for m in sys.modules)))
"""


def _loaded_after(extra: str = "") -> set:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(extra=extra)], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _command_names() -> list:
    """Command names from the files in circle_rotate/cli (module check_config -> command check-config)."""
    files = sorted(Path(cli_pkg.__file__).parent.glob("*.py"))
    return [f.stem.replace("_", "-") for f in files if not f.stem.startswith("_") and f.stem != "main"]


def test_build_parser_imports_no_heavy_library():
    loaded = _loaded_after()
    assert "circle_rotate" in loaded
    assert sorted(loaded & set(HEAVY)) == []


@pytest.mark.parametrize("argv", [["merge", "--help"], ["eval", "--help"], ["prepare", "--help"]])
def test_command_help_imports_no_heavy_library(argv):
    extra = f"""
try:
    parser.parse_args({argv!r})
except SystemExit:
    pass
"""
    assert sorted(_loaded_after(extra) & set(HEAVY)) == []


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "circle_rotate.cli.main", "--help"], capture_output=True, text=True,
                         check=True).stdout
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("    ") and line.split()}
    names = _command_names()
    assert len(names) >= 15
    assert sorted(set(names) - listed) == []


def test_metric_entries_resolve():
    """The registry names each metric's function as text (imported on use); every entry must resolve."""
    from circle_rotate.eval.registry import METRICS

    for metric in METRICS:
        assert callable(metric.compute), metric.name
    assert METRICS[0].compute.__name__ == "compute_motion_magnitude"


def test_lora_options_parse_without_torch():
    from circle_rotate.kernel.errors import UserError
    from circle_rotate.tools.option_values import parse_alpha_if_missing, parse_lora_spec

    assert parse_lora_spec("a/b.safetensors:0.5") == (Path("a/b.safetensors"), 0.5)
    assert parse_lora_spec("C:/x.safetensors") == (Path("C:/x.safetensors"), 1.0)
    assert parse_alpha_if_missing("rank") == "rank" and parse_alpha_if_missing("2") == 2.0
    with pytest.raises(UserError):
        parse_alpha_if_missing("-1")
