"""What one client holds of one resource type (name → version), stored as a shared base
plus this client's differences.

Why: a thousand proxies of one profile hold the same thousand clusters. A plain dict
per stream costs ~100 KB per proxy for what is, almost always, "exactly the current
resource map". Here the base is such a map (a `ResourceSet`'s, shared by every stream of
the profile) and each stream keeps only where it differs; `rebase` moves the base to a
newer map when that makes the difference smaller.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from control.xds.resources import Resource

_EMPTY: Mapping[str, Resource] = {}
# Rebasing costs a pass over the base; only try once the difference is this large.
REBASE_AT = 32


class HeldVersions(Mapping[str, str]):
    __slots__ = ("_base", "_diff")

    def __init__(self, versions: Mapping[str, str] | None = None) -> None:
        self._base: Mapping[str, Resource] = _EMPTY
        self._diff: dict[str, str | None] = dict(versions or {})  # None: not held

    def __getitem__(self, name: str) -> str:
        version = self.get(name)
        if version is None:
            raise KeyError(name)
        return version

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        if name in self._diff:
            held = self._diff[name]
            return default if held is None else held
        r = self._base.get(name)
        return default if r is None else r.version

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[str]:
        diff = self._diff
        for name in self._base:
            if name not in diff:
                yield name
        for name, version in diff.items():
            if version is not None:
                yield name

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def set(self, name: str, version: str | None) -> None:
        r = self._base.get(name)
        if (None if r is None else r.version) == version:
            self._diff.pop(name, None)
        else:
            self._diff[name] = version

    def pop(self, name: str, default: str | None = None) -> str | None:
        held = self.get(name)
        self.set(name, None)
        return default if held is None else held

    def apply(self, changes: Mapping[str, str | None]) -> None:
        for name, version in changes.items():
            self.set(name, version)

    def copy(self) -> HeldVersions:
        other = HeldVersions()
        other._base, other._diff = self._base, dict(self._diff)
        return other

    def rebase(self, base: Mapping[str, Resource]) -> None:
        """Store relative to `base` if that needs fewer differences than now."""
        if base is self._base or len(self._diff) < REBASE_AT:
            return
        diff: dict[str, str | None] = {}
        for name, r in base.items():
            held = self.get(name)
            if held != r.version:
                diff[name] = held
                if len(diff) >= len(self._diff):
                    return
        for name in self:
            if name not in base:
                diff[name] = self.get(name)
                if len(diff) >= len(self._diff):
                    return
        self._base, self._diff = base, diff
