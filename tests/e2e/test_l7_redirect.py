"""The whole node with L7 policy: agent + eBPF datapath + Envoy. The Star Wars demo's L7 rule is enforced by
Envoy on flows the datapath hands to it with bpf_sk_assign (through the VIP and to a pod IP), egress L7 rules on
the source work, path tricks never bypass, a live policy change keeps an established connection, and with Envoy
dead redirected flows are refused at once (never forwarded unenforced) while L3/L4 traffic keeps flowing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.agentproc import AgentProcess, wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "starwars"
VIP = "10.96.0.80"

PROBE = """apiVersion: ostium.io/v1alpha1
kind: Endpoint
metadata:
  name: probe
  labels: {app: probe}
spec:
  command: ["python3", "-m", "http.server", "8080", "--bind", "0.0.0.0"]
  ports: [{name: http, port: 8080}]
"""

# The L7 rule of policy-l7.yaml plus GET /v1: the live-change step.
POLICY_L7_PLUS_GET = (EXAMPLES / "policy-l7.yaml").read_text() + """        - method: "GET"
          path: "/v1"
"""

EGRESS_L7 = """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: tiefighter-egress}
spec:
  endpointSelector: {matchLabels: {class: tiefighter}}
  egress:
  - toEndpoints: [{matchLabels: {class: deathstar}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: /v1}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: xwing-egress}
spec:
  endpointSelector: {matchLabels: {class: xwing}}
  egress:
  - toEndpoints: [{matchLabels: {class: deathstar}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{}]
"""

# A persistent HTTP/1.1 connection from an endpoint: one request per stdin line ("METHOD PATH"), one JSON
# answer per request on stdout (status, body, the connection's local port); "closed" when the peer hung up.
KEEPALIVE = r"""
import json, socket, sys
s = socket.create_connection((sys.argv[1], 80), timeout=5)
f = s.makefile("rb")
for line in sys.stdin:
    method, path = line.split()
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 0\r\n\r\n".encode())
    status = f.readline()
    if not status:
        print(json.dumps({"closed": True}), flush=True); break
    length = 0
    while True:
        h = f.readline()
        if h in (b"\r\n", b""):
            break
        if h.lower().startswith(b"content-length:"):
            length = int(h.split(b":")[1])
    body = f.read(length).decode()
    print(json.dumps({"status": int(status.split()[1]), "body": body, "port": s.getsockname()[1]}), flush=True)
"""

# Connects over and over (fresh connections) while Envoy is killed and restarted: each line is
# "<seconds taken> <outcome>" for a redirected request and for an L3/L4-only one.
HAMMER = r"""
import errno, socket, sys, time
vip, probe, until = sys.argv[1], sys.argv[2], time.monotonic() + float(sys.argv[3])
def once(host, port, req):
    t0 = time.monotonic()
    try:
        s = socket.create_connection((host, port), timeout=3)
        s.settimeout(3)
        s.sendall(req)
        data = s.recv(200)
        s.close()
        out = data.split(b"\r\n")[0].decode(errors="replace") if data else "closed"
        if b"exploded" in data:
            out = "BYPASS"
    except socket.timeout:
        out = "timeout"
    except OSError as e:
        out = errno.errorcode.get(e.errno, str(e))
    return f"{time.monotonic() - t0:.3f} {out}"
while time.monotonic() < until:
    print("l7", once(vip, 80, b"PUT /v1/exhaust-port HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n\r\n"), flush=True)
    print("l4", once(probe, 8080, b"GET / HTTP/1.0\r\n\r\n"), flush=True)
    time.sleep(0.01)
"""


@pytest.fixture(scope="module")
def node():
    a = AgentProcess(pod_cidr="10.217.0.0/24")
    try:
        a.start()
        a.cli("apply", "-f", str(EXAMPLES / "starwars.yaml"))
        a.cli("apply", "-f", "-", input=PROBE)
        wait_for(lambda: curl(a, "tiefighter", f"http://{VIP}/v1")[0] == 200, 15, what="deathstar via the VIP")
        apply_and_wait(a, (EXAMPLES / "policy-l7.yaml").read_text())
        yield a
    finally:
        a.cleanup()


def curl(a: AgentProcess, ep: str, url: str, method: str = "GET", max_time: float = 2,
         extra: tuple[str, ...] = ()) -> tuple[int, str]:
    """(HTTP status, body); status 0 with curl's exit code in the body when no answer came."""
    r = a.raw_exec(f"default.{ep}", "curl", "-s", "--path-as-is", "--max-time", str(max_time), "-X", method,
                   "-w", "\n%{http_code}", *extra, url)
    body, _, code = r.stdout.rpartition("\n")
    return (int(code) if r.returncode == 0 else 0), (body if r.returncode == 0 else f"curl exit {r.returncode}")


def apply_and_wait(a: AgentProcess, manifest: str) -> None:
    a.cli("apply", "-f", "-", input=manifest)
    def applied():
        comps = a.cli_json("status")["components"]
        rev = comps["policy"]["revision"]
        return comps["datapath"]["applied_policy_revision"] == rev and \
            comps["envoy"]["applied_policy_revision"] == rev and comps["envoy"]["xds_pending"] == 0
    wait_for(applied, 15, what="policy applied to the datapath and acknowledged by Envoy")


def ip_of(a: AgentProcess, name: str) -> str:
    return next(e["ip"] for e in a.cli_json("endpoint", "list") if e["name"] == name)


def test_star_wars_l7_rule_through_the_vip_and_to_a_pod_ip(node):
    records = node.cli_json("status")["components"]["envoy"]["access_log_records"]
    for target in (VIP, ip_of(node, "deathstar-1"), ip_of(node, "deathstar-2")):
        assert curl(node, "tiefighter", f"http://{target}/v1/request-landing", "POST") == (200, "Ship landed\n")
        assert curl(node, "tiefighter", f"http://{target}/v1/exhaust-port", "PUT") == (403, "Access denied\n")
        # the alliance is dropped at L3/L4: no answer at all, not even Envoy's 403
        assert curl(node, "xwing", f"http://{target}/v1/request-landing", "POST", max_time=1) == (0, "curl exit 28")
    # Envoy's access log reaches the agent over ALS
    wait_for(lambda: node.cli_json("status")["components"]["envoy"]["access_log_records"] >= records + 6, 10,
             what="access-log records from Envoy")
    dp = node.cli_json("status")["components"]["datapath"]["l7_redirect"]
    assert dp["reject"] == "nft-tcp-reset" and dp["proxy_ports"]["http-ingress"] == 15001


@pytest.mark.parametrize("path", [
    "/v1/request-landing/../exhaust-port",
    "/v1/request-landing/./../exhaust-port",
    "//v1//exhaust-port",
    "/v1/request-landing/%2e%2e/exhaust-port",
    "/v1/request-landing/%2E%2E/exhaust-port",
    "/v1/request-landing%2f..%2fexhaust-port",
    "/v1/request-landing%2F..%2Fexhaust-port",
    "/v1/request-landing/..%5cexhaust-port",
    "/V1/REQUEST-LANDING",
    "/v1/Request-Landing",
    "/v1/request-landing.",
    "/v1/request-landingX",
])
def test_path_tricks_never_reach_the_backend(node, path):
    status, body = curl(node, "tiefighter", f"http://{VIP}{path}", "POST")
    # Envoy answers itself (403 denied, 400 rejected, 307 to the unescaped path); the backend never does
    assert status in (400, 403, 307), (status, body)
    assert "Ship landed" not in body and "Not found" not in body


def test_slash_merging_still_allows_the_allowed_path(node):
    assert curl(node, "tiefighter", f"http://{VIP}//v1//request-landing", "POST") == (200, "Ship landed\n")


def test_live_policy_change_keeps_an_established_connection(node):
    p = subprocess.Popen(node.raw_argv("default.tiefighter", "python3", "-c", KEEPALIVE, VIP),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(method: str, path: str) -> dict:
        p.stdin.write(f"{method} {path}\n")
        p.stdin.flush()
        return json.loads(p.stdout.readline())
    try:
        first = ask("GET", "/v1")
        assert first["status"] == 403 and first["body"].strip() == "Access denied"
        assert ask("POST", "/v1/request-landing")["status"] == 200
        apply_and_wait(node, POLICY_L7_PLUS_GET)
        # the next request on the same connection sees the new rules (poll: Envoy applies RDS async)
        got = wait_for(lambda: (r := ask("GET", "/v1")).get("closed") or r["status"] == 200 and r, 10,
                       what="GET /v1 allowed on the kept connection")
        assert got is not True, "the established connection was closed by the policy change"
        assert got["port"] == first["port"] and got["body"].startswith("{'name': 'Death Star'")
        assert ask("PUT", "/v1/exhaust-port")["status"] == 403
    finally:
        p.stdin.close()
        p.kill()
        p.wait(5)
        apply_and_wait(node, (EXAMPLES / "policy-l7.yaml").read_text())


def test_egress_l7_rules_on_the_source(node):
    # deathstar: L3/L4 only (empire on 80); tiefighter: egress L7 (GET /v1 only); xwing: egress L7 allowing all,
    # which must not get it past deathstar's L3/L4 ingress (checked on the xwing's own veth).
    apply_and_wait(node, (EXAMPLES / "policy-l3l4.yaml").read_text() + "---\n" + EGRESS_L7)
    try:
        assert curl(node, "tiefighter", f"http://{VIP}/v1")[0] == 200
        assert curl(node, "tiefighter", f"http://{VIP}/v1/request-landing", "POST") == (403, "Access denied\n")
        assert curl(node, "xwing", f"http://{VIP}/v1/request-landing", "POST", max_time=1) == (0, "curl exit 28")
    finally:
        node.cli("policy", "delete", "-f", "-", input=EGRESS_L7)
        apply_and_wait(node, (EXAMPLES / "policy-l7.yaml").read_text())
    assert curl(node, "tiefighter", f"http://{VIP}/v1/exhaust-port", "PUT") == (403, "Access denied\n")


def test_envoy_killed_fails_closed_then_enforces_again(node):
    probe = ip_of(node, "probe")
    env = node.cli_json("status")["components"]["envoy"]
    pid, restarts = env["pid"], env["restarts"]
    hammer = subprocess.Popen(node.raw_argv("default.tiefighter", "python3", "-c", HAMMER, VIP, probe, "25"),
                              stdout=subprocess.PIPE, text=True)
    try:
        # hammering before the kill: enforced (403) and the L3/L4 probe answers
        first = [hammer.stdout.readline().split() for _ in range(4)]
        assert {(x[0], x[2], x[3]) for x in first} == {("l7", "HTTP/1.1", "403"), ("l4", "HTTP/1.0", "200")}, first
        os.kill(pid, signal.SIGKILL)
        lines: list[list[str]] = []
        refused_at = None
        for raw in hammer.stdout:
            kind, took, outcome = raw.split(maxsplit=2)
            lines.append([kind, float(took), outcome.strip()])
            if kind == "l7" and outcome.startswith(("ECONNREFUSED", "ECONNRESET", "closed")):
                refused_at = refused_at or len(lines)
            if refused_at and kind == "l7" and outcome.startswith("HTTP/1.1 403"):
                break   # back: enforcing again
    finally:
        hammer.kill()
        hammer.wait(5)
    l7 = [x for x in lines if x[0] == "l7"]
    l4 = [x for x in lines if x[0] == "l4"]
    assert refused_at is not None, f"no refused connection seen while Envoy was down: {lines[:20]}"
    assert [x for x in l7 if x[2] == "ECONNREFUSED"], "new connections were not refused with a reset"
    assert not [x for x in l7 if x[2] == "BYPASS" or x[2].startswith("HTTP/1.0")], "a request reached deathstar"
    assert not [x for x in l7 if x[2] == "timeout"], "a redirected connection hung instead of being refused"
    assert max(x[1] for x in l7) < 1.5
    assert l4 and all(x[2].startswith("HTTP/1.0 200") for x in l4), "L3/L4 traffic was disturbed"
    assert l7[-1][2].startswith("HTTP/1.1 403")
    env = node.cli_json("status")["components"]["envoy"]
    assert env["pid"] != pid and env["restarts"] == restarts + 1 and env["state"] == "running"
    assert curl(node, "tiefighter", f"http://{VIP}/v1/request-landing", "POST") == (200, "Ship landed\n")
    dp = node.cli_json("status")["components"]["datapath"]["l7_redirect"]
    assert dp["refused_flows"] > 0
