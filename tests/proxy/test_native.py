"""The compiled build and its guard (proxy/native.py): a stale extension never runs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from proxy import native

REPO = Path(__file__).resolve().parents[2]


def recorded(module: str, source: bytes) -> dict[str, str]:
    return {module: hashlib.sha256(source).hexdigest()}


def test_without_a_manifest_nothing_is_kept_from_running(tmp_path: Path) -> None:
    assert native.source_finder(tmp_path / "compiled.json", False) == (None, [])


def test_a_module_whose_source_changed_since_the_build_is_stale() -> None:
    assert native.stale(recorded("proxy.http.headers", b"an older source")) == ["proxy.http.headers"]


def test_a_stale_module_sends_every_compiled_module_to_its_source(tmp_path: Path) -> None:
    manifest = tmp_path / "compiled.json"
    headers = native.source_of("proxy.http.headers").read_bytes()
    manifest.write_text(json.dumps({**recorded("proxy.http.headers", headers),
                                    **recorded("proxy.http.router", b"an older source")}))
    finder, changed = native.source_finder(manifest, False)
    assert changed == ["proxy.http.router"]
    assert finder is not None
    for module in ("proxy.http.headers", "proxy.http.router"):
        spec = finder.find_spec(module)
        assert spec is not None and spec.origin == str(native.source_of(module))
    assert finder.find_spec("proxy.stats") is None


def test_pure_python_sends_every_compiled_module_to_its_source_without_checking(tmp_path: Path) -> None:
    manifest = tmp_path / "compiled.json"
    manifest.write_text(json.dumps(recorded("proxy.http.router", b"an older source")))
    finder, changed = native.source_finder(manifest, True)
    assert changed == []
    assert finder is not None and finder.find_spec("proxy.http.router") is not None


def _router_file(environ: dict[str, str]) -> str:
    return subprocess.run(
        [sys.executable, "-c", "import proxy.http.router as m; print(m.__file__)"],
        cwd=REPO, env=environ, capture_output=True, text=True, check=True).stdout.strip()


def test_the_suite_runs_the_build_it_asked_for() -> None:
    """Compiled (after `make build`), or source under TULLE_PURE_PYTHON=1: a suite that
    meant to test the compiled build never tests stale or missing extensions instead."""
    pure = os.environ.get(native.PURE_PYTHON, "") not in ("", "0")
    assert native.MANIFEST.exists() or pure, "no compiled build: run `make build`"
    path = _router_file(dict(os.environ))
    assert path.endswith(".py" if pure else ".so"), f"{path}: run `make build`"


def test_pure_python_runs_the_source() -> None:
    assert _router_file({**os.environ, native.PURE_PYTHON: "1"}).endswith("router.py")
