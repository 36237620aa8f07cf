"""A node's agent can vouch only for the pods on its own node, each for its own identity."""

from __future__ import annotations

import pytest

from control.ca.attestation import NotAuthorized, identity_for
from control.ca.spiffe import SpiffeId


def pod(node: str, sa: str | None = "frontend", ns: str = "shop") -> dict:
    spec = {"nodeName": node, **({"serviceAccountName": sa} if sa else {})}
    return {"metadata": {"name": "web-1", "namespace": ns}, "spec": spec}


def test_a_pod_on_the_agents_node_gets_its_namespace_and_service_account() -> None:
    assert identity_for(pod("node-1"), "node-1", "shop/web-1", "cluster.local") == SpiffeId(
        "cluster.local", "shop", "frontend")


def test_a_pod_without_a_service_account_is_the_default_one() -> None:
    assert identity_for(pod("node-1", sa=None), "node-1", "shop/web-1", "td").service_account == "default"


def test_an_agent_cannot_act_for_a_pod_on_another_node() -> None:
    with pytest.raises(NotAuthorized, match="runs on 'node-2'"):
        identity_for(pod("node-2"), "node-1", "shop/web-1", "cluster.local")


def test_an_unknown_pod_gets_nothing() -> None:
    with pytest.raises(NotAuthorized, match="does not exist"):
        identity_for(None, "node-1", "shop/ghost", "cluster.local")


def test_no_pod_obtains_an_identity_of_tulle_itself() -> None:
    """A pod in tulle-system named for an agent account would otherwise become that agent."""
    with pytest.raises(NotAuthorized, match="tulle-system"):
        identity_for(pod("node-1", sa="tulle-agent.node-2", ns="tulle-system"), "node-1", "tulle-system/web-1",
                     "cluster.local")
