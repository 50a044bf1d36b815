"""Identities and policies through a live agent: apply, trace, get, delete, restart."""

from __future__ import annotations

import json
import signal

import pytest

from tests.agentproc import AgentProcess

pytestmark = pytest.mark.root

ENDPOINTS = """
apiVersion: v1
kind: Namespace
metadata: {name: empire, labels: {side: dark}}
---
apiVersion: ostium.io/v1alpha1
kind: Endpoint
metadata: {name: deathstar-1, namespace: empire, labels: {org: empire, class: deathstar}}
---
apiVersion: ostium.io/v1alpha1
kind: Endpoint
metadata: {name: deathstar-2, namespace: empire, labels: {org: empire, class: deathstar}}
---
apiVersion: ostium.io/v1alpha1
kind: Endpoint
metadata: {name: tiefighter, namespace: empire, labels: {org: empire, class: tiefighter}}
---
apiVersion: ostium.io/v1alpha1
kind: Endpoint
metadata: {name: xwing, namespace: empire, labels: {org: alliance, class: xwing}}
"""

POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1, namespace: empire}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: POST, path: /v1/request-landing}]}
"""


@pytest.fixture
def agent():
    a = AgentProcess(pod_cidr="10.213.0.0/24")
    try:
        a.start()
        a.cli("apply", "-f", "-", input=ENDPOINTS)
        yield a
    finally:
        a.cleanup()


def trace(agent, *args):
    return json.loads(agent.cli("policy", "trace", *args, "-o", "json").stdout)


def eps(agent):
    return {e["name"]: e for e in agent.cli_json("endpoint", "list")}


def test_same_labels_share_one_identity_and_identities_carry_all_security_labels(agent):
    e = eps(agent)
    assert e["deathstar-1"]["identity"] == e["deathstar-2"]["identity"] >= 256
    assert len({e[n]["identity"] for n in ("deathstar-1", "tiefighter", "xwing")}) == 3
    ident = agent.cli_json("identity", "get", str(e["tiefighter"]["identity"]))
    assert ident["labels"]["k8s:org"] == "empire"
    assert ident["labels"]["k8s:io.kubernetes.pod.namespace"] == "empire"
    assert ident["labels"]["k8s:io.cilium.k8s.namespace.labels.side"] == "dark"
    assert ident["references"] == 1
    assert agent.cli_json("identity", "get", str(e["deathstar-1"]["identity"]))["references"] == 2


def test_policy_applied_through_the_agent_decides_trace_verdicts(agent):
    assert trace(agent, "--src", "xwing", "--dst", "deathstar-1", "--dport", "80/TCP")["verdict"] == "allowed"
    agent.cli("apply", "-f", "-", input=POLICY)
    t = trace(agent, "--src", "tiefighter", "--dst", "deathstar-1", "--dport", "80/TCP",
              "--http-method", "POST", "--http-path", "/v1/request-landing")
    assert t["verdict"] == "allowed" and any("rule1" in r for r in t["rules"])
    t = trace(agent, "--src", "tiefighter", "--dst", "deathstar-2", "--dport", "80/TCP",
              "--http-method", "PUT", "--http-path", "/v1/exhaust-port")
    assert t["verdict"] == "denied"
    assert trace(agent, "--src", "xwing", "--dst", "deathstar-1", "--dport", "80/TCP")["verdict"] == "denied"
    # the resolved per-endpoint state is visible and redirects port 80 to the HTTP proxy
    e = eps(agent)
    pol = json.loads(agent.cli("policy", "get", "-o", "json").stdout)
    assert [p["name"] for p in pol] == ["rule1"]
    state = agent.cli_json("status")["components"]["policy"]
    assert state["applied_revision"] == state["revision"]
    # deleting the policy restores default allow
    agent.cli("policy", "delete", "CiliumNetworkPolicy/empire/rule1")
    assert trace(agent, "--src", "xwing", "--dst", "deathstar-1", "--dport", "80/TCP")["verdict"] == "allowed"
    assert e  # (endpoints unchanged by policy operations)


def test_label_change_moves_the_endpoint_to_another_identity_and_policy_follows(agent):
    agent.cli("apply", "-f", "-", input=POLICY)
    before = eps(agent)["xwing"]["identity"]
    agent.cli("apply", "-f", "-", input="apiVersion: ostium.io/v1alpha1\nkind: Endpoint\n"
              "metadata: {name: xwing, namespace: empire, labels: {org: empire, class: xwing}}\n")
    after = eps(agent)["xwing"]["identity"]
    assert after != before
    ids = {i["id"] for i in agent.cli_json("identity", "list")}
    assert before not in ids  # released on last use
    t = trace(agent, "--src", "xwing", "--dst", "deathstar-1", "--dport", "80/TCP",
              "--http-method", "POST", "--http-path", "/v1/request-landing")
    assert t["verdict"] == "allowed"


def test_a_bad_policy_in_a_multi_document_apply_applies_nothing(agent):
    bad = ENDPOINTS.replace("deathstar-1", "deathstar-3").split("---", 1)[1] + "---\n" + POLICY.replace(
        "/v1/request-landing", "/v1/(unclosed")
    r = agent.cli("apply", "-f", "-", input=bad, check=False)
    assert r.returncode == 2
    assert "spec.ingress[0].toPorts[0].rules.http[0].path" in r.stderr, r.stderr
    assert "deathstar-3" not in eps(agent)
    assert json.loads(agent.cli("policy", "get", "-o", "json").stdout) == []


def test_policies_and_identities_survive_an_agent_restart(agent):
    agent.cli("apply", "-f", "-", input=POLICY)
    before = {n: e["identity"] for n, e in eps(agent).items()}
    agent.stop(signal.SIGKILL)
    agent.start()
    assert {n: e["identity"] for n, e in eps(agent).items()} == before
    assert trace(agent, "--src", "xwing", "--dst", "deathstar-1", "--dport", "80/TCP")["verdict"] == "denied"
