"""L7Proxy, the composition the agent uses: start, apply policy, status, bad input, stop."""

from __future__ import annotations

import pytest

from mesh.errors import ValidationError
from xdsserver.envoy import EnvoyError
from xdsserver.proxy import (STATUS_COLUMNS, L7Proxy, ProxyConfig, handle_proxy_status,
                             status_rows)
from xdsserver.translate import Direction, HTTPRule, PeerRule, PortPolicy, ProxyOptions
from xdsserver.testing import curl, free_port, http_backend, wait_port_open

pytestmark = pytest.mark.timeout(60)


async def test_apply_status_and_records(tmp_path):
    port = free_port()
    records = []
    with http_backend() as backend:
        proxy = L7Proxy(ProxyConfig(tmp_path, options=ProxyOptions(
            transparent=False, static_upstream=("127.0.0.1", backend.server_address[1]))),
            on_record=records.append)
        try:
            await proxy.start()
            st = proxy.status()
            assert st["envoy"]["state"] == "running" and st["xds"]["mode"] == "delta"
            pp = PortPolicy("127.0.0.1", Direction.INGRESS, port, port,
                            (PeerRule(frozenset({7}), (HTTPRule(method="GET"),)),))
            assert await proxy.apply([pp], {7: ["127.0.0.1"]}) == []
            await wait_port_open(port)
            assert (await curl(f"http://127.0.0.1:{port}/")).status == 200
            before = proxy.cache.get_snapshot("ostium")
            # Bad input: a clear error, and nothing changes.
            bad = PortPolicy("not-an-ip", Direction.INGRESS, port, port, ())
            with pytest.raises(ValidationError, match="ports\\[0\\].endpoint_ip"):
                await proxy.apply([bad], {})
            assert proxy.cache.get_snapshot("ostium") is before
            st = proxy.status()
            node = st["xds"]["nodes"][0]
            assert node["nacked"] == 0 and node["acked"] == len(node["resources"]) == 3
            assert st["xds"]["ack_latency_ms"]["count"] >= 1
            rows = status_rows(st)
            assert {r["type"] for r in rows} == {"Cluster", "Listener", "RouteConfiguration"}
            assert all(set(r) == set(STATUS_COLUMNS) and r["state"] == "acked" for r in rows)
            api = await handle_proxy_status(proxy, {"nacked": "1"})
            assert api["xds"]["nodes"][0]["resources"] == []
            assert (await handle_proxy_status(None))["envoy"]["state"] == "disabled"
        finally:
            await proxy.stop()
        assert proxy.status()["envoy"]["state"] == "stopped"


async def test_missing_envoy_is_reported_and_xds_keeps_running_when_allowed(tmp_path):
    proxy = L7Proxy(ProxyConfig(tmp_path, envoy_binary=str(tmp_path / "no-envoy")))
    try:
        await proxy.start(require_envoy=False)
        st = proxy.status()
        assert st["envoy"]["state"] == "failed" and "no-envoy" in st["envoy"]["last_error"]
        assert proxy.server.target
    finally:
        await proxy.stop()
    strict = L7Proxy(ProxyConfig(tmp_path, envoy_binary=str(tmp_path / "no-envoy")))
    with pytest.raises(EnvoyError):
        await strict.start()


async def test_agent_restart_keeps_envoy_serving_and_adopts_it(tmp_path):
    port = free_port()
    with http_backend() as backend:
        cfg = ProxyConfig(tmp_path, options=ProxyOptions(
            transparent=False, static_upstream=("127.0.0.1", backend.server_address[1])))
        pp = lambda method: PortPolicy("127.0.0.1", Direction.INGRESS, port, port,  # noqa: E731
                                       (PeerRule(None, (HTTPRule(method=method),)),))
        old, new = L7Proxy(cfg), L7Proxy(cfg)
        try:
            await old.start()
            await old.apply([pp("GET")], {})
            await wait_port_open(port)
            pid = old.envoy.pid
            await old.detach()
            assert (await curl(f"http://127.0.0.1:{port}/")).status == 200  # no agent, still enforcing

            await new.start()
            assert new.envoy.adopted and new.envoy.pid == pid
            # The policy the new agent computes reaches the adopted Envoy once it reconnects.
            new.set(new.translate([pp("PUT")], {}))
            await new.server.wait_applied("ostium", new.cache.get_snapshot("ostium"), timeout=40)
            assert (await curl(f"http://127.0.0.1:{port}/", "-X", "PUT")).status == 200
            assert (await curl(f"http://127.0.0.1:{port}/")).status == 403
        finally:
            await new.stop()
            await old.stop()
