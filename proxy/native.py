"""Whether the proxy runs its mypyc-compiled modules or their Python source.

`mypyc_build.py` (run by `make setup` and `make build`) compiles the hot path in place: an
extension module beside each listed `.py`, which Python's import system prefers to the
source, and `proxy/compiled.json`, the source hash of every module it compiled.

Rules (applied once, by `proxy/__init__.py`, before any compiled module is imported):
- No manifest: nothing is compiled; plain Python, nothing to check.
- Every listed source still has its recorded hash: the compiled modules run.
- Any listed source changed since the build (edited, another branch checked out) or its
  extension is gone: a stale extension must never shadow the source, and compiled modules
  call each other directly in C, so mixing source with extensions is no option either.
  Every listed module is loaded from source, and a warning names the stale modules and
  the fix (`make build`).
- `TULLE_PURE_PYTHON=1`: every listed module is loaded from source (debuggers, profilers
  that trace Python frames, coverage), silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec
from importlib.util import spec_from_file_location
from pathlib import Path
from types import ModuleType

MANIFEST = Path(__file__).with_name("compiled.json")
PURE_PYTHON = "TULLE_PURE_PYTHON"
_ROOT = Path(__file__).resolve().parent.parent


class SourceFinder:
    """A meta path finder that loads the listed modules from their `.py` files."""

    def __init__(self, sources: dict[str, Path]) -> None:
        self.sources = sources

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        source = self.sources.get(name)
        return None if source is None else spec_from_file_location(name, source)


def source_of(module: str) -> Path:
    return _ROOT.joinpath(*module.split(".")).with_suffix(".py")


def stale(recorded: dict[str, str]) -> list[str]:
    """The listed modules whose source no longer has the recorded hash, or whose extension
    is gone."""
    changed = []
    for module, digest in recorded.items():
        source = source_of(module)
        try:
            current = hashlib.sha256(source.read_bytes()).hexdigest()
        except OSError:
            current = ""
        if current != digest or not source.with_suffix(EXTENSION_SUFFIXES[0]).exists():
            changed.append(module)
    return changed


def source_finder(manifest: Path, pure_python: bool) -> tuple[SourceFinder | None, list[str]]:
    """The finder that keeps the compiled modules from running (None: they may run), and
    the stale modules that made it necessary."""
    try:
        recorded: dict[str, str] = json.loads(manifest.read_text())
    except FileNotFoundError:
        return None, []
    changed = [] if pure_python else stale(recorded)
    if not pure_python and not changed:
        return None, []
    return SourceFinder({module: source_of(module) for module in recorded}), changed


def select() -> None:
    """Apply the rules to this process (before any compiled module is imported)."""
    finder, changed = source_finder(MANIFEST, os.environ.get(PURE_PYTHON, "") not in ("", "0"))
    if finder is not None:
        sys.meta_path.insert(0, finder)
    if changed:
        print(f"tulle: {', '.join(changed)} changed since the mypyc build; running every "
              "compiled module from source (`make build` recompiles)", file=sys.stderr)
