"""`ostium observe` as a user runs it, against the flow API served on a unix socket (the agent's
route table from mesh.flows.api.routes) with an observer fed the Star Wars scenario."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from mesh.api.server import make_app
from mesh.flows import synthetic
from mesh.flows.api import routes
from mesh.flows.observer import Observer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def agent(tmp_path):
    obs = Observer(capacity=50, enricher=synthetic.enricher())
    synthetic.star_wars(obs)
    server = synthetic.ThreadedApp(make_app(routes(obs)), unix_path=str(tmp_path / "ostium.sock"))
    server.start()
    try:
        yield server, obs
    finally:
        server.stop()


def ostium(sock: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mesh.cli.main", "--socket", sock, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_compact_shows_identities_verdicts_and_http(agent):
    server, _ = agent
    r = ostium(server.unix_path, "observe", "--from-pod", "default/xwing")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 4
    assert any("default/xwing-7d9f8b6c4-abcde:41000 (ID:257) -> default/deathstar-6fb5694d-q2x7z:80 (ID:256) "
               "http-request DROPPED (HTTP/1.1 PUT http://deathstar.default.svc.cluster.local/v1/exhaust-port)"
               in line for line in lines), lines
    assert any(":22 (ID:256) Policy denied DROPPED (TCP Flags: SYN)" in line for line in lines), lines


def test_json_and_filters(agent):
    server, _ = agent
    r = ostium(server.unix_path, "observe", "--protocol", "kafka", "--verdict", "DROPPED", "-o", "json")
    assert r.returncode == 0, r.stderr
    flows = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(flows) == 1
    f = flows[0]
    assert f["l7"]["kafka"]["topic"] == "empire-announce" and f["l7"]["kafka"]["api_key"] == "produce"
    assert f["source"]["pod_name"].startswith("outpost") and "k8s:app=outpost" in f["source"]["labels"]
    r = ostium(server.unix_path, "observe", "--http-status", "4+", "-o", "jsonpb")
    (only,) = [json.loads(x) for x in r.stdout.splitlines()]
    assert only["flow"]["l7"]["http"]["code"] == 403 and only["node_name"] == "node-1"
    r = ostium(server.unix_path, "observe", "--from-label", "org=empire", "--to-label", "app=deathstar",
               "-o", "table")
    rows = r.stdout.splitlines()
    assert rows[0].split() == ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
    assert len(rows) == 3 and all("tiefighter" in x for x in rows[1:])


def test_bad_filter_is_a_clear_error(agent):
    server, _ = agent
    r = ostium(server.unix_path, "observe", "--http-status", "6x")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: --http-status: '6x' is not an HTTP status")
    assert r.stdout == ""


def test_agent_also_rejects_bad_filters(agent):
    from mesh.api.client import APIClient
    from mesh.errors import ValidationError
    server, _ = agent
    with pytest.raises(ValidationError, match="--from-label"):
        APIClient(server.unix_path).get("/v1/flows", {"from-label": "a b"})


def test_ring_overwrite_is_reported(agent):
    server, obs = agent
    server.call(synthetic.star_wars, obs, 10)        # 100 more flows into a 50-flow ring
    r = ostium(server.unix_path, "observe", "--last", "80")
    assert r.returncode == 0
    assert len(r.stdout.splitlines()) == 50
    assert "has overwritten 60 older flows" in r.stderr


def test_follow_streams_new_flows(agent):
    server, obs = agent
    proc = subprocess.Popen([sys.executable, "-m", "mesh.cli.main", "--socket", server.unix_path, "observe",
                             "-f", "--type", "drop", "-o", "json"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while obs.subscribers == 0:
            assert time.monotonic() < deadline, "observe -f never subscribed"
            time.sleep(0.02)
        server.call(obs.ingest_datapath_raw, synthetic.raw_event(257, 256, 443, drop=True, sport=45000))
        got: list[str] = []
        t = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)
        t.start()
        t.join(10)
        assert got, "no flow arrived on the follow stream"
        flow = json.loads(got[0])
        assert flow["verdict"] == "DROPPED" and flow["l4"]["TCP"]["destination_port"] == 443
    finally:
        proc.terminate()
        proc.wait(5)
    deadline = time.monotonic() + 10
    while obs.subscribers:   # the agent notices the client left (write error or heartbeat)
        assert time.monotonic() < deadline, "follower not cleaned up after the client left"
        time.sleep(0.05)


async def test_serve_http_on_loopback_and_port_in_use():
    import aiohttp
    from mesh.errors import ConfigError
    from mesh.flows.api import make_http_app, serve_http
    from mesh.flows.metrics import MetricsRegistry
    obs = Observer(capacity=10, enricher=synthetic.enricher())
    synthetic.star_wars(obs)
    runner, port = await serve_http(make_http_app(obs, MetricsRegistry(obs)), port=0)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/ui/") as r:
                assert r.status == 200 and "Service map" in await r.text()
            async with s.get(f"http://127.0.0.1:{port}/v1/flows/status") as r:
                assert (await r.json())["stored"] == 10
            async with s.get(f"http://127.0.0.1:{port}/v1/flows", headers={"Host": "evil.example:80"}) as r:
                assert r.status == 403          # DNS rebinding: another site's name for us
            async with s.get(f"http://127.0.0.1:{port}/metrics", headers={"Host": f"localhost:{port}"}) as r:
                assert r.status == 200 and "ostium_flows_ring_stored 10.0" in await r.text()
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            await serve_http(make_http_app(obs), port=port)
    finally:
        await runner.cleanup()


async def test_pump_feeds_decoded_events():
    from bpf.maps import Event
    from mesh.flows.observer import pump_datapath_events
    obs = Observer(capacity=10, enricher=synthetic.enricher())

    async def events():
        for i in range(3):
            yield Event.unpack(synthetic.raw_event(257, 256, 80, sport=1000 + i))

    await pump_datapath_events(obs, events())
    flows, _ = obs.query()
    assert [f.source.port for f in flows] == [1000, 1001, 1002]
    assert flows[0].source.pod_name.startswith("xwing")


async def test_flows_service_lifecycle(tmp_path):
    import aiohttp
    from mesh.flows.service import FlowsService
    svc = FlowsService(enricher=synthetic.enricher(), capacity=100, http_port=0,
                       export_path=str(tmp_path / "flows.jsonl"))
    await svc.start()
    port = svc.http_port
    try:
        synthetic.star_wars(svc.observer)
        svc.metrics.set_gauge_source("endpoints", lambda: 6)
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                text = await r.text()
        assert "ostium_endpoints 6.0" in text and 'ostium_kafka_requests_total{api_key="produce"' in text
        assert svc.status()["http"] == f"http://127.0.0.1:{port}/"
        assert {"/v1/flows", "/metrics", "/ui/"} <= {r.path for r in svc.routes()}
    finally:
        await svc.stop()
    lines = (tmp_path / "flows.jsonl").read_text().splitlines()
    assert len(lines) == 10 and json.loads(lines[-1])["IP"]["source"] == "192.0.2.1"
    with pytest.raises(OSError):      # the listener is gone
        socket_ = __import__("socket").create_connection(("127.0.0.1", port), timeout=2)
        socket_.close()
