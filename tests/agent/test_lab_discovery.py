"""How meshctl finds a lab's control plane without flags: the one lab that runs one."""

from __future__ import annotations

from pathlib import Path

import pytest

from control.meshctl import client


@pytest.fixture
def no_local_control(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("TULLE_SERVER", raising=False)
    monkeypatch.setattr(client, "DEFAULT_SOCKET", tmp_path / "no-such-control.sock")
    root = tmp_path / "labs"
    monkeypatch.setenv("TULLE_LAB_ROOT", str(root))
    return root


def test_meshctl_uses_the_control_plane_of_the_only_lab_up(no_local_control: Path) -> None:
    (no_local_control / "demo").mkdir(parents=True)
    (no_local_control / "demo" / "control.sock").touch()
    assert client.default_server() == f"unix:{no_local_control}/demo/control.sock"


def test_with_two_labs_up_meshctl_does_not_guess(no_local_control: Path) -> None:
    for name in ("one", "two"):
        (no_local_control / name).mkdir(parents=True)
        (no_local_control / name / "control.sock").touch()
    assert client.default_server() == client.DEFAULT_LISTEN


def test_tulle_server_wins_over_a_lab(no_local_control: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (no_local_control / "demo").mkdir(parents=True)
    (no_local_control / "demo" / "control.sock").touch()
    monkeypatch.setenv("TULLE_SERVER", "10.0.0.1:15014")
    assert client.default_server() == "10.0.0.1:15014"
