"""Header, query-parameter and string matchers of Envoy's route match, compiled once.

Rules (envoy.config.route.v3.HeaderMatcher, envoy.type.matcher.v3.StringMatcher):
- a header's value for matching is all its lines joined with ","; pseudo-headers `:method`,
  `:path`, `:authority`, `:scheme` are matchable;
- a missing header never matches, except `present_match` (it matches when `present_match`
  equals `invert_match`), unless `treat_missing_header_as_empty` matches "" instead;
- `invert_match` flips the result for a present header;
- `safe_regex` must match the whole value (Envoy uses RE2; Python's `re` fullmatch is
  used, so RE2-only syntax is rejected at load and backtracking patterns are the
  operator's responsibility);
- query parameters: the first occurrence of the name, decoded; `present_match` or a
  string matcher; a missing parameter never matches.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote_plus

from google.protobuf.message import Message

from proxy.config_error import ConfigError, reject_unsupported
from proxy.http.headers import Headers
from proxy.proto_config import join


def compile_regex(pattern: str, path: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ConfigError(path, f"invalid regex {pattern!r}: {error}") from None


def regex_matcher(message: Message, path: str) -> re.Pattern[str]:
    reject_unsupported(message, path, ("regex", "google_re2"))
    return compile_regex(message.regex, join(path, "regex"))


@dataclass(frozen=True, slots=True)
class StringMatch:
    kind: str                     # exact | prefix | suffix | contains | regex
    value: str
    ignore_case: bool = False
    pattern: re.Pattern[str] | None = None

    def __call__(self, text: str) -> bool:
        kind = self.kind
        if kind == "regex":
            assert self.pattern is not None
            return self.pattern.fullmatch(text) is not None
        value = self.value
        if self.ignore_case:
            text = text.lower()
        if kind == "exact":
            return text == value
        if kind == "prefix":
            return text.startswith(value)
        if kind == "suffix":
            return text.endswith(value)
        return value in text

    @classmethod
    def from_proto(cls, message: Message, path: str) -> StringMatch:
        reject_unsupported(message, path, ("exact", "prefix", "suffix", "contains", "safe_regex",
                                    "ignore_case"))
        kind = message.WhichOneof("match_pattern")
        ignore_case = bool(message.ignore_case)
        if kind is None:
            raise ConfigError(path, "one of exact, prefix, suffix, contains, safe_regex is required")
        if kind == "safe_regex":
            if ignore_case:
                raise ConfigError(join(path, "ignore_case"), "has no effect with safe_regex")
            return cls("regex", "", pattern=regex_matcher(message.safe_regex,
                                                          join(path, "safe_regex")))
        value = getattr(message, kind)
        return cls(kind, value.lower() if ignore_case else value, ignore_case)


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    name: str
    test: Callable[[str], bool] | None   # None: present_match
    present: bool = True
    invert: bool = False
    missing_as_empty: bool = False

    def matches(self, headers: Headers, pseudo: dict[str, str]) -> bool:
        name = self.name
        value = pseudo.get(name) if name[0] == ":" else headers.get_joined(name)
        if value is None:
            if self.missing_as_empty and self.test is not None:
                value = ""
            else:
                return self.test is None and self.present == self.invert
        if self.test is None:
            return self.present != self.invert
        return self.test(value) != self.invert

    @classmethod
    def from_proto(cls, message: Message, path: str) -> HeaderMatch:
        reject_unsupported(message, path, ("name", "exact_match", "safe_regex_match", "range_match",
                                    "present_match", "prefix_match", "suffix_match",
                                    "contains_match", "string_match", "invert_match",
                                    "treat_missing_header_as_empty"))
        name = message.name.lower()
        if not name:
            raise ConfigError(join(path, "name"), "must not be empty")
        kind = message.WhichOneof("header_match_specifier")
        test: Callable[[str], bool] | None
        present = True
        if kind is None:
            test = None          # Envoy: no specifier means "present"
        elif kind == "present_match":
            test, present = None, message.present_match
        elif kind == "string_match":
            test = StringMatch.from_proto(message.string_match, join(path, "string_match"))
        elif kind == "safe_regex_match":
            test = StringMatch("regex", "", pattern=regex_matcher(
                message.safe_regex_match, join(path, "safe_regex_match")))
        elif kind == "range_match":
            start, end = message.range_match.start, message.range_match.end
            test = _range_test(start, end)
        else:   # exact_match, prefix_match, suffix_match, contains_match (deprecated forms)
            test = StringMatch(kind.removesuffix("_match"), getattr(message, kind))
        return cls(name=name, test=test, present=present,
                   invert=message.invert_match,
                   missing_as_empty=message.treat_missing_header_as_empty)


def _range_test(start: int, end: int) -> Callable[[str], bool]:
    def in_range(text: str) -> bool:
        try:
            number = int(text)
        except ValueError:
            return False
        return start <= number < end

    return in_range


@dataclass(frozen=True, slots=True)
class QueryParameterMatch:
    name: str
    test: Callable[[str], bool] | None   # None: present_match

    def matches(self, query: dict[str, str]) -> bool:
        value = query.get(self.name)
        if value is None:
            return False
        return self.test is None or self.test(value)

    @classmethod
    def from_proto(cls, message: Message, path: str) -> QueryParameterMatch:
        reject_unsupported(message, path, ("name", "string_match", "present_match"))
        if message.HasField("string_match"):
            return cls(message.name, StringMatch.from_proto(
                message.string_match, join(path, "string_match")))
        if message.present_match:
            return cls(message.name, None)
        raise ConfigError(path, "one of string_match or present_match is required")


def parse_query(query: str) -> dict[str, str]:
    """First value of each parameter, decoded."""
    params: dict[str, str] = {}
    for pair in query.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        name = unquote_plus(name)
        if name not in params:
            params[name] = unquote_plus(value)
    return params


def header_matches(messages: Sequence[Message], path: str) -> tuple[HeaderMatch, ...]:
    return tuple(HeaderMatch.from_proto(message, f"{path}[{index}]")
                 for index, message in enumerate(messages))
