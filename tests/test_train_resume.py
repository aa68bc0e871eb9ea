"""``train --resume``: only complete accelerate states, finished runs, one expert resumed and one fresh."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from circle_rotate.kernel.errors import UserError
from circle_rotate.musubi.recipe_reader import edit_options, option_values
from circle_rotate.musubi.train import TrainRequest, plan_training, train
from circle_rotate.musubi.train_state import resume_status, state_faults
from test_preflight import clips, tiny_task, ws  # noqa: F401  (fixtures)

# A LoRA-sized stand-in trained one step and saved by accelerate's own save_state, as musubi saves
# its states; then the same state cut short, and whether accelerate's load_state takes each.
_SAVE = r"""
import json, shutil, sys, torch
from pathlib import Path
from accelerate import Accelerator
root = Path(sys.argv[1])
acc = Accelerator(cpu=True)
net = torch.nn.Linear(4, 4)
opt = torch.optim.AdamW(net.parameters())
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
net, opt, sched = acc.prepare(net, opt, sched)
net(torch.ones(1, 4)).sum().backward()
opt.step()
acc.save_state(str(root / "whole"))
shutil.copytree(root / "whole", root / "cut")
data = (root / "cut" / "optimizer.bin").read_bytes()
(root / "cut" / "optimizer.bin").write_bytes(data[: len(data) // 2])
shutil.copytree(root / "whole", root / "no_weights")
(root / "no_weights" / "model.safetensors").unlink()
loads = {}
for name in ("whole", "cut", "no_weights"):
    try:
        acc.load_state(str(root / name))
        loads[name] = True
    except Exception:
        loads[name] = False
print(json.dumps(loads))
"""


@pytest.fixture(scope="session")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("accelerate_state")
    done = subprocess.run([sys.executable, "-c", _SAVE, str(root)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return root, json.loads(done.stdout.strip().splitlines()[-1])


def _state(saved, folder: Path, kind: str = "whole") -> Path:
    shutil.copytree(saved[0] / kind, folder)
    return folder


def _touch(path: Path, when: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(b"x")
    os.utime(path, (when, when))
    return path


def test_complete_means_what_accelerate_can_load(saved):
    root, loads = saved
    assert loads == {"whole": True, "cut": False, "no_weights": False}
    assert state_faults(root / "whole") == ()
    assert state_faults(root / "cut") == ("optimizer.bin cut short",)
    assert state_faults(root / "no_weights") == ("no LoRA weights (model.safetensors)",)
    empty = root / "empty"
    empty.mkdir()
    assert "no optimizer.bin" in state_faults(empty)


def test_resume_takes_the_newest_complete_state_and_names_the_ones_passed_over(saved, tmp_path):
    out = tmp_path / "low"
    env = (("OUTPUT_DIR_LOW", str(out)),)
    _state(saved, out / "circle_rotate_l-000012-state")
    _state(saved, out / "circle_rotate_l-000037-state")
    _state(saved, out / "circle_rotate_l-000038-state", "cut")
    (out / "circle_rotate_l-000039-state").mkdir()  # killed as the save began
    plan = plan_training(TrainRequest(("low",), env=env, resume=True))
    (run,) = plan.runs
    values = option_values(run.command.args)
    assert values["--resume"] == [str(out / "circle_rotate_l-000037-state")] and run.epoch_offset == 37
    assert values["--max_train_epochs"] == ["63"] and "--save_state" in values
    assert values["--output_dir"] == [str(out / "resume-from-epoch-000037")]
    notes = "\n".join(plan.notes)
    assert "circle_rotate_l-000038-state (optimizer.bin cut short)" in notes
    assert "circle_rotate_l-000039-state (no LoRA weights" in notes
    assert f"the final LoRA goes to {out / 'circle_rotate_l.safetensors'}" in notes
    # a resumed run's own states count from its offset
    _state(saved, out / "resume-from-epoch-000037" / "circle_rotate_l-000010-state")
    (again,) = plan_training(TrainRequest(("low",), env=env, resume=True)).runs
    assert again.epoch_offset == 47 and option_values(again.command.args)["--max_train_epochs"] == ["53"]


def test_no_complete_state_is_refused_naming_the_incomplete_ones(saved, tmp_path):
    out = tmp_path / "low"
    (out / "circle_rotate_l-000005-state").mkdir(parents=True)
    _state(saved, out / "circle_rotate_l-000006-state", "cut")
    with pytest.raises(UserError, match=r"no complete saved state.*000006-state \(optimizer.bin cut short\)"):
        plan_training(TrainRequest(("low",), env=(("OUTPUT_DIR_LOW", str(out)),), resume=True))
    with pytest.raises(UserError, match="--save-state"):
        plan_training(TrainRequest(("low",), env=(("OUTPUT_DIR_LOW", str(tmp_path / "empty")),), resume=True))


def test_resume_after_a_finished_run_says_it_finished(saved, tmp_path):
    out = tmp_path / "low"
    env = (("OUTPUT_DIR_LOW", str(out)),)
    for f in _state(saved, out / "circle_rotate_l-000099-state").iterdir():
        _touch(f, 1000)
    _touch(out / "circle_rotate_l-000099.safetensors", 1000)
    _touch(out / "circle_rotate_l.safetensors", 2000)  # musubi's last write (epoch 100 has no numbered state)
    with pytest.raises(UserError, match=r"circle_rotate_l.safetensors: training already finished"):
        plan_training(TrainRequest(("low",), env=env, resume=True))
    # the final file of an earlier run, then a --force run interrupted: its newer state is resumed
    _touch(out / "circle_rotate_l.safetensors", 500)
    (run,) = plan_training(TrainRequest(("low",), env=env, resume=True)).runs
    assert run.epoch_offset == 99
    assert resume_status(out, "circle_rotate_l").finished is None


def test_stopped_between_the_last_state_and_the_final_lora_says_where_the_weights_are(saved, tmp_path):
    """musubi saves <name>-state after the last epoch, then the final LoRA: killed between the two,
    every epoch trained, a resume from epoch 99 would train epoch 100 a second time."""
    out = tmp_path / "low"
    _state(saved, out / "circle_rotate_l-000099-state")
    _state(saved, out / "circle_rotate_l-state")
    with pytest.raises(UserError, match=r"training ran every epoch but was stopped before it wrote its final LoRA; "
                                        r"the trained weights are in .*circle_rotate_l-state/model.safetensors"):
        plan_training(TrainRequest(("low",), env=(("OUTPUT_DIR_LOW", str(out)),), resume=True))
    _touch(out / "circle_rotate_l.safetensors", 4e9)  # written after all: finished
    with pytest.raises(UserError, match="training already finished"):
        plan_training(TrainRequest(("low",), env=(("OUTPUT_DIR_LOW", str(out)),), resume=True))


def test_both_resumes_the_interrupted_expert_and_starts_the_one_that_never_ran(saved, tmp_path):
    low, high = tmp_path / "low", tmp_path / "high"
    _state(saved, high / "circle_rotate_h-000020-state")
    env = (("OUTPUT_DIR_LOW", str(low)), ("OUTPUT_DIR_HIGH", str(high)))
    plan = plan_training(TrainRequest(("low", "high"), env=env, resume=True))
    fresh, resumed = plan.runs
    assert fresh.expert == "low" and fresh.resumed_from is None and "--save_state" in option_values(fresh.command.args)
    assert "--resume" not in option_values(fresh.command.args) and fresh.output_dir == low
    assert resumed.resumed_from == high / "circle_rotate_h-000020-state"
    assert any(n.startswith(f"low: nothing saved in {low} yet") and "from epoch 1" in n for n in plan.notes)
    # one expert finished: only the other runs
    _touch(low / "circle_rotate_l.safetensors", 3000)
    plan = plan_training(TrainRequest(("low", "high"), env=env, resume=True))
    assert [r.expert for r in plan.runs] == ["high"] and plan.chains == (("train", (0,)),)
    assert any(n.startswith("low: training already finished") for n in plan.notes)


def test_a_resumed_runs_final_lora_lands_where_a_fresh_one_would(saved, ws):
    out = Path(ws["OUTPUT_DIR_LOW"])
    _state(saved, out / "circle_rotate_l-000004-state")
    lines = []

    def finishing(command):  # stands in for musubi: writes the final LoRA into the run's --output_dir
        target = Path(option_values(command.args)["--output_dir"][0]) / "circle_rotate_l.safetensors"
        code = f"import pathlib; pathlib.Path({str(target)!r}).write_bytes(b'lora')"
        return replace(tiny_task(command), launcher=(sys.executable, "-c", code))

    train(TrainRequest(("low",), env=tuple(ws.items()), resume=True), dry_run=False, echo=lines.append,
          transform=finishing)
    assert (out / "circle_rotate_l.safetensors").read_bytes() == b"lora"
    assert not (out / "resume-from-epoch-000004" / "circle_rotate_l.safetensors").exists()
    assert f"low: final LoRA {out / 'circle_rotate_l.safetensors'}" in lines
    record = json.loads((out / "resume-from-epoch-000004" / "run.json").read_text())
    assert record["final_lora"] == str(out / "circle_rotate_l.safetensors") and record["status"] == "finished"
    with pytest.raises(UserError, match="training already finished"):
        plan_training(TrainRequest(("low",), env=tuple(ws.items()), resume=True))


def test_resume_if_saved_starts_what_never_ran_and_runs_nothing_once_all_finished(saved, tmp_path):
    low = tmp_path / "low"
    env = (("OUTPUT_DIR_LOW", str(low)),)
    with pytest.raises(UserError, match="no saved training state"):
        plan_training(TrainRequest(("low",), env=env, resume=True))
    plan = plan_training(TrainRequest(("low",), env=env, resume=True, resume_optional=True))
    assert plan.runs[0].resumed_from is None and "--save_state" in option_values(plan.runs[0].command.args)
    _state(saved, low / "circle_rotate_l-000003-state")
    (run,) = plan_training(TrainRequest(("low",), env=env, resume=True, resume_optional=True)).runs
    assert run.epoch_offset == 3
    _touch(low / "circle_rotate_l.safetensors", 4e9)
    done = plan_training(TrainRequest(("low",), env=env, resume=True, resume_optional=True))
    assert done.runs == () and done.chains == () and "low: training already finished" in done.notes[0]
    result = train(TrainRequest(("low",), env=env, resume=True, resume_optional=True), dry_run=False,
                   echo=lambda line: None)
    assert result.chains == () and result.records == ()


def _launcher(code: str):
    """A transform whose command runs ``code`` instead of musubi, with OUT = the --output_dir it is
    given when it runs (a resume changes it after the transform)."""
    def transform(command):
        head = "import sys\nOUT = sys.argv[sys.argv.index('--output_dir') + 1]\n"
        return replace(tiny_task(command), launcher=(sys.executable, "-c", head + code))
    return transform


def _killed_at(saved, epoch: int):
    """Stands in for musubi stopped after saving epoch ``epoch``'s checkpoint and state."""
    return _launcher(f"import shutil, sys, pathlib\nout = pathlib.Path(OUT)\nout.mkdir(parents=True, exist_ok=True)\n"
                     f"(out / 'circle_rotate_l-{epoch:06d}.safetensors').write_bytes(b'lora')\n"
                     f"shutil.copytree({str(saved[0] / 'whole')!r}, out / 'circle_rotate_l-{epoch:06d}-state')\n"
                     "sys.exit(1)")


def test_a_fresh_run_moves_the_earlier_runs_files_aside_so_resume_never_picks_them(saved, ws):
    """An earlier interrupted run saved states to epoch 226; a --force run killed at epoch 12 is what
    --resume continues, not the earlier run's epoch 226 (states were picked by epoch number)."""
    out = Path(ws["OUTPUT_DIR_LOW"])
    _state(saved, out / "circle_rotate_l-000226-state")
    _touch(out / "circle_rotate_l-000226.safetensors", 1000)
    _touch(out / "circle_rotate_l.safetensors", 500)  # an even earlier finished run
    (out / "run.json").write_text('{"status": "interrupted"}')
    (out / "notes.txt").write_text("mine")
    lines = []
    with pytest.raises(UserError, match="training failed"):
        train(TrainRequest(("low",), env=tuple(ws.items()), save_state=True, force=True), dry_run=False,
              echo=lines.append, transform=_killed_at(saved, 12))
    (aside,) = out.glob("earlier-run-*")
    assert sorted(p.name for p in aside.iterdir()) == ["circle_rotate_l-000226-state", "circle_rotate_l-000226.safetensors",
                                                       "circle_rotate_l.safetensors", "run.json"]
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files move
    assert any(f"moved the earlier run's 4 file(s)/folder(s) to {aside}" in line for line in lines)
    (run,) = plan_training(TrainRequest(("low",), env=tuple(ws.items()), resume=True)).runs
    assert run.epoch_offset == 12 and run.resumed_from == out / "circle_rotate_l-000012-state"


@pytest.mark.parametrize("saves", ["state", "checkpoint only", "nothing"])
def test_run_json_says_interrupted_and_the_message_says_what_was_kept(saved, ws, monkeypatch, saves):
    """Ctrl-C/SIGTERM: the running expert's run.json says interrupted, the queued one's not started
    (it said waiting, not running, while queued), and the interrupt carries what was kept: --resume only
    where a complete state is there to resume from (interrupted in epoch 1, nothing is)."""
    import circle_rotate.musubi.train as train_module

    seen = {}
    low_dir = Path(ws["OUTPUT_DIR_LOW"])

    def stopped(chains, on_start=None, **kw):
        ((label, commands),) = chains.items()
        if on_start is not None:
            on_start(label, 0)
        seen["high"] = json.loads((Path(ws["OUTPUT_DIR_HIGH"]) / "run.json").read_text())["status"]
        if saves != "nothing":
            (low_dir / "circle_rotate_l-000001.safetensors").write_bytes(b"lora")
        if saves == "state":
            _state(saved, low_dir / "circle_rotate_l-000001-state")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "run_chains", stopped)
    with pytest.raises(KeyboardInterrupt) as info:
        train(TrainRequest(("low", "high"), env=tuple(ws.items()), save_state=True), dry_run=False,
              echo=lambda line: None, transform=tiny_task)
    low, high = (json.loads((Path(ws[f"OUTPUT_DIR_{e}"]) / "run.json").read_text()) for e in ("LOW", "HIGH"))
    assert seen["high"] == "waiting" and low["status"] == "interrupted" and high["status"] == "not started"
    kept = info.value.kept
    if saves == "state":
        assert f"kept in {low_dir};" in kept and "--resume continues" in kept
    elif saves == "checkpoint only":  # failed before: it promised a --resume that is refused
        assert f"kept in {low_dir}, but no saved state is complete yet" in kept and "--resume continues" not in kept
    else:
        assert kept.startswith("no epoch was saved yet")


def test_a_finished_resume_updates_the_first_runs_record_beside_the_final_lora(saved, ws):
    out = Path(ws["OUTPUT_DIR_LOW"])
    with pytest.raises(UserError, match="training failed"):
        train(TrainRequest(("low",), env=tuple(ws.items()), save_state=True), dry_run=False,
              echo=lambda line: None, transform=_killed_at(saved, 4))
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    finishing = _launcher("import pathlib\n(pathlib.Path(OUT) / 'circle_rotate_l.safetensors').write_bytes(b'lora')")
    result = train(TrainRequest(("low",), env=tuple(ws.items()), resume=True), dry_run=False,
                   echo=lambda line: None, transform=finishing)
    first = json.loads((out / "run.json").read_text())
    assert first["status"] == "finished" and first["final_lora"] == str(out / "circle_rotate_l.safetensors")
    assert first["resumes"] == [{"folder": str(out / "resume-from-epoch-000004"), "status": "finished",
                                 "resumed_from": str(out / "circle_rotate_l-000004-state"), "epoch_offset": 4}]
    assert "circle_rotate_l.safetensors" in first["outputs"] and out / "run.json" in result.records


def test_a_resume_at_another_learning_rate_is_refused_naming_both(saved, ws):
    """accelerate's load_state restores the optimizer's rate: the resume's own would be printed, never used."""
    with pytest.raises(UserError, match="training failed"):
        train(TrainRequest(("low",), env=tuple(ws.items()), save_state=True), dry_run=False,
              echo=lambda line: None, transform=_killed_at(saved, 4))

    def other_rate(command):
        return command.with_args(edit_options(command.args, {"--learning_rate": ["1e-4"]}))

    with pytest.raises(UserError, match=r"learning rate 0.0002, this resume asks for 0.0001.*--force"):
        plan_training(TrainRequest(("low",), env=tuple(ws.items()), resume=True), transform=other_rate)
    (run,) = plan_training(TrainRequest(("low",), env=tuple(ws.items()), resume=True)).runs  # the same rate resumes
    assert run.epoch_offset == 4


def test_resume_if_saved_starts_over_when_the_only_save_was_cut_short(saved, ws):
    """A requeued job preempted during epoch 1's save: --resume-if-saved trains from epoch 1 (the
    partial files moved aside) rather than failing on every requeue; --resume still refuses."""
    out = Path(ws["OUTPUT_DIR_LOW"])
    _state(saved, out / "circle_rotate_l-000001-state", "cut")
    env = tuple(ws.items())
    with pytest.raises(UserError, match="no complete saved state"):
        plan_training(TrainRequest(("low",), env=env, resume=True))
    plan = plan_training(TrainRequest(("low",), env=env, resume=True, resume_optional=True))
    assert plan.runs[0].resumed_from is None and any("trains from epoch 1" in n for n in plan.notes)
    finishing = _launcher("import pathlib\n(pathlib.Path(OUT) / 'circle_rotate_l.safetensors').write_bytes(b'lora')")
    train(TrainRequest(("low",), env=env, resume=True, resume_optional=True), dry_run=False,
          echo=lambda line: None, transform=finishing)
    (aside,) = out.glob("earlier-run-*")
    assert (aside / "circle_rotate_l-000001-state").is_dir() and not (out / "circle_rotate_l-000001-state").exists()


def test_a_resumed_final_loras_metadata_counts_the_epochs_before_the_resume(saved, ws, tmp_path):
    """musubi restarts its epoch count on resume: its final LoRA said epoch 56 of 56 for a 100-epoch run."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    out = Path(ws["OUTPUT_DIR_LOW"])
    _state(saved, out / "circle_rotate_l-000044-state")
    made = tmp_path / "made.safetensors"
    weights = {"lora_unet_x.lora_down.weight": torch.arange(12.0).reshape(3, 4)}
    save_file(weights, str(made), {"ss_epoch": "56", "ss_num_epochs": "56", "ss_steps": "112",
                                   "ss_max_train_steps": "112", "ss_network_dim": "32"})
    finishing = _launcher(f"import shutil\nshutil.copy({str(made)!r}, OUT + '/circle_rotate_l.safetensors')")
    train(TrainRequest(("low",), env=tuple(ws.items()), resume=True), dry_run=False, echo=lambda line: None,
          transform=finishing)
    with safe_open(str(out / "circle_rotate_l.safetensors"), "pt") as fh:
        meta = fh.metadata()
        assert torch.equal(fh.get_tensor("lora_unet_x.lora_down.weight"), weights["lora_unet_x.lora_down.weight"])
    assert (meta["ss_epoch"], meta["ss_num_epochs"], meta["ss_steps"], meta["ss_max_train_steps"]) == \
        ("100", "100", "200", "200")
    assert meta["ss_network_dim"] == "32" and meta["ss_resumed_at_epoch"] == "44"


def test_moving_an_earlier_run_aside_takes_musubis_own_names_only(tmp_path):
    """Failed before: every <name>-*.safetensors moved, so `train high --force` beside a low expert named
    orbit-low took its finished LoRA and states, and a user's orbit-best.safetensors went too."""
    from circle_rotate.musubi.train_state import move_aside

    ours = ["orbit.safetensors", "orbit-000010.safetensors", "orbit-000010-state", "orbit-step00000500.safetensors",
            "orbit-step00000500-state", "orbit-state", "resume-from-epoch-000010", "run.json"]
    others = ["orbit-low.safetensors", "orbit-low-000010.safetensors", "orbit-low-000010-state", "orbit-low-state",
              "orbit-best.safetensors", "orbit-comfy.safetensors", "sample"]
    for n in ours + others:
        (tmp_path / n).mkdir() if n.endswith(("-state", "sample")) or n.startswith("resume-") else (tmp_path / n).write_text(n)
    aside, count = move_aside(tmp_path, "orbit")
    assert count == len(ours) and sorted(p.name for p in aside.iterdir()) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir() if p != aside) == sorted(others)

