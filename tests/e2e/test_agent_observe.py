"""Observability through a live agent: real drops and traces become flows with labels; filters; metrics."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.agentproc import AgentProcess, wait_for

pytestmark = pytest.mark.root
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "starwars"
VIP = "10.96.0.80"


@pytest.fixture
def node():
    a = AgentProcess(pod_cidr="10.216.0.0/24")
    try:
        a.start()
        a.cli("apply", "-f", str(EXAMPLES / "starwars.yaml"))
        a.cli("apply", "-f", str(EXAMPLES / "policy-l3l4.yaml"))
        wait_for(lambda: a.raw_exec("default.tiefighter", "curl", "-s", "--max-time", "2",
                                    f"http://{VIP}/v1").returncode == 0, 15, what="deathstar via the VIP")
        yield a
    finally:
        a.cleanup()


def observe(node, *args):
    return [json.loads(l) for l in node.cli("observe", *args, "-o", "json").stdout.splitlines() if l.strip()]


def test_drops_and_traces_become_flows_with_both_sides_labels_and_filters_select_exactly(node):
    node.raw_exec("default.xwing", "curl", "-s", "--max-time", "1", f"http://{VIP}/v1")
    drops = wait_for(lambda: observe(node, "--verdict", "DROPPED", "--last", "50"), 10, what="drop flows")
    assert all(f["verdict"] == "DROPPED" for f in drops)
    d = drops[-1]
    assert d["source"]["pod_name"] == "xwing" and "k8s:org=alliance" in d["source"]["labels"]
    assert d["destination"]["pod_name"].startswith("deathstar") and "k8s:class=deathstar" in d["destination"]["labels"]
    assert d["drop_reason_desc"].startswith("POLICY")
    fwd = observe(node, "--from-label", "class=tiefighter", "--last", "50")
    assert fwd and all("k8s:class=tiefighter" in f["source"]["labels"] for f in fwd)
    assert all(f["verdict"] != "DROPPED" for f in fwd)
    target = d["destination"]["pod_name"]  # the VIP picked one of the two backends
    to_one = observe(node, "--to-pod", f"default/{target}", "--last", "100")
    assert to_one and all(f["destination"]["pod_name"] == target for f in to_one)
    r = node.cli("observe", "--http-status", "abc", check=False)
    assert r.returncode == 2 and "--http-status" in r.stderr


def test_metrics_scrape_passes_promtool_and_counts_drops(node):
    node.raw_exec("default.xwing", "curl", "-s", "--max-time", "1", f"http://{VIP}/v1")
    def scrape():
        r = node.node_exec("curl", "-s", "--max-time", "2", "http://127.0.0.1:9962/metrics")
        return r.stdout if 'ostium_drops_total{direction="ingress"' in r.stdout else None
    text = wait_for(scrape, 10, what="the drop counter on /metrics")
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    for name in ("ostium_endpoints 4", "ostium_policy_revision", "ostium_bpf_map_entries", "ostium_envoy_up",
                 "ostium_flows_processed_total"):
        assert name in text, name
