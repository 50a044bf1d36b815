"""The L7 redirect in the kernel: sk_assign to a transparent listener in the node's netns (the original
destination preserved), fail closed with a TCP reset when nothing listens, the proxy's marked upstream
passing the destination, and unmarked traffic under an L7 rule never bypassing it."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from bpf.maps import Event, EventType, Reason, Verdict as EvVerdict
from mesh import kernel
from mesh.datapath.redirect import MARK_PROXY_UPSTREAM
from mesh.policy.model import Direction, Verdict
from mesh.policy.resolve import PolicyKey
from tests.datapath.conftest import wait_for

pytestmark = pytest.mark.root

A, B, C = "10.213.3.1", "10.213.3.2", "10.213.3.3"
ID_A, ID_B, ID_C = 1101, 1102, 1103
I, E = Direction.INGRESS, Direction.EGRESS
SO_MARK = 36
PROXY_IN, PROXY_OUT = 15901, 15902


def l7(entries: dict, ingress: bool = False, egress: bool = False):
    """Policy whose entries are (verdict, proxy port)."""
    return SimpleNamespace(
        map_state={PolicyKey(*k): SimpleNamespace(verdict=v, l7_parser="http" if pp else None, proxy_port=pp)
                   for k, (v, pp) in entries.items()},
        ingress_enforced=ingress, egress_enforced=egress)


@pytest.fixture
def trio(node, datapath):
    for i, (key, ip, ident) in enumerate((("a", A, ID_A), ("b", B, ID_B), ("c", C, ID_C)), start=1):
        ep = node.add_endpoint(key, ip)
        datapath.attach_endpoint(i, ep.host_ifname, ep.host_ifindex, ip, ident)
    node.start_server("b", "b", 8080)
    return node


def connect(node, src: str, dst: str, port: int, timeout: float = 1.0) -> dict:
    return node.client(src, "tcp", dst, port, count=1, timeout=timeout)[0]


def events(reader) -> list[Event]:
    return [Event.unpack(r) for r in reader.poll(0)]


def test_node_routing_for_the_redirect_is_installed_and_removed(node, pin_dir):
    from mesh.datapath import Datapath, DatapathConfig
    from tests.datapath.conftest import BUILD_DIR
    dp = Datapath(DatapathConfig(cgroup_root=node.plumbing.cgroup_root, pin_dir=pin_dir, build_dir=BUILD_DIR))
    try:
        dp.start()
        dp.close()
        dp.start()   # idempotent: one rule, not two
        rules = subprocess.run(["ip", "rule", "show"], capture_output=True, text=True).stdout
        assert rules.count("fwmark 0x200/0xf00 lookup 100") == 1
        assert "local default dev lo" in subprocess.run(["ip", "route", "show", "table", "100"],
                                                        capture_output=True, text=True).stdout
        nft = subprocess.run(["nft", "list", "table", "inet", "ostium_l7"], capture_output=True, text=True).stdout
        assert nft.count("reject with tcp reset") == 2
        assert dp.redirect_status["reject"] == "nft-tcp-reset"
    finally:
        dp.purge()
    assert "0x200/0xf00" not in subprocess.run(["ip", "rule", "show"], capture_output=True, text=True).stdout
    assert subprocess.run(["nft", "list", "table", "inet", "ostium_l7"], capture_output=True).returncode != 0


def test_ingress_redirect_reaches_the_proxy_with_the_original_destination(trio, datapath, proxy):
    # b's ingress on 8080 is L7 for a; the redirect happens on a's veth (local delivery).
    datapath.sync_policy(2, l7({(I, ID_A, 6, 8080, 8080): (Verdict.REDIRECT, PROXY_IN)}, ingress=True))
    p = proxy(PROXY_IN)
    reader = datapath.event_reader()
    try:
        rec = connect(trio, "a", B, 8080)
        assert rec.get("backend") == f"proxy {B}:8080", rec   # b's address, answered by the proxy
        assert p.seen[0][1][0] == A                              # the proxy sees a's real address
        evs = wait_for(lambda: [e for e in events(reader) if e.verdict is EvVerdict.REDIRECTED], 2, "event")
        assert evs[0].proxy_port == PROXY_IN and evs[0].src_identity == ID_A and evs[0].dport == 8080
        # c has no rule on b: still dropped at L3/L4, never redirected
        assert "error" in connect(trio, "c", B, 8080, 0.5)
    finally:
        reader.close()


def test_no_listener_refuses_at_once_with_a_reset_and_counts_it(trio, datapath, proxy):
    datapath.sync_policy(2, l7({(I, ID_A, 6, 8080, 8080): (Verdict.REDIRECT, PROXY_IN)}, ingress=True))
    before = datapath.metrics().get("PROXY_UNAVAILABLE", 0)
    reader = datapath.event_reader()
    try:
        t0 = time.monotonic()
        rec = connect(trio, "a", B, 8080, timeout=3)
        assert rec.get("error") == "ECONNREFUSED" and time.monotonic() - t0 < 2.5, rec
        drop = wait_for(lambda: [e for e in events(reader) if e.type is EventType.DROP], 2, "drop event")[0]
        assert drop.reason is Reason.PROXY_UNAVAILABLE and drop.proxy_port == PROXY_IN
        assert datapath.metrics()["PROXY_UNAVAILABLE"] > before
        # the proxy comes (back): enforced through it again, never directly to b
        proxy(PROXY_IN)
        assert connect(trio, "a", B, 8080).get("backend") == f"proxy {B}:8080"
    finally:
        reader.close()


def test_proxy_upstream_passes_and_unmarked_node_traffic_does_not_bypass(trio, datapath):
    datapath.sync_policy(2, l7({(I, 0, 6, 8080, 8080): (Verdict.REDIRECT, PROXY_IN)}, ingress=True))
    reader = datapath.event_reader()

    def from_node(mark: int | None) -> str:
        s = socket.socket()
        s.settimeout(0.6)
        if mark is not None:
            s.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        try:
            s.connect((B, 8080))
            return s.makefile("rb").readline().decode().strip()
        except OSError as exc:
            return errno.errorcode.get(exc.errno, "timeout") if exc.errno else "timeout"
        finally:
            s.close()
    try:
        assert from_node(MARK_PROXY_UPSTREAM) == "b"   # the proxy's upstream: enforced already
        assert from_node(None) == "timeout"            # the node itself, not through the proxy
        drop = wait_for(lambda: [e for e in events(reader) if e.type is EventType.DROP], 2, "drop event")[0]
        assert drop.reason is Reason.PROXY_BYPASS and drop.dst_identity == ID_B
    finally:
        reader.close()


def test_egress_redirect_checks_a_local_destinations_ingress_policy_at_the_source(trio, datapath, proxy):
    # a's egress to 8080 is L7 (egress proxy); b admits only c at L3/L4: the proxy's upstream would
    # not be policed at b, so a is stopped on its own veth.
    datapath.sync_policy(1, l7({(E, 0, 6, 8080, 8080): (Verdict.REDIRECT, PROXY_OUT)}, egress=True))
    datapath.sync_policy(2, l7({(I, ID_C, 6, 8080, 8080): (Verdict.ALLOW, 0)}, ingress=True))
    proxy(PROXY_OUT)
    reader = datapath.event_reader()
    try:
        assert "error" in connect(trio, "a", B, 8080, 0.5)
        drop = wait_for(lambda: [e for e in events(reader) if e.type is EventType.DROP], 2, "drop event")[0]
        assert drop.reason is Reason.POLICY_DEFAULT_DENY and drop.src_identity == ID_A
        datapath.sync_policy(2, l7({(I, ID_A, 6, 8080, 8080): (Verdict.ALLOW, 0)}, ingress=True))
        assert connect(trio, "a", B, 8080).get("backend") == f"proxy {B}:8080"
        # L7 rules at both ends of a node-local flow (one proxy pass cannot enforce both): refused
        datapath.sync_policy(2, l7({(I, ID_A, 6, 8080, 8080): (Verdict.REDIRECT, PROXY_IN)}, ingress=True))
        events(reader)
        assert connect(trio, "a", B, 8080, 2).get("error") == "ECONNREFUSED"   # a reset, not a hang
        assert wait_for(lambda: [e for e in events(reader) if e.type is EventType.DROP], 2, "drop")[0].reason \
            is Reason.PROXY_BOTH_ENDS
    finally:
        reader.close()


def test_udp_under_an_l7_rule_is_dropped_not_forwarded(trio, datapath, proxy):
    datapath.sync_policy(2, l7({(I, ID_A, 0, 8080, 8080): (Verdict.REDIRECT, PROXY_IN)}, ingress=True))
    proxy(PROXY_IN)
    assert "error" in trio.client("a", "udp", B, 8080, count=1, timeout=0.5)[0]
    assert connect(trio, "a", B, 8080).get("backend") == f"proxy {B}:8080"


def test_connection_held_by_the_proxy_stays_there_when_the_l7_rule_goes(trio, datapath, proxy):
    from tests.datapath import progs
    from tests.datapath.test_restart import Progress
    # TCP early demux would find the proxy's socket for the kept connection by itself (and route the
    # packet locally): off in this node netns, so only the datapath keeps the connection with the proxy.
    kernel.sysctl_set("net.ipv4.tcp_early_demux", "0")
    datapath.sync_policy(2, l7({(I, ID_A, 6, 8080, 8080): (Verdict.REDIRECT, PROXY_IN)}, ingress=True))
    proxy(PROXY_IN)
    stream = trio.popen("a", [sys.executable, "-u", "-c", progs.STREAM, B, "8080"], stdout=subprocess.PIPE, text=True)
    progress = Progress(stream)
    progress.advances("through the proxy")
    assert progress.lines[0] == f"hello proxy {B}:8080"
    # The L7 rule becomes a plain allow: the kept connection goes on with the proxy (b never saw it and
    # would reset it); a new connection goes straight to b.
    datapath.sync_policy(2, l7({(I, ID_A, 6, 8080, 8080): (Verdict.ALLOW, 0)}, ingress=True))
    progress.advances("after the L7 rule was removed")
    assert "closed" not in progress.lines
    assert connect(trio, "a", B, 8080).get("backend") == "b"
