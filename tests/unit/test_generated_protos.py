"""The committed generated modules in proto/ are exactly what `make proto` makes."""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def test_committed_generated_modules_are_current(tmp_path: Path) -> None:
    sources = sorted(p.relative_to(ROOT) for p in (ROOT / "proto").rglob("*.proto"))
    assert sources, "proto/ has no .proto sources"
    shutil.copytree(ROOT / "proto", tmp_path / "proto", ignore=shutil.ignore_patterns(*(f"*{s}" for s in GENERATED_SUFFIXES)))
    args = ["protoc", f"-I{tmp_path}", f"-I{Path(protoc.__file__).parent / '_proto'}",
            f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
            *(str(tmp_path / s) for s in sources)]
    assert protoc.main(args) == 0

    fresh = sorted(p.relative_to(tmp_path) for p in (tmp_path / "proto").rglob("*") if p.name.endswith(GENERATED_SUFFIXES))
    committed = sorted(p.relative_to(ROOT) for p in (ROOT / "proto").rglob("*") if p.name.endswith(GENERATED_SUFFIXES))
    assert fresh == committed, "run `make proto`: generated files differ in name"
    stale = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, ROOT / p, shallow=False)]
    assert not stale, f"run `make proto`: stale generated modules {stale}"
