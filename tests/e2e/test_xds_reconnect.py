"""The xDS server restarts (agent restart) while Envoy keeps running: Envoy reconnects, tells the
new server what it has (Delta initial_resource_versions), is not re-sent unchanged resources, keeps
serving, and takes the next change."""

from __future__ import annotations

import pytest

from xdsserver.cache import Snapshot, SnapshotCache
from xdsserver.server import XdsServer
from xdsserver.translate import (Direction, HTTPRule, PeerRule, PortPolicy, ProxyOptions,
                                 TranslateInput, listener_name, translate)
from xdsserver.testing import curl, envoy_harness, free_port, http_backend, wait_port_open

pytestmark = pytest.mark.timeout(90)


def snapshot(port: int, backend_port: int, method: str) -> Snapshot:
    inp = TranslateInput(
        ports=(PortPolicy("127.0.0.1", Direction.INGRESS, port, port,
                          (PeerRule(None, (HTTPRule(method=method),)),)),),
        options=ProxyOptions(transparent=False, static_upstream=("127.0.0.1", backend_port)))
    return Snapshot.build(translate(inp).by_type())


async def stats(h, *names: str) -> dict[str, int]:
    _, body = await h.envoy.admin_get("/stats?filter=listener_manager")
    values = dict(line.split(": ", 1) for line in body.splitlines() if ": " in line)
    return {n: int(values.get(n, 0)) for n in names}


async def test_envoy_reconnects_to_a_restarted_server_without_resends(tmp_path):
    port = free_port()
    counters = ("listener_manager.listener_added", "listener_manager.listener_modified")
    with http_backend() as backend:
        async with envoy_harness(tmp_path) as h:
            bport = backend.server_address[1]
            snap = snapshot(port, bport, "GET")
            h.cache.set_snapshot(h.node_id, snap)
            await h.server.wait_applied(h.node_id, snap)
            await wait_port_open(port)
            before = await stats(h, *counters)
            xds_port = h.server.port
            await h.server.stop(0)

            # The agent comes back with a fresh cache holding the same policy.
            cache = SnapshotCache()
            server = XdsServer(cache)
            try:
                cache.set_snapshot(h.node_id, snapshot(port, bport, "GET"))
                await server.start(port=xds_port)
                assert (await curl(f"http://127.0.0.1:{port}/")).status == 200  # still enforcing
                # Envoy reconnects by itself (its own retry backoff) and reports what it holds.
                await server.wait_applied(h.node_id, snap, timeout=40)
                held = server.resource_status(h.node_id)
                assert {r.name for r in held} >= {listener_name(port)}
                assert all(r.state.value == "acked" for r in held)
                assert await stats(h, *counters) == before     # nothing re-sent or rebuilt

                changed = snapshot(port, bport, "POST")
                cache.set_snapshot(h.node_id, changed)
                assert await server.wait_applied(h.node_id, changed) == []
                assert (await curl(f"http://127.0.0.1:{port}/", "-X", "POST")).status == 200
                assert (await curl(f"http://127.0.0.1:{port}/")).status == 403
                lat = server.status()["ack_latency_ms"]
                assert lat["count"] >= 1 and lat["max"] < 1000
            finally:
                await server.stop(0)
