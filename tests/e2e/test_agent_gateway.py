"""The ingress gateway through a live agent: a Gateway API route to a Service, gateway traffic carrying the
reserved identity `ingress` into the backends' policies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.agentproc import AgentProcess, wait_for

pytestmark = pytest.mark.root
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "starwars"

GATEWAY = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  gatewayClassName: ostium
  listeners: [{name: http, port: 8080, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: deathstar}
spec:
  parentRefs: [{name: edge}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v1}}]
    backendRefs: [{name: deathstar, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /missing}}]
    backendRefs: [{name: no-such-service, port: 80}]
"""

ALLOW_INGRESS = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: from-ingress}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEntities: [ingress]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""


@pytest.fixture
def node():
    a = AgentProcess(pod_cidr="10.217.0.0/24")
    try:
        a.start()
        a.cli("apply", "-f", str(EXAMPLES / "starwars.yaml"))
        a.cli("apply", "-f", "-", input=GATEWAY)
        yield a
    finally:
        a.cleanup()


def get(node, path: str) -> tuple[str, str]:
    r = node.node_exec("curl", "-s", "--max-time", "3", "-w", "\n%{http_code}", f"http://127.0.0.1:8080{path}")
    body, _, code = r.stdout.rpartition("\n")
    return code, body


def test_route_serves_the_service_and_gateway_traffic_is_identity_ingress(node):
    code, body = wait_for(lambda: (lambda r: r if r[0] == "200" else None)(get(node, "/v1")), 20,
                          what="the gateway route to the deathstar")
    assert "Death Star" in body
    assert get(node, "/missing")[0] == "500"  # the spec's answer for a rule whose backend does not resolve
    st = node.cli_json("gateway", "status")
    route = next(o for o in st["objects"] if o["kind"] == "HTTPRoute")
    assert "BackendNotFound" in str(route)
    # an L3/L4 policy that admits only the Empire's ships: the gateway (identity ingress) is dropped ...
    node.cli("apply", "-f", str(EXAMPLES / "policy-l3l4.yaml"))
    wait_for(lambda: get(node, "/v1")[0] == "503", 15, what="gateway traffic dropped by policy")
    out = node.cli("observe", "--verdict", "DROPPED", "--last", "20", "-o", "json").stdout
    drops = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert any(f["source"].get("identity") == 8 for f in drops)
    # ... until a rule admits the entity ingress
    node.cli("apply", "-f", "-", input=ALLOW_INGRESS)
    wait_for(lambda: get(node, "/v1")[0] == "200", 15, what="gateway traffic admitted by fromEntities: ingress")
