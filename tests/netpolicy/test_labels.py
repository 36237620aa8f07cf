"""Label selectors behave as the Kubernetes API defines them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netpolicy.labels import LabelSelector, SelectorError, check_label_key, check_label_value

POD = {"app": "web", "tier": "frontend"}


@pytest.mark.parametrize(
    ("selector", "selected"),
    [
        ({}, True),
        ({"matchLabels": {"app": "web"}}, True),
        ({"matchLabels": {"app": "db"}}, False),
        ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["db", "web"]}]}, True),
        ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}, False),
        ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, False),
        ({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "x", "operator": "Exists"}]}, False),
    ],
)
def test_selector_documents_match_as_kubernetes_defines(selector: dict, selected: bool) -> None:
    assert LabelSelector.from_dict(selector).matches(POD) is selected


@pytest.mark.parametrize(
    ("text", "selected"),
    [
        ("", True),
        ("app=web", True),
        ("app==web,tier=frontend", True),
        ("app!=web", False),
        ("zone!=a", True),
        ("app in (db, web)", True),
        ("app notin (db,web)", False),
        ("tier", True),
        ("!tier", False),
        ("!zone,app in (web)", True),
    ],
)
def test_selector_strings_match_like_kubectl(text: str, selected: bool) -> None:
    assert LabelSelector.parse(text).matches(POD) is selected


@pytest.mark.parametrize(
    ("selector", "path"),
    [
        ({"matchLabels": {"bad key!": "x"}}, "spec.podSelector.matchLabels.bad key!"),
        ({"matchLabels": {"app": "-bad"}}, "spec.podSelector.matchLabels.app"),
        ({"matchExpressions": [{"key": "a", "operator": "In"}]}, "spec.podSelector.matchExpressions[0].values"),
        ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}, "spec.podSelector.matchExpressions[0].values"),
        ({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]}, "spec.podSelector.matchExpressions[0].operator"),
        ({"matchLabel": {"a": "b"}}, "spec.podSelector.matchLabel"),
        ("app=web", "spec.podSelector"),
    ],
)
def test_invalid_selectors_are_rejected_with_the_field_path(selector: object, path: str) -> None:
    with pytest.raises(SelectorError) as error:
        LabelSelector.from_dict(selector, "spec.podSelector")
    assert error.value.path == path


def test_a_prefixed_key_needs_a_dns_subdomain_prefix() -> None:
    assert check_label_key("kubernetes.io/metadata.name", "k") == "kubernetes.io/metadata.name"
    with pytest.raises(SelectorError):
        check_label_key("Bad_Prefix/name", "k")


def test_a_value_longer_than_63_characters_is_rejected() -> None:
    with pytest.raises(SelectorError):
        check_label_value("a" * 64, "v")


_names = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)


@given(st.dictionaries(_names, _names, max_size=4), st.dictionaries(_names, _names, max_size=4))
def test_string_form_and_document_form_agree(wanted: dict[str, str], labels: dict[str, str]) -> None:
    document = LabelSelector.from_dict({"matchLabels": wanted})
    assert LabelSelector.parse(str(document)).matches(labels) == document.matches(labels)
    assert document.matches(labels) == all(labels.get(k) == v for k, v in wanted.items())
