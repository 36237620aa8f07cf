"""meshctl's table cells (control/meshctl/tables.py, pure)."""

from __future__ import annotations

import datetime

from control.meshctl.tables import age, rows, selector_text

NOW = datetime.datetime(2026, 1, 10, 12, 0, 0, tzinfo=datetime.UTC)


def test_age_reads_like_kubectls() -> None:
    def ago(seconds: int) -> str:
        return age((NOW - datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ"), NOW)

    assert [ago(5), ago(119), ago(600), ago(7200), ago(3 * 86400)] == ["5s", "119s", "10m", "2h", "3d"]
    assert age(None, NOW) == "<unknown>"


def test_selectors_print_in_kubectls_l_syntax() -> None:
    assert selector_text({"matchLabels": {"b": "2", "a": "1"}}) == "a=1,b=2"
    assert selector_text({"matchExpressions": [{"key": "env", "operator": "In", "values": ["a", "b"]},
                                               {"key": "canary", "operator": "DoesNotExist"}]}) == "env in (a,b),!canary"
    assert selector_text({"app": "web"}) == "app=web"  # a Service's plain label map
    assert selector_text({}) == "<none>"


def test_all_namespaces_adds_a_namespace_column_and_wide_adds_wide_columns() -> None:
    pod = {"kind": "Pod", "metadata": {"name": "p", "namespace": "ns", "creationTimestamp": "2026-01-10T11:59:00Z"},
           "spec": {"nodeName": "n1", "containers": [{"name": "c"}]}, "status": {"phase": "Running", "podIP": "10.0.0.1"}}
    headers, body = rows("Pod", [pod], wide=True, all_namespaces=True, now=NOW)
    assert headers == ["NAMESPACE", "NAME", "READY", "STATUS", "IP", "NODE", "AGE"]
    assert body == [["ns", "p", "0/1", "Running", "10.0.0.1", "n1", "60s"]]
    headers, _ = rows("Pod", [pod], wide=False, all_namespaces=False, now=NOW)
    assert headers == ["NAME", "READY", "STATUS", "AGE"]
