"""Where tulle-control keeps its state and socket when started with no flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from control import plane


def test_root_uses_the_system_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plane.os, "geteuid", lambda: 0)
    assert plane._default_paths() == (Path("/var/lib/tulle"), Path("/run/tulle/control.sock"))


def test_another_user_uses_their_own_xdg_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(plane.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    assert plane._default_paths() == (tmp_path / "state" / "tulle", tmp_path / "run" / "tulle" / "control.sock")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert plane._default_paths()[1] == tmp_path / "state" / "tulle" / "control.sock"
