"""HeldVersions behaves exactly as a plain name → version dict, whatever its base."""

from __future__ import annotations

from typing import Any

from envoy.config.endpoint.v3 import endpoint_pb2
from hypothesis import given
from hypothesis import strategies as st

from control.xds.held_versions import REBASE_AT, HeldVersions
from control.xds.resources import Resource

NAMES = [f"c{i}" for i in range(REBASE_AT * 2)]


def resources(ports: dict[str, int]) -> dict[str, Resource]:
    out = {}
    for name, port in ports.items():
        cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
        cla.endpoints.add().lb_endpoints.add().endpoint.address.socket_address.port_value = port
        out[name] = Resource(name, cla)
    return out


ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.sampled_from(NAMES), st.one_of(st.none(), st.sampled_from(["v1", "v2"]))),
        st.tuples(st.just("rebase"), st.dictionaries(st.sampled_from(NAMES), st.integers(1, 3)), st.none()),
        st.tuples(st.just("copy"), st.none(), st.none()),
    ),
    max_size=200,
)


@given(ops)
def test_behaves_as_a_plain_dict(operations: list[tuple[str, Any, Any]]) -> None:
    held, model = HeldVersions(), dict[str, str]()
    for op, a, b in operations:
        if op == "set":
            assert isinstance(a, str)
            held.set(a, b)
            if b is None:
                model.pop(a, None)
            else:
                model[a] = b
        elif op == "rebase":
            base = resources(a)
            held.rebase(base)
            # Make the model hold a base's versions sometimes, as a full push does.
            if len(model) % 2 == 0:
                held.apply({n: r.version for n, r in base.items()})
                model.update({n: r.version for n, r in base.items()})
                held.rebase(base)
        else:
            held = held.copy()
        assert dict(held) == model
        assert all((n in held) == (n in model) for n in NAMES)


def test_rebasing_onto_the_held_map_leaves_no_differences() -> None:
    base = resources({n: 1 for n in NAMES})
    held = HeldVersions()
    held.apply({n: r.version for n, r in base.items()})
    held.rebase(base)
    assert held._diff == {}
    assert dict(held) == {n: r.version for n, r in base.items()}
