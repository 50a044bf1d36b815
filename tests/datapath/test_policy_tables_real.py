"""The policy engine's verdict tables (tests/data/policy/*.yaml) executed with real traffic:
every table endpoint is a real endpoint (netns + veth + tc programs) with the identity and
policy the repository computed; every query becomes a TCP/UDP connection or a ping, and what
gets through must be the table's expected verdict. External addresses in queries become plain
hosts (namespaces without programs) whose identity the datapath takes from the ipcache.

Queries with an L7 request (http/kafka) need the real proxy and are left to the Envoy/Kafka tests;
reserved: peers and SCTP cannot be produced here and are skipped. A flow the table redirects without
a request must reach the proxy: a stand-in transparent listener answers for Envoy and the Kafka proxy
(with none, the datapath refuses such flows: fail closed)."""

from __future__ import annotations

import os

import pytest

from mesh.policy.trace import parse_dport, resolve_peer
from tests.datapath.conftest import BUILD_DIR, Node
from tests.unit.test_policy_tables import VERDICT_TABLES, build_repository, load_table

pytestmark = pytest.mark.root
STANDIN_PROXY_PORT = 15911


@pytest.fixture
def datapath(node, pin_dir, proxy):
    from mesh.datapath import Datapath, DatapathConfig

    proxy(STANDIN_PROXY_PORT)
    dp = Datapath(DatapathConfig(cgroup_root=node.plumbing.cgroup_root, pin_dir=pin_dir, build_dir=BUILD_DIR,
                                 proxy_ports={"http": STANDIN_PROXY_PORT, "kafka": STANDIN_PROXY_PORT}))
    try:
        dp.start()
        yield dp
    finally:
        dp.purge()


def replayable(q: dict) -> bool:
    return not (q.get("http") or q.get("kafka") or str(q["src"]).startswith("reserved:")
                or str(q["dst"]).startswith("reserved:") or str(q["dport"]).upper().endswith("/SCTP"))


@pytest.mark.parametrize("path", VERDICT_TABLES, ids=[os.path.basename(p)[:-5] for p in VERDICT_TABLES])
def test_table_verdicts_hold_for_real_traffic(path, node: Node, datapath):
    table = load_table(path)
    repo = build_repository(table, os.path.basename(path))
    eps = repo.endpoints()
    queries = [q for q in table["queries"] if replayable(q)]
    if not queries:
        pytest.skip("no query of this table can be produced with real traffic")

    keys: dict[str, str] = {}     # endpoint ip / external ip -> plumbing key
    for i, ep in enumerate(eps, start=1):
        key = f"e{i}"
        kep = node.add_endpoint(key, ep.ip)
        datapath.attach_endpoint(i, kep.host_ifname, kep.host_ifindex, ep.ip, ep.identity)
        datapath.sync_policy(i, repo.endpoint_policy(ep.namespace, ep.name))
        keys[ep.ip] = key
    for net, ident in repo.cidr_identities().items():
        if net.version == 4:
            datapath.upsert_ipcache(str(net), ident)

    servers: set[tuple[str, int]] = set()
    failures = []
    for q in queries:
        src = resolve_peer(repo, eps, str(q["src"]), "src")
        dst = resolve_peer(repo, eps, str(q["dst"]), "dst")
        for peer in (src, dst):
            if peer.ip not in keys:            # an external address: a host without programs
                keys[peer.ip] = f"x{len(keys)}"
                node.add_endpoint(keys[peer.ip], peer.ip)
        port, proto = parse_dport(str(q["dport"]))
        if proto.name == "ICMP":
            if port != 8:
                continue                       # only echo requests can be produced
            got = node.run(keys[src.ip], ["ping", "-c1", "-W1", "-n", "-q", dst.ip]).returncode == 0
        else:
            if (dst.ip, port) not in servers:
                node.start_server(keys[dst.ip], "srv", port)
                servers.add((dst.ip, port))
            rec = node.client(keys[src.ip], proto.name.lower(), dst.ip, port, count=1, timeout=0.5)[0]
            got = "error" not in rec
            # expect_l7 is set exactly for flows that go through an L7 proxy
            if got and rec.get("backend", "").startswith("proxy ") != ("expect_l7" in q):
                failures.append(f"{q.get('name')}: {q['src']} -> {q['dst']} {q['dport']}: "
                                f"{'bypassed' if 'expect_l7' in q else 'went through'} the proxy")
        want = q["expect"] == "allowed"
        if got != want:
            failures.append(f"{q.get('name')}: {q['src']} -> {q['dst']} {q['dport']}: expected {q['expect']}, "
                            f"traffic {'passed' if got else 'was dropped'}")
    assert not failures, "\n".join(failures)
