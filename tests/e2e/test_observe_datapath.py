"""Real kernel drop events (the eBPF datapath's ring buffer) become flows with both identities'
labels, and `ostium observe` shows them by label."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mesh.api.server import make_app
from mesh.flows import synthetic
from mesh.flows.api import routes
from mesh.flows.model import Enricher
from mesh.flows.observer import Observer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LABELS = {3001: {"app": "xwing", "io.kubernetes.pod.namespace": "default"},
          2001: {"app": "deathstar", "io.kubernetes.pod.namespace": "default"}}
PODS = {"10.252.0.7": ("default", "xwing-1", {"app": "xwing"}),
        "10.251.0.1": ("default", "deathstar-1", {"app": "deathstar"})}


@pytest.fixture
def kernel_source():
    with synthetic.KernelDropSource(src_ip="10.252.0.7", src_identity=3001, dport=8080) as src:
        yield src


@pytest.mark.root
def test_kernel_drops_arrive_with_both_identities_labels(kernel_source, tmp_path):
    obs = Observer(capacity=100, enricher=Enricher(identity_labels=LABELS.get, endpoint_by_ip=PODS.get,
                                                   node_name="node-1"))
    kernel_source.fire(3)
    raws = kernel_source.read()
    assert len(raws) == 3
    for raw in raws:
        obs.ingest_datapath_raw(raw)
    (f, *_), _ = obs.query()
    assert f.verdict.value == "DROPPED" and f.drop_reason_desc == "POLICY_DENIED"
    assert (f.source.identity, f.destination.identity) == (3001, 2001)
    assert "app=xwing" in f.source.labels and "app=deathstar" in f.destination.labels
    assert (f.source.ip, f.destination.ip, f.destination.port) == ("10.252.0.7", "10.251.0.1", 8080)
    assert f.tcp_flags == ("SYN",) and f.destination.endpoint_id == 1

    server = synthetic.ThreadedApp(make_app(routes(obs)), unix_path=str(tmp_path / "ostium.sock"))
    server.start()
    try:
        r = subprocess.run([sys.executable, "-m", "mesh.cli.main", "--socket", server.unix_path, "observe",
                            "--from-label", "app=xwing", "--verdict", "DROPPED", "-o", "json"], cwd=ROOT,
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        flows = [json.loads(x) for x in r.stdout.splitlines()]
        assert len(flows) == 3
        assert flows[0]["source"]["pod_name"] == "xwing-1" and flows[0]["destination"]["pod_name"] == "deathstar-1"
        r = subprocess.run([sys.executable, "-m", "mesh.cli.main", "--socket", server.unix_path, "observe",
                            "--to-label", "app=xwing"], cwd=ROOT, capture_output=True, text=True, timeout=20)
        assert r.returncode == 0 and r.stdout == ""
    finally:
        server.stop()
