"""Reading manifests the way `kubectl apply -f` does.

`-f` takes a file (YAML or JSON, several documents separated by `---`), a directory
(its .yaml, .yml and .json files in name order; with `recursive`, its subdirectories
too) or `-` for standard input. Empty documents are skipped; a `kind: List` stands
for its items. A file that does not parse is reported with its name and the parser's
position, and nothing is applied.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


class ManifestError(Exception):
    pass


def _files(source: str, recursive: bool) -> list[Path]:
    path = Path(source)
    if path.is_dir():
        pattern = "**/*" if recursive else "*"
        return sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
    if not path.exists():
        raise ManifestError(f'the path "{source}" does not exist')
    return [path]


def _documents(text: str, origin: str) -> list[Any]:
    try:
        loaded = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise ManifestError(f"error parsing {origin}: {e}") from None
    documents: list[Any] = []
    for document in loaded:
        if isinstance(document, dict) and document.get("kind") == "List" and isinstance(document.get("items"), list):
            documents.extend(document["items"])
        else:
            documents.append(document)
    return documents


def read_manifests(sources: Iterable[str], recursive: bool = False) -> list[Any]:
    documents: list[Any] = []
    for source in sources:
        if source == "-":
            documents.extend(_documents(sys.stdin.read(), "standard input"))
            continue
        for path in _files(source, recursive):
            try:
                text = path.read_text()
            except OSError as e:
                raise ManifestError(f"cannot read {path}: {e.strerror}") from None
            documents.extend(_documents(text, str(path)))
    return documents
