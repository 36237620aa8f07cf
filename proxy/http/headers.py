"""An HTTP/1.1 header list: ordered (name, value) pairs with lower-case names.

Rules: names are stored lower-case (HTTP/1.1 names are case-insensitive and Envoy emits them
lower-case); repeated headers stay separate lines in arrival order; `get` returns the first
line, `get_joined` all lines joined with "," (Envoy's matching view of a repeated header).
The list is small (a dozen lines), so linear scans beat a dict plus an order list.
"""

from __future__ import annotations

from collections.abc import Iterator


class Headers:
    __slots__ = ("items",)

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self.items: list[tuple[str, str]] = items if items is not None else []

    def get(self, name: str) -> str | None:
        for key, value in self.items:
            if key == name:
                return value
        return None

    def get_joined(self, name: str) -> str | None:
        values = [value for key, value in self.items if key == name]
        if not values:
            return None
        return values[0] if len(values) == 1 else ",".join(values)

    def __contains__(self, name: object) -> bool:
        # A plain loop: any() over a generator costs a frame per call on the hot path.
        for key, _ in self.items:  # noqa: SIM110
            if key == name:
                return True
        return False

    def add(self, name: str, value: str) -> None:
        self.items.append((name, value))

    def set(self, name: str, value: str) -> None:
        """Replace every line named `name` by one line (at the first one's place, else at the end)."""
        items = self.items
        for index, (key, _) in enumerate(items):
            if key == name:
                items[index] = (name, value)
                for later in range(index + 1, len(items)):
                    if items[later][0] == name:   # repeated lines: drop the others (rare)
                        self.items = [item for position, item in enumerate(items)
                                      if position <= index or item[0] != name]
                        break
                return
        items.append((name, value))

    def remove(self, name: str) -> None:
        if name in self:
            self.items = [item for item in self.items if item[0] != name]

    def remove_all(self, names: frozenset[str]) -> None:
        """Remove every line whose name is in `names` (one pass, for the hot path)."""
        items = self.items
        for key, _ in items:
            if key in names:
                self.items = [item for item in items if item[0] not in names]
                return

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def copy(self) -> Headers:
        return Headers(list(self.items))

    def __repr__(self) -> str:
        return f"Headers({self.items!r})"
