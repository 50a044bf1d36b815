"""1,000 HTTP rules through the real Envoy: merged into a few RBAC matchers, accepted (no NACK), and
every sampled request gets the verdict the rules give one by one.

Setup as tests/e2e/test_xds_l7_policy.py: Envoy's listener on 127.0.0.1:P (not transparent), the
filter chain for "endpoint 127.0.0.1, ingress, port P", a STATIC upstream to a Python HTTP backend.
Identity 1000 = 127.0.0.1; curl from 127.0.0.2 is a peer no rule allows. The expected verdicts are
computed from the rules themselves (RE2 full match per field, any rule), not from the translation.
"""

from __future__ import annotations

import json

import pytest

from xdsserver.cache import Snapshot
from xdsserver.envoy import REGEX_PROGRAM_LIMIT
from xdsserver.testing import curl, envoy_harness, free_port, http_backend, wait_port_open
from xdsserver.translate import (Direction, HeaderMatch, HTTPRule, PeerRule, PortPolicy,
                                 ProxyOptions, TranslateInput, translate)

re2 = pytest.importorskip("re2")
pytestmark = pytest.mark.timeout(120)

ALLOWED = 1000
_OPTS = re2.Options()
_OPTS.log_errors = False


def many_rules(probe: str) -> tuple[HTTPRule, ...]:
    rules = [HTTPRule(method="GET", path=f"/svc{i}/items/[0-9]+") for i in range(600)]
    rules += [HTTPRule(method="GET", path=f"/static/file-{i}") for i in range(200)]       # literals
    rules += [HTTPRule(method="POST", path=f"/api/v{i % 3}/orders/{i}(/.*)?") for i in range(100)]
    rules += [HTTPRule(method="PUT", path=f"/host/{i}", host=r"api\.example") for i in range(50)]
    rules += [HTTPRule(method="GET", path=f"/hdr/{i}/[a-z]+", headers=(HeaderMatch("X-Token", "secret"),))
              for i in range(48)]
    rules += [HTTPRule(method="GET", path="(?i)/case/[0-9]{2}"), HTTPRule(method="GET", path=probe)]
    assert len(rules) == 1000
    return tuple(rules)


def snapshot(port: int, backend_port: int, rules: tuple[HTTPRule, ...]) -> tuple[Snapshot, dict]:
    res = translate(TranslateInput(
        ports=(PortPolicy("127.0.0.1", Direction.INGRESS, port, port,
                          (PeerRule(frozenset({ALLOWED}), rules),)),),
        ipcache={ALLOWED: ("127.0.0.1/32",)},
        options=ProxyOptions(transparent=False, static_upstream=("127.0.0.1", backend_port),
                             als_cluster=None)))
    (route,) = res.routes
    return Snapshot.build(res.by_type()), route


def _full(pattern: str, value: str) -> bool:
    return re2.compile(pattern, options=_OPTS).fullmatch(value) is not None


def expected(rules: tuple[HTTPRule, ...], method: str, path: str, host: str, headers: dict[str, str],
             source: str) -> int:
    if source != "127.0.0.1":
        return 403
    for r in rules:
        if ((not r.method or _full(r.method, method)) and (not r.path or _full(r.path, path))
                and (not r.host or _full(r.host, host))
                and all(headers.get(h.name.lower()) == h.value for h in r.headers)):
            return 200
    return 403


# (method, path, host, headers, source)
SAMPLES = [
    ("GET", "/svc0/items/1", "svc", {}, "127.0.0.1"),
    ("GET", "/svc599/items/42", "svc", {}, "127.0.0.1"),
    ("GET", "/svc600/items/42", "svc", {}, "127.0.0.1"),       # one past the last
    ("GET", "/svc17/items/", "svc", {}, "127.0.0.1"),
    ("GET", "/svc17/items/12/x", "svc", {}, "127.0.0.1"),
    ("GET", "/svc17/items/12?q=1", "svc", {}, "127.0.0.1"),   # query is not part of the path
    ("POST", "/svc17/items/12", "svc", {}, "127.0.0.1"),
    ("GET", "/static/file-0", "svc", {}, "127.0.0.1"),
    ("GET", "/static/file-199", "svc", {}, "127.0.0.1"),
    ("GET", "/static/file-1990", "svc", {}, "127.0.0.1"),
    ("GET", "/static/file-19", "svc", {}, "127.0.0.1"),
    ("POST", "/api/v1/orders/7", "svc", {}, "127.0.0.1"),
    ("POST", "/api/v1/orders/7/lines/3", "svc", {}, "127.0.0.1"),
    ("POST", "/api/v2/orders/7", "svc", {}, "127.0.0.1"),     # 7 % 3 == 1
    ("POST", "/api/v0/orders/99", "svc", {}, "127.0.0.1"),
    ("GET", "/api/v0/orders/99", "svc", {}, "127.0.0.1"),
    ("PUT", "/host/3", "api.example", {}, "127.0.0.1"),
    ("PUT", "/host/3", "other.example", {}, "127.0.0.1"),
    ("PUT", "/host/50", "api.example", {}, "127.0.0.1"),
    ("GET", "/hdr/5/abc", "svc", {"x-token": "secret"}, "127.0.0.1"),
    ("GET", "/hdr/5/abc", "svc", {"x-token": "nope"}, "127.0.0.1"),
    ("GET", "/hdr/5/abc", "svc", {}, "127.0.0.1"),
    ("GET", "/CASE/12", "svc", {}, "127.0.0.1"),
    ("GET", "/case/123", "svc", {}, "127.0.0.1"),
    ("GET", "/probe-a", "svc", {}, "127.0.0.1"),
    ("GET", "/probe-b", "svc", {}, "127.0.0.1"),
    ("GET", "/svc0/../static/file-3", "svc", {}, "127.0.0.1"),  # normalized before RBAC
    ("GET", "/svc3/items/1/../../../private", "svc", {}, "127.0.0.1"),
    ("GET", "/svc0/items/1", "svc", {}, "127.0.0.2"),          # peer without an allowed identity
]


def _regexes(tree) -> list[str]:
    if isinstance(tree, dict):
        return [tree["regex"]] if "regex" in tree else [r for v in tree.values() for r in _regexes(v)]
    if isinstance(tree, list):
        return [r for v in tree for r in _regexes(v)]
    return []


async def check(url: str, rules: tuple[HTTPRule, ...]) -> list[str]:
    failures = []
    for method, path, host, headers, source in SAMPLES:
        args = ["-X", method, "--interface", source, "-H", f"Host: {host}"]
        for k, v in headers.items():
            args += ["-H", f"{k}: {v}"]
        normalized = path.split("?")[0]
        if "/.." in normalized:  # what Envoy's normalize_path makes of it
            import posixpath
            normalized = posixpath.normpath(normalized)
        want = expected(rules, method, normalized, host, headers, source)
        r = await curl(url + path, *args)
        if r.status != want:
            failures.append(f"{method} {path} host={host} {headers} from {source}: {r.status}, want {want}")
    return failures


async def test_1000_rules_are_merged_accepted_and_enforced(tmp_path):
    port = free_port()
    with http_backend() as backend:
        async with envoy_harness(tmp_path, log_level="warning") as h:
            rules = many_rules("/probe-a")
            snap, route = snapshot(port, backend.server_address[1], rules)
            # Merged: a handful of permissions, each path matcher an alternation far above Envoy's
            # default program-size limit of 100, which the bootstrap's runtime raises.
            (policy,) = route["virtual_hosts"][0]["typed_per_filter_config"][
                "envoy.filters.http.rbac"]["rbac"]["rules"]["policies"].values()
            assert len(policy["permissions"]) < 10
            sizes = [re2.compile(r, options=_OPTS).programsize for r in _regexes(policy)]
            # Factored, the merged alternation is a few hundred instructions: still above Envoy's default
            # limit of 100 (so the raised runtime key is what lets Envoy accept it), far below the raised one.
            assert max(sizes) > 100 and max(sizes) < REGEX_PROGRAM_LIMIT
            h.cache.set_snapshot(h.node_id, snap)
            assert await h.server.wait_applied(h.node_id, snap) == []   # no NACK
            await wait_port_open(port)
            url = f"http://127.0.0.1:{port}"
            wants = [expected(rules, m, p.split("?")[0], host, hd, s) for m, p, host, hd, s in SAMPLES]
            assert wants.count(200) >= 10 and wants.count(403) >= 10     # the samples test both ways
            assert not await check(url, rules)
            assert not [p for _, p in backend.seen if "private" in p]

            # A change of the 1,000 rules is applied too: /probe-b allowed, /probe-a no longer.
            rules = many_rules("/probe-b")
            snap, _ = snapshot(port, backend.server_address[1], rules)
            h.cache.set_snapshot(h.node_id, snap)
            assert await h.server.wait_applied(h.node_id, snap) == []
            assert not await check(url, rules)
            status, runtime = await h.envoy.admin_get("/runtime")
            assert status == 200
            assert json.loads(runtime)["entries"]["re2.max_program_size.error_level"]["final_value"] == str(
                REGEX_PROGRAM_LIMIT)
