"""gRPC through the agent for real: a grpcio server in an endpoint behind a VIP, an L7 policy naming one gRPC
method, grpcurl and a Python grpcio client in another endpoint. The allowed method answers, the other one
gets PERMISSION_DENIED (status 7) from Envoy; a peer outside the policy is dropped at L3/L4."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.agentproc import REPO, AgentProcess, wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(150)]

VIP = "10.96.0.51"
PORT = 50051
PYTHON = sys.executable  # the endpoints run commands with this interpreter's packages (grpcio)
GRPCURL = str(Path(sys.executable).parent / "grpcurl")
EMPIRE = REPO / "examples" / "grpc" / "empire.py"
SERVICE = "ostium.demo.Empire"

MANIFEST = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: default}}
---
apiVersion: ostium.io/v1alpha1
kind: Endpoint
metadata:
  name: empire-grpc
  labels: {{org: empire, app: empire-grpc}}
spec:
  command: ["{PYTHON}", "{EMPIRE}", "serve", "--port", "{PORT}"]
  ports: [{{name: grpc, port: {PORT}}}]
---
apiVersion: ostium.io/v1alpha1
kind: Endpoint
metadata:
  name: tiefighter
  labels: {{org: empire, class: tiefighter}}
---
apiVersion: ostium.io/v1alpha1
kind: Endpoint
metadata:
  name: xwing
  labels: {{org: alliance, class: xwing}}
---
apiVersion: v1
kind: Service
metadata: {{name: empire}}
spec:
  clusterIP: {VIP}
  selector: {{app: empire-grpc}}
  ports: [{{name: grpc, port: {PORT}, targetPort: {PORT}, protocol: TCP}}]
"""

POLICY = f"""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: empire-grpc}}
spec:
  endpointSelector:
    matchLabels: {{app: empire-grpc}}
  ingress:
  - fromEndpoints:
    - matchLabels: {{org: empire}}
    toPorts:
    - ports: [{{port: "{PORT}", protocol: TCP}}]
      rules:
        http:
        - method: POST
          path: /{SERVICE}/RequestLanding
"""


def py_call(a: AgentProcess, ship: str, method: str, timeout: float = 3) -> tuple[int, str]:
    """(gRPC status code, reply or details) of one call from endpoint `ship`; -1 when the client failed."""
    r = a.raw_exec(f"default.{ship}", PYTHON, str(EMPIRE), "call", f"{VIP}:{PORT}", method, "--ship", ship,
                   "--timeout", str(timeout), timeout=timeout + 20)
    code, _, text = r.stdout.strip().partition(" ")
    return (int(code), text) if code.lstrip("-").isdigit() else (-1, r.stdout + r.stderr)


def grpcurl(a: AgentProcess, ship: str, method: str) -> tuple[int, str]:
    r = a.raw_exec(f"default.{ship}", GRPCURL, "-plaintext", "-max-time", "3",
                   "-import-path", str(EMPIRE.parent), "-proto", "empire.proto",
                   "-d", json.dumps({"ship": ship}), f"{VIP}:{PORT}", f"{SERVICE}/{method}", timeout=30)
    return r.returncode, r.stdout + r.stderr


@pytest.fixture(scope="module")
def node():
    a = AgentProcess(pod_cidr="10.217.0.0/24")
    try:
        a.start()
        a.cli("apply", "-f", "-", input=MANIFEST)
        wait_for(lambda: py_call(a, "tiefighter", "RequestLanding", 1)[0] == 0, 30,
                 what="the gRPC server answering on its VIP")
        yield a
    finally:
        a.cleanup()


@pytest.fixture(scope="module")
def enforced(node):
    node.cli("apply", "-f", "-", input=POLICY)

    def applied():
        st = node.cli_json("status")["components"]
        return st["envoy"]["applied_policy_revision"] == st["policy"]["revision"] and not st["envoy"]["xds_pending"]
    wait_for(applied, 15, what="Envoy to acknowledge the gRPC policy")
    # Acknowledged by Envoy; poll until the flow is redirected end to end.
    wait_for(lambda: py_call(node, "tiefighter", "ExhaustPort", 2)[0] == 7, 20,
             what="ExhaustPort to be denied by Envoy")
    return node


def test_without_policy_both_methods_answer(node):
    # (runs first: the module's policy is applied by the `enforced` fixture of the later tests)
    assert py_call(node, "tiefighter", "RequestLanding") == (0, "Ship landed: tiefighter")
    assert py_call(node, "xwing", "ExhaustPort")[0] == 0
    rc, out = grpcurl(node, "tiefighter", "ExhaustPort")
    assert rc == 0 and "Panic: deathstar exploded" in out, out


def test_python_client_allowed_method_ok_other_method_permission_denied(enforced):
    assert py_call(enforced, "tiefighter", "RequestLanding") == (0, "Ship landed: tiefighter")
    code, details = py_call(enforced, "tiefighter", "ExhaustPort")
    assert code == 7, details  # PERMISSION_DENIED, from Envoy: the server never sees the call
    # several calls on one channel keep their own verdicts (HTTP/2 streams on one connection)
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import grpc, empire\n"
        f"ch = grpc.insecure_channel('{VIP}:{PORT}')\n"
        "out = []\n"
        "for m in ['RequestLanding', 'ExhaustPort', 'RequestLanding', 'ExhaustPort']:\n"
        f"    stub = ch.unary_unary('/{SERVICE}/' + m, request_serializer=empire.encode,"
        " response_deserializer=empire.decode)\n"
        "    try:\n"
        "        stub('tie', timeout=3); out.append(0)\n"
        "    except grpc.RpcError as e:\n"
        "        out.append(e.code().value[0])\n"
        "print(out)\n")
    r = enforced.raw_exec("default.tiefighter", PYTHON, "-c", script, str(EMPIRE.parent))
    assert r.stdout.strip() == "[0, 7, 0, 7]", r.stdout + r.stderr


def test_grpcurl_allowed_method_ok_other_method_permission_denied(enforced):
    rc, out = grpcurl(enforced, "tiefighter", "RequestLanding")
    assert rc == 0 and '"message": "Ship landed: tiefighter"' in out, out
    rc, out = grpcurl(enforced, "tiefighter", "ExhaustPort")
    assert rc != 0 and "Code: PermissionDenied" in out, out


def test_peer_outside_the_policy_is_dropped_at_l3l4(enforced):
    code, _ = py_call(enforced, "xwing", "RequestLanding", timeout=1)
    assert code == 4  # DEADLINE_EXCEEDED: its SYNs are dropped, no gRPC status ever comes back


def test_grpc_calls_become_l7_flows_with_their_grpc_status(enforced):
    assert py_call(enforced, "tiefighter", "ExhaustPort")[0] == 7
    assert py_call(enforced, "tiefighter", "RequestLanding")[0] == 0

    def last_flow(method: str):
        out = enforced.cli("observe", "--type", "l7", "--http-path", f"/{SERVICE}/{method}", "--last", "1",
                           "-o", "json").stdout.strip()
        return json.loads(out.splitlines()[-1]) if out else None
    denied = wait_for(lambda: last_flow("ExhaustPort"), 10, what="the denied call as a flow")
    assert denied["verdict"] == "DROPPED" and denied["drop_reason_desc"] == "L7_POLICY_DENIED"
    assert denied["l7"]["http"]["grpc_status"] == 7 and denied["l7"]["http"]["protocol"] == "HTTP/2"
    assert denied["source"]["pod_name"] == "tiefighter" and denied["destination"]["pod_name"] == "empire-grpc"
    allowed = wait_for(lambda: (f := last_flow("RequestLanding")) and f["verdict"] == "FORWARDED" and f, 10,
                       what="the allowed call as a flow")
    assert allowed["l7"]["http"]["grpc_status"] == 0 and allowed["l7"]["http"]["code"] == 200
