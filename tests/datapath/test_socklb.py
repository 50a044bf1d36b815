"""Socket load balancing through real endpoints: VIP -> backends at connect/sendmsg time."""

from __future__ import annotations

import collections

import pytest

from mesh.services.model import Backend, Frontend
from tests.datapath.conftest import client_and_backends

pytestmark = pytest.mark.root

VIP = "10.96.0.10"
BACKENDS = {"b1": "10.213.1.11", "b2": "10.213.1.12", "b3": "10.213.1.13"}


@pytest.fixture
def three_backends(node, datapath):
    return client_and_backends(node, datapath, "10.213.1.2", BACKENDS)


def frontend(backends=BACKENDS, proto="TCP", affinity=0, port=80) -> Frontend:
    return Frontend(VIP, port, proto, tuple(Backend(ip, 8080) for ip in backends.values()), affinity,
                    "default/web")


def test_tcp_connections_spread_over_all_backends_and_peer_is_the_vip(three_backends, datapath):
    datapath.sync_services([frontend()])
    recs = three_backends.client("client", "tcp", VIP, 80, count=60)
    assert all("error" not in r for r in recs), recs
    seen = collections.Counter(r["backend"] for r in recs)
    assert set(seen) == set(BACKENDS), seen
    assert min(seen.values()) >= 5, seen   # random choice over 3 slots: 60 draws
    assert {tuple(r["peer"]) for r in recs} == {(VIP, 80)}


def test_udp_request_response_through_vip_shows_vip_as_source(three_backends, datapath):
    datapath.sync_services([frontend(proto="UDP", port=53)])
    recs = three_backends.client("client", "udp", VIP, 53, count=30)
    assert all("error" not in r for r in recs), recs
    assert set(r["backend"] for r in recs) == set(BACKENDS)
    assert {tuple(r["peer"]) for r in recs} == {(VIP, 53)}


def test_removed_backend_gets_no_new_connections(three_backends, datapath):
    datapath.sync_services([frontend()])
    remaining = {k: v for k, v in BACKENDS.items() if k != "b2"}
    datapath.sync_services([frontend(remaining)])
    recs = three_backends.client("client", "tcp", VIP, 80, count=40)
    seen = collections.Counter(r.get("backend") for r in recs)
    assert set(seen) == {"b1", "b3"}, seen


def test_client_ip_affinity_sticks_to_one_backend(three_backends, datapath):
    datapath.sync_services([frontend(affinity=60)])
    recs = three_backends.client("client", "tcp", VIP, 80, count=20)
    assert len({r["backend"] for r in recs}) == 1, recs
    # The affinity must not outlive its backend: remove it, the client moves on.
    first = recs[0]["backend"]
    datapath.sync_services([frontend({k: v for k, v in BACKENDS.items() if k != first}, affinity=60)])
    again = three_backends.client("client", "tcp", VIP, 80, count=10)
    assert len({r["backend"] for r in again}) == 1 and again[0]["backend"] != first


def test_service_without_backends_refuses_at_once(three_backends, datapath):
    datapath.sync_services([Frontend(VIP, 80, "TCP", (), 0, "default/empty")])
    recs = three_backends.client("client", "tcp", VIP, 80, count=3, timeout=5)
    assert [r.get("error") for r in recs] == ["ECONNREFUSED"] * 3


def test_weighted_backends_get_traffic_in_proportion(three_backends, datapath):
    weighted = Frontend(VIP, 80, "TCP", (Backend(BACKENDS["b1"], 8080, 9), Backend(BACKENDS["b2"], 8080, 1)),
                        0, "default/web")
    datapath.sync_services([weighted])
    recs = three_backends.client("client", "tcp", VIP, 80, count=100)
    seen = collections.Counter(r.get("backend") for r in recs)
    assert seen["b1"] > 70 and seen["b1"] > 3 * seen["b2"], seen
    assert "b3" not in seen


def test_reverse_records_are_released_with_their_sockets(three_backends, datapath):
    datapath.sync_services([frontend()])
    three_backends.client("client", "tcp", VIP, 80, count=30)
    assert datapath.dump_map("ost_lb4_revnat") == []


def test_dual_stack_client_reaches_ipv4_service_through_v4_mapped_address(three_backends, datapath):
    datapath.sync_services([frontend(), frontend(proto="UDP", port=53)])
    mapped = f"::ffff:{VIP}"
    tcp = three_backends.client("client", "tcp", mapped, 80, count=30)
    assert all("error" not in r for r in tcp), tcp
    assert {r["backend"] for r in tcp} == set(BACKENDS)
    assert {tuple(r["peer"]) for r in tcp} == {(mapped, 80)}
    udp = three_backends.client("client", "udp", mapped, 53, count=10)
    assert all("error" not in r for r in udp) and {tuple(r["peer"]) for r in udp} == {(mapped, 53)}, udp
    assert datapath.dump_map("ost_lb4_revnat") == [] or all(
        e["value"]["address"] == VIP for e in datapath.dump_map("ost_lb4_revnat"))
