"""Request/response header additions and removals, Envoy's append actions and order."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import yaml
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from google.protobuf import json_format

from proxy.config_error import ConfigError
from proxy.http.headers import Headers
from proxy.router.route_table import RouteTable


@dataclass
class Context:
    downstream_remote: tuple[str, int] = ("10.0.0.7", 40000)
    downstream_local: tuple[str, int] = ("127.0.0.1", 10000)
    request_headers: Headers = field(default_factory=Headers)


def mutated(route_yaml: str, request: list[tuple[str, str]], most_specific: bool = False) -> Headers:
    message = RouteConfiguration()
    document = yaml.safe_load(route_yaml)
    document["most_specific_header_mutations_wins"] = most_specific
    json_format.ParseDict(document, message)
    routes = RouteTable.from_proto(message)
    headers = Headers(list(request))
    selection = routes.select("GET", "h", "/", headers)
    assert selection is not None
    context = Context(request_headers=headers)
    for mutation in routes.request_mutations(selection):
        mutation.apply(headers, context)
    return headers


ACTIONS = """
virtual_hosts:
- name: all
  domains: ['*']
  routes:
  - match: {prefix: /}
    route: {cluster: a}
    request_headers_to_add:
    - header: {key: x-append, value: appended}
    - header: {key: x-overwrite, value: new}
      append_action: OVERWRITE_IF_EXISTS_OR_ADD
    - {header: {key: x-if-absent, value: default}, append_action: ADD_IF_ABSENT}
    - {header: {key: x-only-if-present, value: replaced}, append_action: OVERWRITE_IF_EXISTS}
    - {header: {key: x-client-ip, value: '%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%'}}
    - {header: {key: x-empty, value: ''}}
    - {header: {key: x-kept-empty, value: ''}, keep_empty_value: true}
    request_headers_to_remove: [x-remove-me]
"""


def test_append_if_exists_or_add_adds_another_line() -> None:
    headers = mutated(ACTIONS, [("x-append", "orig")])
    assert [v for k, v in headers if k == "x-append"] == ["orig", "appended"]


def test_overwrite_if_exists_or_add_replaces_every_line() -> None:
    headers = mutated(ACTIONS, [("x-overwrite", "a"), ("x-overwrite", "b")])
    assert [v for k, v in headers if k == "x-overwrite"] == ["new"]
    assert mutated(ACTIONS, []).get("x-overwrite") == "new"


def test_add_if_absent_keeps_the_clients_value() -> None:
    assert mutated(ACTIONS, [("x-if-absent", "mine")]).get("x-if-absent") == "mine"
    assert mutated(ACTIONS, []).get("x-if-absent") == "default"


def test_overwrite_if_exists_never_adds() -> None:
    assert "x-only-if-present" not in mutated(ACTIONS, [])
    assert mutated(ACTIONS, [("x-only-if-present", "x")]).get("x-only-if-present") == "replaced"


def test_substitution_of_the_downstream_address() -> None:
    assert mutated(ACTIONS, []).get("x-client-ip") == "10.0.0.7"


def test_empty_values_are_skipped_unless_kept() -> None:
    headers = mutated(ACTIONS, [])
    assert "x-empty" not in headers
    assert headers.get("x-kept-empty") == ""


def test_removal() -> None:
    assert "x-remove-me" not in mutated(ACTIONS, [("x-remove-me", "bye")])


LEVELS = """
request_headers_to_add: [{header: {key: x-level, value: config}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]
virtual_hosts:
- name: all
  domains: ['*']
  request_headers_to_add: [{header: {key: x-level, value: vhost}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]
  routes:
  - match: {prefix: /}
    route: {cluster: a}
    request_headers_to_add: [{header: {key: x-level, value: route}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]
"""


def test_outer_levels_apply_last_by_default() -> None:
    assert mutated(LEVELS, []).get("x-level") == "config"


def test_most_specific_header_mutations_wins_reverses_the_order() -> None:
    assert mutated(LEVELS, [], most_specific=True).get("x-level") == "route"


def test_unknown_substitution_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"request_headers_to_add\[0\]\.header\.value"):
        mutated("""
virtual_hosts:
- name: all
  domains: ['*']
  routes:
  - match: {prefix: /}
    route: {cluster: a}
    request_headers_to_add: [{header: {key: x, value: '%NO_SUCH_THING%'}}]
""", [])


def test_headers_set_replaces_all_lines_in_place() -> None:
    headers = Headers([("a", "1"), ("b", "2"), ("a", "3")])
    headers.set("a", "x")
    assert headers.items == [("a", "x"), ("b", "2")]
