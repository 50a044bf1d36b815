"""A resource Envoy rejects: the last good config keeps working, the NACK is reported with Envoy's
message, and the server does not push the rejected version again."""

from __future__ import annotations

import copy

import pytest

from xdsserver.cache import Snapshot
from xdsserver.envoy import XdsMode
from xdsserver.resources import TypeURL
from xdsserver.server import AckState
from xdsserver.translate import (Direction, HTTPRule, PeerRule, PortPolicy, ProxyOptions,
                                 TranslateInput, listener_name, translate)
from xdsserver.testing import curl, envoy_harness, free_port, http_backend, wait_port_open

pytestmark = pytest.mark.timeout(60)


def resources(ports: dict[int, tuple[HTTPRule, ...]], backend_port: int):
    inp = TranslateInput(
        ports=tuple(PortPolicy("127.0.0.1", Direction.INGRESS, p, p, (PeerRule(None, rules),))
                    for p, rules in ports.items()),
        options=ProxyOptions(transparent=False, static_upstream=("127.0.0.1", backend_port)))
    return translate(inp)


def break_regex(listener: dict) -> dict:
    """The same listener with a regex RE2 cannot compile: valid proto, rejected by Envoy."""
    bad = copy.deepcopy(listener)
    hcm = bad["filter_chains"][0]["filters"][0]["typed_config"]
    rbac = hcm["http_filters"][0]["typed_config"]["rules"]["policies"]["rule-0"]
    rbac["permissions"][0]["and_rules"]["rules"][0]["header"]["string_match"]["safe_regex"]["regex"] = "GET("
    return bad


async def stat(h, name: str) -> int:
    _, body = await h.envoy.admin_get(f"/stats?filter=^{name}$")
    for line in body.splitlines():
        k, _, v = line.partition(": ")
        if k == name:
            return int(v)
    return 0


@pytest.mark.parametrize("mode", [XdsMode.DELTA, XdsMode.SOTW])
async def test_nack_keeps_last_good_config_and_is_reported(tmp_path, mode):
    a, b = free_port(), free_port()
    get_only = (HTTPRule(method="GET"),)
    with http_backend() as backend:
        async with envoy_harness(tmp_path, mode=mode) as h:
            good = resources({a: get_only, b: get_only}, backend.server_address[1])
            snap = Snapshot.build(good.by_type())
            h.cache.set_snapshot(h.node_id, snap)
            assert await h.server.wait_applied(h.node_id, snap) == []
            await wait_port_open(a)
            await wait_port_open(b)

            # Listener a changes validly (POST allowed too); listener b gets a broken regex.
            newer = resources({a: (HTTPRule(method="GET|POST"),), b: get_only}, backend.server_address[1])
            la = next(l for l in newer.listeners if l["name"] == listener_name(a))
            lb = next(l for l in newer.listeners if l["name"] == listener_name(b))
            bad = Snapshot.build({TypeURL.CLUSTER: list(newer.clusters),
                                  TypeURL.LISTENER: [la, break_regex(lb)]})
            h.cache.set_snapshot(h.node_id, bad)
            nacked = await h.server.wait_applied(h.node_id, bad)

            assert [n.name for n in nacked] == [listener_name(b)]
            msg = nacked[0].nack_message
            assert "GET(" in msg or "missing )" in msg, msg
            # b keeps its last good config: GET allowed, POST denied.
            assert (await curl(f"http://127.0.0.1:{b}/x")).status == 200
            assert (await curl(f"http://127.0.0.1:{b}/x", "-X", "POST")).status == 403
            if mode is XdsMode.DELTA:
                # Delta applies the good listener of the same response (Envoy adds each one).
                assert (await curl(f"http://127.0.0.1:{a}/x", "-X", "POST")).status == 200

            status = {r["name"]: r for r in h.server.status()["nodes"][0]["resources"]}
            assert status[listener_name(b)]["state"] == AckState.NACKED.value
            assert status[listener_name(b)]["nack_message"] == msg
            assert status[listener_name(b)]["version_acked"] != status[listener_name(b)]["nack_version"]

            # A later valid snapshot is pushed and ACKed; the rejected version was pushed once only.
            fixed = Snapshot.build(newer.by_type())
            h.cache.set_snapshot(h.node_id, fixed)
            assert await h.server.wait_applied(h.node_id, fixed) == []
            assert await stat(h, "listener_manager.lds.update_rejected") == 1
            assert (await curl(f"http://127.0.0.1:{b}/x", "-X", "POST")).status == 403
            assert (await curl(f"http://127.0.0.1:{a}/x", "-X", "POST")).status == 200
            status = {r["name"]: r for r in h.server.status()["nodes"][0]["resources"]}
            assert status[listener_name(b)]["state"] == "acked"
            assert status[listener_name(b)]["nack_message"] == ""
