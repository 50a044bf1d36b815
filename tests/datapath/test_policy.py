"""Identity policy on the endpoints' veths, with real TCP/UDP/ICMP between endpoints."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from bpf.maps import EventType, Reason
from mesh.policy.model import Direction, Verdict
from mesh.policy.resolve import PolicyEntry, PolicyKey
from tests.datapath.conftest import wait_for

pytestmark = pytest.mark.root

A, B, C = "10.213.2.1", "10.213.2.2", "10.213.2.3"
ID_A, ID_B, ID_C = 1001, 1002, 1003
I, E = Direction.INGRESS, Direction.EGRESS


def policy(entries: dict, ingress: bool = False, egress: bool = False):
    return SimpleNamespace(map_state={PolicyKey(*k): PolicyEntry(v) for k, v in entries.items()},
                           ingress_enforced=ingress, egress_enforced=egress)


@pytest.fixture
def trio(node, datapath):
    for i, (key, ip, ident) in enumerate((("a", A, ID_A), ("b", B, ID_B), ("c", C, ID_C)), start=1):
        ep = node.add_endpoint(key, ip)
        datapath.attach_endpoint(i, ep.host_ifname, ep.host_ifindex, ip, ident)
    for port in (8080, 8081, 9090):
        node.start_server("b", "b", port)
    node.start_server("a", "a", 7070)
    return node


def ok(node, src, mode, dst, port) -> bool:
    rec = node.client(src, mode, dst, port, count=1, timeout=0.6)[0]
    return "error" not in rec


def ping(node, src, dst) -> bool:
    return node.run(src, ["ping", "-c1", "-W1", "-n", "-q", dst]).returncode == 0


def drops(reader) -> list:
    from bpf.maps import Event
    return [e for e in (Event.unpack(r) for r in reader.poll(0)) if e.type is EventType.DROP]


def test_ingress_policy_allows_and_denies_real_traffic(trio, datapath):
    datapath.sync_policy(2, policy({
        (I, ID_A, 6, 8080, 8081): Verdict.ALLOW,      # a range
        (I, 0, 17, 8080, 8080): Verdict.ALLOW,        # any identity, UDP 8080
        (I, ID_C, 0, 0, 0): Verdict.DENY,             # deny wins over the UDP wildcard
        (I, ID_A, 1, 8, 8): Verdict.ALLOW,            # ICMP echo request from a
    }, ingress=True))
    reader = datapath.event_reader()
    try:
        assert ok(trio, "a", "tcp", B, 8080)
        assert ok(trio, "a", "tcp", B, 8081)
        assert not ok(trio, "a", "tcp", B, 9090)
        assert ok(trio, "a", "udp", B, 8080)
        assert not ok(trio, "c", "udp", B, 8080)
        assert not ok(trio, "c", "tcp", B, 8080)
        assert ping(trio, "a", B)
        assert not ping(trio, "c", B)
        # b is not enforced for egress and a not for ingress: b reaches a.
        assert ok(trio, "b", "tcp", A, 7070)
        got = wait_for(lambda: drops(reader) or None, 2, "drop events")
        seen = list(got)
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline and not any(e.src_identity == ID_C and e.proto == 1 for e in seen):
            seen += drops(reader)
    finally:
        reader.close()
    c_to_b = [e for e in seen if e.saddr == C]
    assert c_to_b and all(e.src_identity == ID_C and e.dst_identity == ID_B for e in c_to_b)
    assert {e.reason for e in c_to_b} == {Reason.POLICY_DENY}
    assert {e.proto for e in c_to_b} >= {6, 17, 1}
    a_to_b = [e for e in seen if e.saddr == A]
    assert a_to_b and all(e.reason is Reason.POLICY_DEFAULT_DENY and e.dport == 9090 for e in a_to_b)
    assert all(e.direction.name == "INGRESS" and e.ep_id == 2 for e in seen)


def test_replies_pass_through_conntrack_while_new_flows_are_denied(trio, datapath):
    # a: ingress enforced with nothing allowed, egress only TCP 8080 to b and ICMP echo to b.
    datapath.sync_policy(1, policy({
        (E, ID_B, 6, 8080, 8080): Verdict.ALLOW,
        (E, ID_B, 1, 8, 8): Verdict.ALLOW,
    }, ingress=True, egress=True))
    assert ok(trio, "a", "tcp", B, 8080)          # the SYN-ACK and data come back via conntrack
    assert ok(trio, "a", "udp", B, 9090) is False  # egress UDP not allowed
    assert not ok(trio, "a", "tcp", B, 8081)      # egress port not allowed
    assert ping(trio, "a", B)                     # echo reply via conntrack
    assert not ok(trio, "b", "tcp", A, 7070)      # new flow into a: denied
    assert not ping(trio, "b", A)
    ct = datapath.dump_map("ost_ct4")
    assert any(e["key"]["saddr"] == A and e["key"]["dport"] == 8080 and e["key"]["direction"] == 1 for e in ct)


def test_removing_enforcement_restores_default_allow_and_deny_cuts_in(trio, datapath):
    datapath.sync_policy(2, policy({(I, ID_A, 6, 8080, 8080): Verdict.ALLOW}, ingress=True))
    assert ok(trio, "a", "tcp", B, 8080) and not ok(trio, "c", "tcp", B, 8080)
    datapath.sync_policy(2, policy({}))
    assert ok(trio, "c", "tcp", B, 8080)
    assert [e for e in datapath.dump_map("ost_policy") if e["key"]["ep_id"] == 2] == []
    # A deny that a wildcard identity and any port cover beats a specific allow.
    datapath.sync_policy(2, policy({(I, ID_A, 6, 8080, 8080): Verdict.ALLOW,
                                    (I, 0, 6, 0, 0): Verdict.DENY}, ingress=True))
    assert not ok(trio, "a", "tcp", B, 8080)


async def test_events_async_iterator_delivers_drops(trio, datapath):
    import asyncio
    datapath.sync_policy(2, policy({}, ingress=True))
    events = datapath.events()

    async def first_drop():
        async for ev in events:
            if ev.type is EventType.DROP:
                return ev

    waiter = asyncio.ensure_future(first_drop())
    await asyncio.sleep(0)   # the iterator registers its reader before traffic starts
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, lambda: ok(trio, "c", "udp", B, 8080))
    ev = await asyncio.wait_for(waiter, 5)
    await events.aclose()
    assert ev.src_identity == ID_C and ev.dst_identity == ID_B and ev.reason is Reason.POLICY_DEFAULT_DENY
