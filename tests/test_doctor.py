"""``circle-rotate doctor``'s job lines say what really works here."""

from __future__ import annotations

import pytest

from circle_rotate.cli.main import main


@pytest.fixture
def cpu_without_musubi(monkeypatch):
    """A CPU machine where musubi-tuner is not installed (as doctor sees it)."""
    import torch

    from circle_rotate.musubi import doctor

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(doctor, "musubi_version", lambda: None)
    monkeypatch.setattr(doctor, "musubi_import_problem", lambda: None, raising=False)


def test_without_musubi_doctor_does_not_promise_the_dry_run(cpu_without_musubi, capsys):
    """train --dry-run, preflight and smoke all stop with "musubi-tuner is not installed" (exit 2):
    the training line says that and how to install it, not that they work here."""
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    (train,) = [line for line in out.splitlines() if "reproduce / retrain" in line]
    assert train.lstrip().startswith("[--]")
    assert "still work here" not in train
    assert "musubi-tuner is not installed" in train and "`smoke`" in train
    assert 'pip install -e ".[train]"' in train and "'circle-rotate[train]'" not in out
    row = next(line for line in out.splitlines() if line.startswith("musubi-tuner"))
    assert "not installed" in row and 'pip install -e ".[train]"' in row


def test_without_musubi_the_dry_run_really_stops(cpu_without_musubi, monkeypatch):
    """What the line above says, checked against preflight itself."""
    from circle_rotate.musubi import preflight

    monkeypatch.setattr(preflight, "musubi_available", lambda: False)
    report = preflight.preflight([], for_run=False)
    assert [p.message for p in report.errors] == ["musubi-tuner is not installed; nothing can be checked against it or run"]
    assert 'pip install -e ".[train]"' in report.errors[0].fix
