"""Compile tulle-proxy's hot path with mypyc, in place: `make build` (and `make setup`) run this.

    .venv/bin/python mypyc_build.py            build if any compiled module's source changed
    .venv/bin/python mypyc_build.py --clean    remove the compiled modules (pure Python again)

Why: the interpreter's eval loop is the largest user-space cost per proxied request; mypyc
turns the fully typed request path (HTTP connection manager, router, upstream pool, balancers,
the tcp_proxy relay) into C, with native classes whose attributes are struct fields.

Rules:
- COMPILED lists the modules (as globs); they are compiled as one group: the shared library
  `proxy/compiled__mypyc.*.so` and a small extension beside each `.py`. Python's import
  system prefers an extension to a source file in the same folder, so the editable install
  runs the compiled modules without any path tricks.
- The build is deterministic: pinned mypy (mypyc) and setuptools, a sorted module list,
  the same flags and build folder (`build/mypyc`, the generated C) every time.
- After a successful build, MANIFEST records each compiled module's source hash; before a
  build, the old extensions and manifest are removed first, so a failed build leaves pure
  Python, never a mix. `proxy/native.py` checks the manifest at import: if any listed
  source changed since, every compiled module is loaded from source instead (with a warning
  naming the stale modules) — a stale extension never shadows edited source.
- Up to date (every hash matches) means no work: `make build` after an edit rebuilds only
  when a compiled module's source changed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
MANIFEST = ROOT / "proxy" / "compiled.json"
GROUP = "proxy.compiled"
# generated C and objects: a fixed place (gitignored), so builds are reproducible
BUILD = ROOT / "build" / "mypyc"
# The request path, as the --python profile shows it (bench/proxy_http.py): everything a
# request runs through between the downstream socket and the upstream one.
COMPILED = (
    "proxy/http/*.py",
    "proxy/router/*.py",
    "proxy/upstream/*.py",
    "proxy/upstream/balancer/*.py",
    "proxy/tcp_proxy.py",
    "proxy/tcp_access_log.py",
)
# Not proxy/stats.py: its scopes are dataclasses with a ClassVar (GAUGES), which this mypyc
# makes a read-only instance field; counting into Python dataclasses costs little.


def sources() -> list[Path]:
    """The compiled modules' source files (package __init__ files stay Python)."""
    found = {path for pattern in COMPILED for path in ROOT.glob(pattern)}
    return sorted(path for path in found if path.name != "__init__.py")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_for(paths: list[Path]) -> dict[str, str]:
    return {module_name(path): source_hash(path) for path in paths}


def extensions() -> list[Path]:
    """Every extension module a build put in the tree."""
    return sorted((ROOT / "proxy").rglob("*.so"))


def up_to_date(paths: list[Path]) -> bool:
    try:
        recorded = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return False
    return recorded == manifest_for(paths) and bool(extensions())


def clean() -> None:
    MANIFEST.unlink(missing_ok=True)
    for path in extensions():
        path.unlink()


def build(paths: list[Path]) -> None:
    # Imported here: --clean and the up-to-date check need neither.
    from mypyc.build import mypycify
    from setuptools import Distribution

    clean()
    started = time.monotonic()
    BUILD.mkdir(parents=True, exist_ok=True)
    cwd = Path.cwd()
    os.chdir(ROOT)
    try:
        modules = mypycify([str(path.relative_to(ROOT)) for path in paths],
                           group_name=GROUP, target_dir=str(BUILD))
        distribution = Distribution({"name": "tulle-compiled", "ext_modules": modules})
        command = distribution.get_command_obj("build_ext")
        command.inplace = True
        command.build_temp = str(BUILD)
        command.parallel = os.cpu_count() or 1
        distribution.run_command("build_ext")
    except BaseException:
        clean()
        raise
    finally:
        os.chdir(cwd)
    MANIFEST.write_text(json.dumps(manifest_for(paths), indent=1, sort_keys=True) + "\n")
    print(f"mypyc: compiled {len(paths)} modules in {time.monotonic() - started:.0f} s",
          file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", action="store_true", help="remove the compiled modules")
    args = parser.parse_args()
    if args.clean:
        clean()
        return
    paths = sources()
    if not up_to_date(paths):
        build(paths)


if __name__ == "__main__":
    main()
