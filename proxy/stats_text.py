"""Envoy's admin `/stats` text format, read back: the inverse of `StatsStore.render_text`, and
of a real Envoy's `/stats`, for whoever reads a sidecar's counters (the demo, the tests).

Rules (Envoy's admin, source/server/admin/stats_render.cc): one stat per line, `NAME: VALUE`.
A stat name never holds ": " (Envoy turns a `:` in a name into `_`, e.g. `listener.127.0.0.1_80`),
so the first ": " ends the name and the value may hold anything. The value says the kind:
- digits: a counter or a gauge (the text format does not tell them apart);
- `"..."`: a text readout (`control_plane.identifier: ""`), the quotes not escaped;
- `No recorded values`, quantiles `P0(interval,cumulative) P25(...) ...`, or with
  `?histogram_buckets=cumulative|disjoint` buckets `B0.5(interval,cumulative) ...`: a histogram;
- with `?histogram_buckets=detailed` a histogram is `NAME:` alone on its line, followed by
  lines indented by two spaces (`  totals=...`, `  intervals=...`, `  summary=...`).
Anything else is not Envoy's format and is an error naming the line, never skipped: a reader
that dropped what it did not know would turn a wrong page into missing counters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_INTEGER = re.compile(r"-?\d+")
# A histogram's one-line summary: quantiles (P50(...)) or buckets (B0.5(...), B1.8e+06(...)).
_HISTOGRAM = re.compile(r"[PB][0-9.e+]+\([^)]*\)( [PB][0-9.e+]+\([^)]*\))*")
NO_VALUES = "No recorded values"


class StatsTextError(ValueError):
    """A `/stats` page that is not in Envoy's text format; the message names the line."""


@dataclass(frozen=True, slots=True)
class StatsPage:
    """One `/stats` text page. `values`: counters and gauges; `text_readouts`: strings;
    `histograms`: each histogram's summary as Envoy wrote it (detailed ones as their
    indented lines joined by newlines, without the indent)."""

    values: Mapping[str, int] = field(default_factory=dict)
    text_readouts: Mapping[str, str] = field(default_factory=dict)
    histograms: Mapping[str, str] = field(default_factory=dict)

    def matching(self, pattern: str) -> dict[str, int]:
        """The counters and gauges whose names the regex `pattern` finds (like `?filter=`)."""
        regex = re.compile(pattern)
        return {name: value for name, value in self.values.items() if regex.search(name)}


def parse_stats(text: str) -> StatsPage:
    """Reads a `/stats` text page (any `?filter=` or `?histogram_buckets=` of it)."""
    values: dict[str, int] = {}
    readouts: dict[str, str] = {}
    histograms: dict[str, str] = {}
    details: dict[str, list[str]] = {}  # detailed histograms: their indented lines
    detailed: list[str] | None = None  # the lines of the detailed histogram being read
    for number, line in enumerate(text.split("\n"), start=1):
        if detailed is not None and line.startswith("  "):
            detailed.append(line[2:])
            continue
        detailed = None
        if not line:
            continue
        name, sep, value = line.partition(": ")
        if not sep and line.endswith(":") and " " not in line:
            detailed = details[line[:-1]] = []
            continue
        if not sep:
            raise StatsTextError(f"line {number}: {line[:200]!r} is not `NAME: VALUE`")
        if not name or " " in name:
            raise StatsTextError(f"line {number}: {name[:200]!r} is not a stat name")
        if _INTEGER.fullmatch(value):
            values[name] = int(value)
        elif len(value) >= 2 and value[0] == value[-1] == '"':
            readouts[name] = value[1:-1]
        elif value == NO_VALUES or _HISTOGRAM.fullmatch(value):
            histograms[name] = value
        else:
            raise StatsTextError(f"line {number}: the value of {name} ({value[:200]!r}) is neither a number, "
                                 "a quoted text readout nor a histogram summary")
    for name, lines in details.items():
        histograms[name] = "\n".join(lines)
    return StatsPage(values, readouts, histograms)
