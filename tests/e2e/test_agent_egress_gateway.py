"""The egress gateway through a live agent: an "external" host (its own netns, joined to the node's by a veth)
sees the egress IP as the source of selected endpoints' connections and the endpoint's own address for the
others; excluded CIDRs bypass the gateway; an HTTP rule on the policy allows GET and denies POST. The
datapath (sk_assign at the source's veth, ost_egress_gw) and the agent (egress IP as a node address) do
everything; no test scaffolding."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from tests.agentproc import REPO, AgentProcess, wait_for

pytestmark = pytest.mark.root

EXT = "10.232.9.10"            # inside the policy's destinationCIDRs
EXT_EXCLUDED = "10.232.9.200"  # inside its excludedCIDRs
EGRESS_IP = "10.232.8.100"     # not configured anywhere: the agent adds it to the node

ENDPOINTS = """
apiVersion: ostium.io/v1alpha1
kind: Endpoint
metadata: {name: client, labels: {app: client}}
---
apiVersion: ostium.io/v1alpha1
kind: Endpoint
metadata: {name: other, labels: {app: other}}
"""

POLICY = """
apiVersion: ostium.io/v1alpha1
kind: EgressGatewayPolicy
metadata: {name: egress-client}
spec:
  selectors: [{podSelector: {matchLabels: {app: client}}}]
  destinationCIDRs: [10.232.9.0/24]
  excludedCIDRs: [10.232.9.128/25]
  egressGateway: {egressIP: %s}
%s"""


@pytest.fixture
def setup():
    tag = uuid.uuid4().hex[:6]
    ext_ns, veth = f"ostt-ext-{tag}", f"egx{tag}"
    a = AgentProcess(pod_cidr="10.219.0.0/24", tag=tag)
    server = None
    try:
        subprocess.run(["ip", "netns", "add", ext_ns], check=True)
        a.start()
        for argv in (["link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ext_ns],
                     ["addr", "add", "10.232.0.1/30", "dev", veth], ["link", "set", veth, "up"],
                     ["route", "add", "10.232.9.0/24", "via", "10.232.0.2"]):
            a.node_exec("ip", *argv, check=True)
        for argv in (["link", "set", "lo", "up"], ["addr", "add", "10.232.0.2/30", "dev", "eth0"],
                     ["addr", "add", f"{EXT}/32", "dev", "lo"], ["addr", "add", f"{EXT_EXCLUDED}/32", "dev", "lo"],
                     ["link", "set", "eth0", "up"], ["route", "add", "default", "via", "10.232.0.1"]):
            subprocess.run(["ip", "-n", ext_ns, *argv], check=True)
        server = subprocess.Popen(["ip", "netns", "exec", ext_ns, sys.executable, "-m", "mesh.gateway.testing",
                                   "http", "external", "0.0.0.0", "80"], stdout=subprocess.PIPE, text=True, cwd=REPO)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        a.cli("apply", "-f", "-", input=ENDPOINTS)
        yield a
    finally:
        if server is not None:
            server.kill()
            server.wait()
        a.cleanup()
        subprocess.run(["ip", "netns", "del", ext_ns], check=False)


def curl(node, ep: str, url: str, *args: str) -> tuple[str, str]:
    r = node.ep_exec(ep, "curl", "-s", "--max-time", "3", "-w", "\n%{http_code}", *args, url)
    body, _, code = r.stdout.rpartition("\n")
    return code, body


def peer(node, ep: str, url: str, *args: str) -> str:
    code, body = curl(node, ep, url, *args)
    return json.loads(body)["peer"] if code == "200" else f"HTTP {code}: {body}"


def test_egress_gateway_source_address_exclusions_and_http_rules(setup):
    node = setup
    assert peer(node, "client", f"http://{EXT}/").startswith("10.219.0.")  # no policy yet: direct
    node.cli("apply", "-f", "-", input=POLICY % (EGRESS_IP, ""))
    wait_for(lambda: peer(node, "client", f"http://{EXT}/") == EGRESS_IP, 20,
             what="the external host to see the egress IP for the selected endpoint")
    st = node.cli_json("gateway", "status")
    assert st["egressRedirects"] and st["egressRedirects"][0]["egressIP"] == EGRESS_IP, st["egressRedirects"]
    assert f" {EGRESS_IP}/32 " in node.node_exec("ip", "-o", "-4", "addr", "show").stdout
    assert peer(node, "other", f"http://{EXT}/").startswith("10.219.0."), "an unselected endpoint goes direct"
    assert peer(node, "client", f"http://{EXT_EXCLUDED}/").startswith("10.219.0."), "excluded CIDR bypasses"
    assert curl(node, "client", f"http://{EXT}/", "-X", "POST")[0] == "200"  # no HTTP rules: anything goes

    # An HTTP rule on the policy: GET passes the egress gateway, POST is refused there.
    node.cli("apply", "-f", "-", input=POLICY % (EGRESS_IP, "  rules: {http: [{method: GET}]}"))
    wait_for(lambda: curl(node, "client", f"http://{EXT}/", "-X", "POST")[0] == "403", 20,
             what="POST denied by the egress gateway's HTTP rule")
    assert peer(node, "client", f"http://{EXT}/") == EGRESS_IP
    assert curl(node, "other", f"http://{EXT}/", "-X", "POST")[0] == "200"  # not selected: not policed

    # Deleting the policy: direct again, and the agent removes the egress IP it added.
    node.cli("delete", "-f", "-", input=POLICY % (EGRESS_IP, ""))
    wait_for(lambda: peer(node, "client", f"http://{EXT}/").startswith("10.219.0."), 20,
             what="direct connections after the policy is deleted")
    assert f" {EGRESS_IP}/32 " not in node.node_exec("ip", "-o", "-4", "addr", "show").stdout
