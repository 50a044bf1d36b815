"""L7 policy from the translate module enforced by the real Envoy, configured over Delta/SotW ADS.

Setup (no datapath needed): Envoy's listener is on 127.0.0.1:P, not transparent; the filter chain
for "endpoint 127.0.0.1, ingress, port P" matches it directly (no redirect, so the original_dst
filter keeps the local address) and a STATIC upstream cluster forwards to a Python HTTP backend
on loopback (ProxyOptions.static_upstream). Peers: identity 1000 = 127.0.0.1; curl from
127.0.0.2 is a peer with no identity allowed.
"""

from __future__ import annotations

import pytest

from xdsserver.cache import Snapshot
from xdsserver.envoy import XdsMode
from xdsserver.translate import (Direction, HeaderMatch, HTTPRule, PeerRule, PortPolicy,
                                 ProxyOptions, TranslateInput, translate)
from xdsserver.testing import curl, envoy_harness, free_port, grpc_backend, http_backend, wait_port_open

pytestmark = pytest.mark.timeout(60)

ALLOWED = 1000

RULES = (
    HTTPRule(method="GET", path="/public(/.*)?"),
    HTTPRule(method="GET", path="/hdr", headers=(HeaderMatch("X-Token", "secret"),)),
    HTTPRule(method="GET", path="/present", headers=(HeaderMatch("x-flag"),)),
    HTTPRule(method="PUT", path="/host", host=r"api\.example"),
)


def policy(port: int, backend_port: int, rules=RULES) -> Snapshot:
    inp = TranslateInput(
        ports=(PortPolicy("127.0.0.1", Direction.INGRESS, port, port,
                          (PeerRule(frozenset({ALLOWED}), rules),)),),
        ipcache={ALLOWED: ("127.0.0.1/32",)},
        options=ProxyOptions(transparent=False, static_upstream=("127.0.0.1", backend_port)))
    return Snapshot.build(translate(inp).by_type())


# (method, path, extra curl args, from address, expected status)
CASES = [
    ("GET", "/public", [], "127.0.0.1", 200),
    ("GET", "/public/a/b", [], "127.0.0.1", 200),
    ("GET", "/public?x=1", [], "127.0.0.1", 200),
    ("POST", "/public", [], "127.0.0.1", 403),
    ("GETX", "/public", [], "127.0.0.1", 400),         # unknown method: Envoy's codec rejects it
    ("GET", "/publicity", [], "127.0.0.1", 403),       # full match: /public(/.*)? is not a prefix
    ("GET", "/private", [], "127.0.0.1", 403),
    ("GET", "/public/../private", [], "127.0.0.1", 403),
    ("GET", "/public/./../private", [], "127.0.0.1", 403),
    ("GET", "//private", [], "127.0.0.1", 403),
    ("GET", "/public/%2e%2e/private", [], "127.0.0.1", 403),
    ("GET", "/public/%2E%2E/private", [], "127.0.0.1", 403),
    ("GET", "/PUBLIC", [], "127.0.0.1", 403),
    ("GET", "/Public/a", [], "127.0.0.1", 403),
    ("GET", "/hdr", ["-H", "X-Token: secret"], "127.0.0.1", 200),
    ("GET", "/hdr", ["-H", "X-Token: secreT"], "127.0.0.1", 403),
    ("GET", "/hdr", [], "127.0.0.1", 403),
    ("GET", "/present", ["-H", "x-flag: anything"], "127.0.0.1", 200),
    ("GET", "/present", [], "127.0.0.1", 403),
    ("PUT", "/host", ["-H", "Host: api.example"], "127.0.0.1", 200),
    ("PUT", "/host", ["-H", "Host: api.example:8080"], "127.0.0.1", 200),
    ("PUT", "/host", ["-H", "Host: apixexample"], "127.0.0.1", 403),
    ("GET", "/public", [], "127.0.0.2", 403),          # peer without an allowed identity
]


@pytest.mark.parametrize("mode", [XdsMode.DELTA, XdsMode.SOTW])
async def test_rbac_from_translate_allows_and_denies_like_the_rules_say(tmp_path, mode):
    port = free_port()
    with http_backend() as backend:
        async with envoy_harness(tmp_path, mode=mode) as h:
            snap = policy(port, backend.server_address[1])
            h.cache.set_snapshot(h.node_id, snap)
            assert await h.server.wait_applied(h.node_id, snap) == []
            await wait_port_open(port)
            url = f"http://127.0.0.1:{port}"
            failures = []
            for method, path, args, source, want in CASES:
                r = await curl(url + path, "-X", method, "--interface", source, *args)
                if r.status != want:
                    failures.append(f"{method} {path} {args} from {source}: {r.status} {r.body!r}")
                elif want == 403:
                    assert r.body.strip() == "Access denied"
            assert not failures, "\n".join(failures)
            # Nothing that looked like private ever reached the backend.
            assert not [p for _, p in backend.seen if "private" in p.lower()]
            # ALS: allowed and denied requests both arrive as L7 records.
            recs = await h.wait_records(lambda rs: len(rs) >= len(CASES))
            assert any(r.method == "" or r.response_code == 400 for r in recs)  # malformed: logged too
            denied = [r for r in recs if r.response_code == 403]
            assert denied and all(r.rbac_denied for r in denied)
            ok = [r for r in recs if r.response_code == 200]
            assert ok and not any(r.rbac_denied for r in ok)
            rec = next(r for r in recs if r.method == "POST" and r.path == "/public")
            assert (rec.destination_ip, rec.destination_port) == ("127.0.0.1", port)
            assert rec.source_ip == "127.0.0.1" and rec.protocol == "HTTP/1.1"
            assert rec.tags["ostium.direction"] == "ingress"


async def test_encoded_slashes_never_reach_rbac_or_backend_escaped(tmp_path):
    port = free_port()
    with http_backend() as backend:
        async with envoy_harness(tmp_path) as h:
            snap = policy(port, backend.server_address[1])
            h.cache.set_snapshot(h.node_id, snap)
            await h.server.wait_applied(h.node_id, snap)
            await wait_port_open(port)
            for path in ("/public%2F..%2Fprivate", "/public%2f..%2fprivate", "/public%5C..%5Cprivate"):
                r = await curl(f"http://127.0.0.1:{port}{path}")
                # UNESCAPE_AND_REDIRECT: a redirect to the unescaped path, never served as is.
                assert r.status in (307, 400, 403), (path, r)
                r = await curl(f"http://127.0.0.1:{port}{path}", "-L")
                assert r.status in (400, 403), (path, r)
            assert not [p for _, p in backend.seen if "private" in p.lower()]


async def test_grpc_method_rules_and_permission_denied(tmp_path):
    import grpc

    port = free_port()
    async with grpc_backend() as gport, envoy_harness(tmp_path) as h:
        rules = (HTTPRule(method="POST", path="/test\\.Echo/Say"),)
        snap = policy(port, gport, rules)
        h.cache.set_snapshot(h.node_id, snap)
        await h.server.wait_applied(h.node_id, snap)
        await wait_port_open(port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            assert await ch.unary_unary("/test.Echo/Say")(b"hi", timeout=5) == b"echo:hi"
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await ch.unary_unary("/test.Echo/Secret")(b"hi", timeout=5)
            assert exc.value.code() is grpc.StatusCode.PERMISSION_DENIED
        recs = await h.wait_records(lambda rs: len(rs) >= 2)
        by_path = {r.path: r for r in recs}
        assert by_path["/test.Echo/Say"].grpc_status == 0
        assert by_path["/test.Echo/Say"].protocol == "HTTP/2"
        assert by_path["/test.Echo/Secret"].grpc_status == 7
        assert by_path["/test.Echo/Secret"].rbac_denied


async def test_egress_rules_match_the_source_endpoint_and_the_destination_identity(tmp_path):
    """Egress: the chain matches the *source* endpoint (127.0.0.1 here); the remote identities are
    destinations (RBAC destination_ip on the original destination = the local address)."""
    port = free_port()
    with http_backend() as backend:
        async with envoy_harness(tmp_path) as h:
            def snap(dest_ips):
                inp = TranslateInput(
                    ports=(PortPolicy("127.0.0.1", Direction.EGRESS, port, port,
                                      (PeerRule(frozenset({2000}), (HTTPRule(method="GET"),)),)),),
                    ipcache={2000: dest_ips},
                    options=ProxyOptions(transparent=False,
                                         static_upstream=("127.0.0.1", backend.server_address[1])))
                return Snapshot.build(translate(inp).by_type())

            allowed = snap(("127.0.0.1",))
            h.cache.set_snapshot(h.node_id, allowed)
            assert await h.server.wait_applied(h.node_id, allowed) == []
            await wait_port_open(port)
            url = f"http://127.0.0.1:{port}/x"
            assert (await curl(url)).status == 200
            assert (await curl(url, "-X", "DELETE")).status == 403
            # Another source endpoint has no egress chain here: the connection is closed, never
            # forwarded (fail closed).
            with pytest.raises(RuntimeError, match="curl"):
                await curl(url, "--interface", "127.0.0.2")
            # The destination is not among the allowed identities' addresses: denied.
            other = snap(("127.0.0.9",))
            h.cache.set_snapshot(h.node_id, other)
            assert await h.server.wait_applied(h.node_id, other) == []
            assert (await curl(url)).status == 403
            recs = await h.wait_records(lambda rs: len(rs) >= 3)
            assert all(r.tags["ostium.direction"] == "egress" for r in recs)


async def test_policy_change_applies_live_on_established_connections(tmp_path):
    """Rules live in RDS: a change reaches Envoy without touching the listener, so an open
    keep-alive connection survives it and its next request is judged by the new rules."""
    import asyncio

    async def request(reader, writer, method, path) -> int:
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))
        await reader.readexactly(length)
        return int(head.split(b" ")[1])

    port = free_port()
    with http_backend() as backend:
        async with envoy_harness(tmp_path) as h:
            bport = backend.server_address[1]
            first = policy(port, bport, (HTTPRule(method="GET", path="/a"),))
            h.cache.set_snapshot(h.node_id, first)
            await h.server.wait_applied(h.node_id, first)
            await wait_port_open(port)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                assert await request(reader, writer, "GET", "/a") == 200
                assert await request(reader, writer, "GET", "/b") == 403
                second = policy(port, bport, (HTTPRule(method="GET", path="/b"),))
                h.cache.set_snapshot(h.node_id, second)
                assert await h.server.wait_applied(h.node_id, second) == []
                # Same TCP connection, new rules.
                assert await request(reader, writer, "GET", "/b") == 200
                assert await request(reader, writer, "GET", "/a") == 403
            finally:
                writer.close()
            _, stats = await h.envoy.admin_get("/stats?filter=listener_manager.listener_modified")
            assert stats.strip().endswith(": 0"), stats


async def test_cidr_identity_does_not_cover_addresses_of_other_identities(tmp_path):
    """ipcache longest-prefix match in RBAC: allowing the CIDR identity of 127.0.0.0/8 does not
    allow 127.0.0.2, which belongs to another identity (an endpoint inside the CIDR)."""
    port = free_port()
    with http_backend() as backend:
        async with envoy_harness(tmp_path) as h:
            inp = TranslateInput(
                ports=(PortPolicy("127.0.0.1", Direction.INGRESS, port, port,
                                  (PeerRule(frozenset({16777217}), ()),)),),
                ipcache={16777217: ("127.0.0.0/8",), 1001: ("127.0.0.2",)},
                options=ProxyOptions(transparent=False,
                                     static_upstream=("127.0.0.1", backend.server_address[1])))
            snap = Snapshot.build(translate(inp).by_type())
            h.cache.set_snapshot(h.node_id, snap)
            assert await h.server.wait_applied(h.node_id, snap) == []
            await wait_port_open(port)
            url = f"http://127.0.0.1:{port}/"
            assert (await curl(url, "--interface", "127.0.0.1")).status == 200
            assert (await curl(url, "--interface", "127.0.0.3")).status == 200
            assert (await curl(url, "--interface", "127.0.0.2")).status == 403


async def test_ipv6_endpoint_on_the_same_proxy_port(tmp_path):
    """An IPv6 endpoint gets the listener's IPv6 address and its own chain. (HTTP/2 is covered by
    the gRPC test: upstream speaks what downstream speaks, and this backend is HTTP/1.1 only.)"""
    port = free_port()
    with http_backend() as backend:
        async with envoy_harness(tmp_path) as h:
            rules = (PeerRule(None, (HTTPRule(method="GET", path="/public"),)),)
            inp = TranslateInput(
                ports=(PortPolicy("127.0.0.1", Direction.INGRESS, port, port, rules),
                       PortPolicy("::1", Direction.INGRESS, port, port, rules)),
                options=ProxyOptions(transparent=False,
                                     static_upstream=("127.0.0.1", backend.server_address[1])))
            snap = Snapshot.build(translate(inp).by_type())
            h.cache.set_snapshot(h.node_id, snap)
            assert await h.server.wait_applied(h.node_id, snap) == []
            await wait_port_open(port)
            await wait_port_open(port, host="::1")
            for base in (f"http://127.0.0.1:{port}", f"http://[::1]:{port}"):
                assert (await curl(base + "/public")).status == 200
                assert (await curl(base + "/private")).status == 403
            recs = await h.wait_records(lambda rs: len(rs) >= 4)
            assert {r.destination_ip for r in recs} == {"127.0.0.1", "::1"}
            assert {r.source for r in recs if r.source_ip == "::1"} <= {
                f"[::1]:{r.source_port}" for r in recs}
