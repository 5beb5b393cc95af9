"""install.py: quick, idempotent, installs nothing the host has, never breaks start-up."""

import pathlib
import runpy
import sys
import types

import pytest

INSTALL = str(pathlib.Path(__file__).resolve().parent.parent / "install.py")


@pytest.fixture
def fake_launch(monkeypatch):
    calls = []
    launch = types.ModuleType("launch")
    launch.run_pip = lambda command, desc=None: calls.append((command, desc))
    monkeypatch.setitem(sys.modules, "launch", launch)
    return calls


def test_nothing_to_do_when_the_host_has_everything(fake_launch, capsys):
    runpy.run_path(INSTALL, run_name="__main__")
    runpy.run_path(INSTALL, run_name="__main__")
    assert fake_launch == [] and capsys.readouterr().out == ""


def test_missing_package_goes_through_the_hosts_pip_and_never_torch(fake_launch, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "einops" else real(name, *a))
    runpy.run_path(INSTALL, run_name="__main__")
    assert fake_launch == [("install einops", "einops for ASAG")]
    assert not any("torch" in command for command, _ in fake_launch)


def test_a_failing_install_prints_one_line_and_does_not_raise(monkeypatch, capsys):
    import importlib.util

    launch = types.ModuleType("launch")

    def run_pip(command, desc=None):
        raise RuntimeError("no network")

    launch.run_pip = run_pip
    monkeypatch.setitem(sys.modules, "launch", launch)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "einops" else real(name, *a))
    runpy.run_path(INSTALL, run_name="__main__")
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("ASAG: missing einops")
