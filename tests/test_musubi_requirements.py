"""musubi-tuner installed without its requirements (``pip install --no-deps``, as the install hint
offers): every command that imports it stops on one line naming the missing module and how to
install musubi's requirements, and ``doctor`` says so instead of reporting the version as fine.

Each case runs the real CLI in a fresh interpreter whose ``sys.modules`` holds ``None`` for the
module: ``import voluptuous`` then raises ModuleNotFoundError there, exactly as when it is absent,
while this test process keeps its own imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from circle_rotate.kernel.errors import UserError

# what the fix line must point at: musubi's requirements, from the circle-rotate clone
REQUIREMENTS = "pip install -r .ci/musubi-requirements.txt"


def cli_without(missing: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    code = (f"import sys; sys.modules[{missing!r}] = None\n"
            "from circle_rotate.cli.main import main\n"
            f"sys.exit(main({list(args)!r}))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)


def valid_config(root: Path) -> Path:
    from circle_rotate.selfcheck.synthetic.turntable import TurntableSpec, write_turntable

    videos = root / "videos"
    videos.mkdir()
    write_turntable(TurntableSpec(name="orbit", seed=0, width=32, height=32, frames=5, fps=16.0), videos, preset="ultrafast")
    (videos / "orbit.txt").write_text("a box, the camera orbits right", encoding="utf-8")
    config = root / "dataset.toml"
    config.write_text(f'[general]\nresolution = [32, 32]\ncaption_extension = ".txt"\nbatch_size = 1\n\n[[datasets]]\n'
                      f'video_directory = "{videos.as_posix()}"\ncache_directory = "{(root / "cache").as_posix()}"\n'
                      f'target_frames = [5]\nframe_extraction = "head"\n', encoding="utf-8")
    return config


def test_check_config_without_voluptuous_is_one_line_naming_it(musubi, tmp_path):
    config = valid_config(tmp_path)
    assert cli_without("__no_such_module__", "check-config", str(config), cwd=tmp_path).returncode == 0  # the config is fine
    proc = cli_without("voluptuous", "check-config", str(config), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("circle-rotate check-config: error: musubi-tuner's requirement 'voluptuous' is not installed")
    assert REQUIREMENTS in line


def test_doctor_tries_the_real_import_and_names_the_missing_module(musubi, tmp_path):
    proc = cli_without("easydict", "doctor", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["musubi_tuner"]  # the package itself is there
    assert "'easydict' is not installed" in report["musubi_import"] and REQUIREMENTS in report["musubi_import"]
    train = report["jobs"][0]
    assert not train["ok"] and "'easydict' is not installed" in train["reason"]
    assert "still work here" not in train["reason"]
    text = cli_without("easydict", "doctor", cwd=tmp_path).stdout
    row = next(line for line in text.splitlines() if line.startswith("musubi-tuner"))
    assert "does not import" in row and "easydict" in row


def test_doctor_reports_a_working_musubi_as_importable(musubi):
    from circle_rotate.kernel.musubi_env import musubi_import_problem

    assert musubi_import_problem() is None


def test_import_musubi_turns_a_missing_requirement_into_one_line(musubi, monkeypatch):
    from circle_rotate.kernel.musubi_env import import_musubi

    # the module is imported again (it fails, and is left out of sys.modules); the session's copy comes back after
    monkeypatch.setitem(sys.modules, "voluptuous", None)
    monkeypatch.delitem(sys.modules, "musubi_tuner.dataset.config_utils", raising=False)
    with pytest.raises(UserError) as err:
        import_musubi("dataset.config_utils")
    assert str(err.value).startswith("musubi-tuner's requirement 'voluptuous' is not installed "
                                     "(musubi_tuner.dataset.config_utils imports it); fix: in the circle-rotate clone: "
                                     + REQUIREMENTS)


def test_accelerate_launch_check_without_accelerate_is_one_line(musubi, monkeypatch):
    from circle_rotate.musubi.args import check_launcher
    from circle_rotate.musubi.recipe_reader import MusubiCommand

    command = MusubiCommand(launcher=("accelerate", "launch", "--num_processes", "1"), script="wan_train_network",
                            args=("--task", "i2v-A14B"))
    monkeypatch.setitem(sys.modules, "accelerate.commands.launch", None)
    with pytest.raises(UserError, match="musubi-tuner's requirement 'accelerate' is not installed"):
        check_launcher(command)


def test_the_install_hints_name_no_pypi_package():
    """circle-rotate is not on PyPI: its train extra is installed from the clone, and the --no-deps
    route installs musubi's requirements too."""
    from circle_rotate.kernel.musubi_env import INSTALL_HINT

    assert "'circle-rotate[train]'" not in INSTALL_HINT
    assert 'pip install -e ".[train]"' in INSTALL_HINT and "--no-deps" in INSTALL_HINT and REQUIREMENTS in INSTALL_HINT
    root = Path(__file__).resolve().parents[1]
    for rel in ("plugins/kernel/musubi_env.py", "plugins/musubi/doctor.py", "plugins/cli/doctor.py",
                "plugins/musubi/preflight.py", "recipes/slurm_train.sbatch"):
        assert "circle-rotate[train]" not in (root / rel).read_text(encoding="utf-8"), rel
