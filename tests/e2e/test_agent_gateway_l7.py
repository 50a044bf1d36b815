"""The ingress gateway through a live agent into a backend under an ingress L7 rule: the gateway's upstream
(identity `ingress`, from the ingress source address) goes through the L7 listener, so the backend's HTTP
rules apply to it; no test scaffolding, only the agent's datapath."""

from __future__ import annotations

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
"""

L7_FROM_INGRESS = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ingress-l7}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEntities: [ingress]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/v1"}]
"""


@pytest.fixture
def node():
    a = AgentProcess(pod_cidr="10.218.0.0/24")
    try:
        a.start()
        a.cli("apply", "-f", str(EXAMPLES / "starwars.yaml"))
        a.cli("apply", "-f", "-", input=GATEWAY)
        yield a
    finally:
        a.cleanup()


def request(node, method: str, path: str) -> tuple[str, str]:
    r = node.node_exec("curl", "-s", "--max-time", "3", "-X", method, "-w", "\n%{http_code}",
                       f"http://127.0.0.1:8080{path}")
    body, _, code = r.stdout.rpartition("\n")
    return code, body


def test_backend_ingress_l7_rules_apply_to_gateway_traffic(node):
    wait_for(lambda: request(node, "GET", "/v1")[0] == "200", 20, what="the gateway route to the deathstar")
    assert request(node, "PUT", "/v1/exhaust-port")[0] != "403"  # no L7 rule yet: the backend answers
    node.cli("apply", "-f", "-", input=L7_FROM_INGRESS)
    # The backend's HTTP rules now decide for identity ingress: PUT is refused by the L7 proxy ...
    wait_for(lambda: request(node, "PUT", "/v1/exhaust-port")[0] == "403", 20,
             what="PUT through the gateway denied by the backend's L7 rule")
    # ... while GET /v1 passes. The gateway's pooled connections opened before the rule bypassed the
    # proxy: the agent closes them when the redirect appears, so after the first answer through the proxy
    # every request is served (no 503 from a stale upstream connection).
    wait_for(lambda: request(node, "GET", "/v1")[0] == "200", 10, what="GET through the L7 proxy")
    for _ in range(6):
        code, body = request(node, "GET", "/v1")
        assert code == "200" and "Death Star" in body, (code, body)
        assert request(node, "PUT", "/v1/exhaust-port")[0] == "403"
    rules = node.node_exec("nft", "list", "table", "ip", "ostium_gw").stdout
    assert "redirect to :" in rules, rules
    # ... and removing the rule takes the gateway's traffic off the proxy again.
    node.cli("delete", "-f", "-", input=L7_FROM_INGRESS)
    wait_for(lambda: request(node, "PUT", "/v1/exhaust-port")[0] not in ("403", "000"), 20,
             what="PUT allowed again after the L7 rule is deleted")
