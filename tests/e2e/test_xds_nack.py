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
                                 TranslateInput, chain_name, translate)
from xdsserver.testing import curl, envoy_harness, free_port, http_backend, wait_port_open

pytestmark = pytest.mark.timeout(60)


def resources(ports: dict[int, tuple[HTTPRule, ...]], backend_port: int):
    inp = TranslateInput(
        ports=tuple(PortPolicy("127.0.0.1", Direction.INGRESS, p, p, (PeerRule(None, rules),))
                    for p, rules in ports.items()),
        options=ProxyOptions(transparent=False, static_upstream=("127.0.0.1", backend_port)))
    return translate(inp)


def break_regex(route: dict) -> dict:
    """The same route with a regex RE2 cannot compile: valid proto, rejected by Envoy."""
    bad = copy.deepcopy(route)
    per_route = bad["virtual_hosts"][0]["typed_per_filter_config"]["envoy.filters.http.rbac"]
    policy = per_route["rbac"]["rules"]["policies"]["rule-0"]
    policy["permissions"][0]["and_rules"]["rules"][0]["header"]["string_match"] = {
        "safe_regex": {"regex": "GET("}}
    return bad


def route_name(port: int) -> str:
    return chain_name(Direction.INGRESS, "127.0.0.1", port)


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

            # Port a's rules change validly (POST allowed too); port b's route gets a broken regex.
            newer = resources({a: (HTTPRule(method="GET|POST"),), b: get_only}, backend.server_address[1])
            ra = next(r for r in newer.routes if r["name"] == route_name(a))
            rb = next(r for r in newer.routes if r["name"] == route_name(b))
            bad = Snapshot.build({TypeURL.CLUSTER: list(newer.clusters),
                                  TypeURL.LISTENER: list(newer.listeners),
                                  TypeURL.ROUTE: [ra, break_regex(rb)]})
            h.cache.set_snapshot(h.node_id, bad)
            nacked = await h.server.wait_applied(h.node_id, bad)

            # Envoy's RDS message names no route: the server isolates the culprit by resending
            # each route of that response once, alone.
            assert [n.name for n in nacked] == [route_name(b)]
            msg = nacked[0].nack_message
            assert "GET(" in msg or "missing )" in msg, msg
            # b keeps its last good config: GET allowed, POST denied.
            assert (await curl(f"http://127.0.0.1:{b}/x")).status == 200
            assert (await curl(f"http://127.0.0.1:{b}/x", "-X", "POST")).status == 403
            # The good route of the same response is applied (isolation resent it alone; in SotW
            # Envoy stops at the first failing route of a response, so it may not have been).
            assert (await curl(f"http://127.0.0.1:{a}/x", "-X", "POST")).status == 200

            status = {r["name"]: r for r in h.server.status()["nodes"][0]["resources"]}
            assert status[route_name(b)]["state"] == AckState.NACKED.value
            assert status[route_name(b)]["nack_message"] == msg
            assert status[route_name(b)]["version_acked"] != status[route_name(b)]["nack_version"]

            # A later valid snapshot is pushed and ACKed.
            fixed = Snapshot.build(newer.by_type())
            h.cache.set_snapshot(h.node_id, fixed)
            assert await h.server.wait_applied(h.node_id, fixed) == []
            # Rejected in the batch and once more in the single isolating resend: no loop.
            rejected = await stat(h, f"http.ostium_ingress_{b}.rds.{route_name(b).replace(':', '_')}"
                                     ".update_rejected")
            assert rejected == 2
            assert (await curl(f"http://127.0.0.1:{b}/x", "-X", "POST")).status == 403
            assert (await curl(f"http://127.0.0.1:{a}/x", "-X", "POST")).status == 200
            status = {r["name"]: r for r in h.server.status()["nodes"][0]["resources"]}
            assert status[route_name(b)]["state"] == "acked"
            assert status[route_name(b)]["nack_message"] == ""
