"""Merged RBAC permissions: many HTTP rules become few matchers, with exactly the same verdicts.

The verdict check evaluates the generated RBAC (the subset translate emits) with RE2 full matches,
as Envoy does, and compares it with the rules' own meaning (any rule of the peer's rules matches,
each field an RE2 full match), for every request of a table built from the rules themselves.
"""

from __future__ import annotations

import functools
import random
from typing import Any

import pytest

from xdsserver.envoy import EnvoyConfig, build_bootstrap
from xdsserver.translate import (Direction, HeaderMatch, HTTPRule, PeerRule, PortPolicy,
                                 ProxyOptions, TranslateInput, translate)
from xdsserver.translate.build import ENVOY_REGEX_PROGRAM_LIMIT, MERGED_PROGRAM_BUDGET

re2 = pytest.importorskip("re2")

IN = Direction.INGRESS
PEER_IP = "10.0.1.5"
IPCACHE = {1000: (PEER_IP,), 1001: ("10.0.1.6",)}
_OPTS = re2.Options()
_OPTS.log_errors = False


def rbac(*peers: PeerRule) -> dict[str, Any]:
    res = translate(TranslateInput(ports=(PortPolicy("10.0.0.1", IN, 80, 15001, peers),),
                                   ipcache=IPCACHE, options=ProxyOptions()))
    (route,) = res.routes
    return route["virtual_hosts"][0]["typed_per_filter_config"]["envoy.filters.http.rbac"]["rbac"]["rules"]


@functools.lru_cache(maxsize=None)
def _compiled(pattern: str):
    return re2.compile(pattern, options=_OPTS)


def _full(pattern: str, value: str | None) -> bool:
    return value is not None and _compiled(pattern).fullmatch(value) is not None


# ---- a small evaluator of the RBAC subset translate emits (Envoy's semantics) -----------------


def _string(m: dict[str, Any], value: str | None) -> bool:
    if value is None:
        return False
    if "exact" in m:
        return value == m["exact"]
    return _full(m["safe_regex"]["regex"], value)


def _perm(p: dict[str, Any], req: dict[str, Any]) -> bool:
    if p.get("any"):
        return True
    if "and_rules" in p:
        return all(_perm(q, req) for q in p["and_rules"]["rules"])
    if "or_rules" in p:
        return any(_perm(q, req) for q in p["or_rules"]["rules"])
    if "url_path" in p:
        return _string(p["url_path"]["path"], req["path"])
    if "header" in p:
        h = p["header"]
        value = req["headers"].get(h["name"])
        if h.get("present_match"):
            return value is not None
        return _string(h["string_match"], value)
    raise AssertionError(f"evaluator does not know {p}")


def _principal(p: dict[str, Any], source: str) -> bool:
    if p.get("any"):
        return True
    if "direct_remote_ip" in p:
        return p["direct_remote_ip"]["address_prefix"] == source   # /32 peers only here
    raise AssertionError(f"evaluator does not know {p}")


def rbac_allows(rules: dict[str, Any], req: dict[str, Any]) -> bool:
    return any(any(_perm(p, req) for p in pol["permissions"])
               and any(_principal(p, req["source"]) for p in pol["principals"])
               for pol in rules["policies"].values())


def rules_allow(peers: tuple[PeerRule, ...], req: dict[str, Any]) -> bool:
    """What the rules mean (model.py), straight from the HTTPRules."""
    ident = {PEER_IP: 1000, "10.0.1.6": 1001}.get(req["source"])
    for peer in peers:
        if peer.identities is not None and ident not in peer.identities:
            continue
        if not peer.http:
            return True
        for r in peer.http:
            h = req["headers"]
            if ((not r.method or _full(r.method, h[":method"]))
                    and (not r.path or _full(r.path, req["path"]))
                    and (not r.host or _full(r.host, h.get(":authority")))
                    and all(h.get(m.name.lower()) is not None if m.value is None
                            else h.get(m.name.lower()) == m.value for m in r.headers)):
                return True
    return False


def request(method: str, path: str, source: str = PEER_IP, host: str = "svc",
            **headers: str) -> dict[str, Any]:
    return {"path": path, "source": source,
            "headers": {":method": method, ":authority": host,
                        **{k.replace("_", "-"): v for k, v in headers.items()}}}


# ---- structure ------------------------------------------------------------------------------


def test_rules_that_differ_only_by_path_become_one_alternation():
    rules = rbac(PeerRule(frozenset({1000}), (
        HTTPRule(method="GET", path="/a/[0-9]+"), HTTPRule(method="GET", path="/b"),
        HTTPRule(method="GET", path="/c(/.*)?"), HTTPRule(method="POST", path="/a/[0-9]+"))))
    (policy,) = rules["policies"].values()
    get, post = policy["permissions"]
    assert get == {"and_rules": {"rules": [
        {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
        {"url_path": {"path": {"safe_regex": {"regex": "/a/[0-9]+|/b|/c(/.*)?"}}}}]}}
    # A lone pattern is kept as it was: no group around it, a literal stays an exact match.
    assert post["and_rules"]["rules"][1] == {"url_path": {"path": {"safe_regex": {"regex": "/a/[0-9]+"}}}}


def test_a_rule_without_path_makes_its_group_allow_every_path():
    (policy,) = rbac(PeerRule(None, (HTTPRule(method="GET", path="/a"), HTTPRule(method="GET"),
                                     HTTPRule(method="GET", path="/b")))).get("policies").values()
    assert policy["permissions"] == [{"and_rules": {"rules": [
        {"header": {"name": ":method", "string_match": {"exact": "GET"}}}]}}]


def test_peer_rules_with_the_same_identities_share_one_policy():
    rules = rbac(PeerRule(frozenset({1000}), (HTTPRule(method="GET", path="/a"),)),
                 PeerRule(frozenset({1001}), (HTTPRule(method="GET", path="/x"),)),
                 PeerRule(frozenset({1000}), (HTTPRule(method="GET", path="/b"),)))
    assert sorted(rules["policies"]) == ["rule-0", "rule-1"]
    assert rules["policies"]["rule-0"]["permissions"][0]["and_rules"]["rules"][1] == {
        "url_path": {"path": {"safe_regex": {"regex": "/a|/b"}}}}
    # An L3/L4 allow (no HTTP rules) among them: every request from those peers.
    rules = rbac(PeerRule(frozenset({1000}), (HTTPRule(method="GET", path="/a"),)),
                 PeerRule(frozenset({1000}), ()))
    assert rules["policies"]["rule-0"]["permissions"] == [{"any": True}]


def test_quoted_patterns_are_not_merged():
    # \Q...\E without \E quotes to the end: inside an alternation it would swallow the rest.
    (policy,) = rbac(PeerRule(None, (HTTPRule(path=r"/q/\Q.*"), HTTPRule(path="/a"),
                                     HTTPRule(path="/b/.*")))).get("policies").values()
    (perm,) = policy["permissions"]
    assert perm["and_rules"]["rules"][0] == {"or_rules": {"rules": [
        {"url_path": {"path": {"safe_regex": {"regex": r"/q/\Q.*"}}}},
        {"url_path": {"path": {"safe_regex": {"regex": "/a|/b/.*"}}}}]}}


def test_huge_rule_sets_are_split_into_alternations_envoy_accepts():
    paths = [f"/tenant-{i}/(orders|items)/[0-9a-f]{{8}}/x{{1,6}}" for i in range(3000)]
    (policy,) = rbac(PeerRule(None, tuple(HTTPRule(method="GET", path=p) for p in paths))
                     ).get("policies").values()
    (perm,) = policy["permissions"]
    matchers = [r["url_path"]["path"]["safe_regex"]["regex"]
                for r in perm["and_rules"]["rules"][1]["or_rules"]["rules"]]
    assert len(matchers) > 1
    sizes = [re2.compile(m, options=_OPTS).programsize for m in matchers]
    assert max(sizes) <= MERGED_PROGRAM_BUDGET < ENVOY_REGEX_PROGRAM_LIMIT
    # Factored (the shared text once), yet every rule's paths match exactly one alternation, and
    # no path of a rule that is not there matches any.
    assert all(m.startswith("/tenant-") and m.count("/(orders|items)/[0-9a-f]{8}/x{1,6}") == 1
               for m in matchers)
    for i in (0, 1, 999, 1000, 2999):
        path = f"/tenant-{i}/items/0123abcd/xxx"
        assert sum(1 for m in matchers if _compiled(m).fullmatch(path)) == 1, path
    for path in ("/tenant-3000/items/0123abcd/x", "/tenant-1/items/0123abcd/", "/tenant-/orders/0123abcd/x",
                 "/tenant-1/other/0123abcd/x", "/tenant-1/items/0123abcd/xxxxxxx"):
        assert not any(_compiled(m).fullmatch(path) for m in matchers), path


def test_bootstrap_lets_envoy_compile_merged_patterns():
    layers = build_bootstrap(EnvoyConfig("/tmp/x", "n", "127.0.0.1:1"))["layered_runtime"]["layers"]
    static = layers[0]["static_layer"]
    assert static["re2.max_program_size.error_level"] == ENVOY_REGEX_PROGRAM_LIMIT
    assert static["re2.max_program_size.warn_level"] == ENVOY_REGEX_PROGRAM_LIMIT
    assert {"name": "admin", "admin_layer": {}} in layers


# ---- verdicts: merged == one rule at a time ---------------------------------------------------

PATTERNS = ["/a", "/a/[0-9]+", "/a/.*", "/b(/.*)?", "(?i)/case", "/c|/d", "^/anch$", "/x{2,3}",
            "/e/(?P<id>[a-z]+)", "/e/(?P<id>[0-9]+)/x", "/u/\\.well-known", "/lit-path", "/lit path",
            "/f[^/]*", "/g/\\d\\d", "(/h)?", "/q/\\Q*+?\\E", "/w\\b"]
METHODS = ["GET", "POST", "GET|PUT", ""]


def _paths_to_try(patterns: list[str]) -> list[str]:
    base = ["/", "/a", "/a/", "/a/12", "/a/x", "/a/12/x", "/b", "/b/", "/b/c", "/bb", "/case", "/CASE",
            "/Case", "/c", "/d", "/cd", "/anch", "/xx", "/xxx", "/xxxx", "/x", "/e/abc", "/e/12/x",
            "/e/ab/x", "/u/.well-known", "/u/Xwell-known", "/lit-path", "/lit path", "/lit-pathx",
            "/f", "/fabc", "/f/a", "/g/12", "/g/1", "", "/h", "/hh", "/q/*+?", "/q/x", "/w", "/w2",
            "/c)|(?:/a", "(?:/a)"]
    return base + [p for p in patterns if "\\" not in p]


@pytest.mark.parametrize("seed", range(30))
def test_merged_rules_give_the_same_verdicts_as_the_rules_one_by_one(seed):
    rnd = random.Random(seed)

    def rule() -> HTTPRule:
        headers = rnd.choice([(), (HeaderMatch("x-token", "s"),), (HeaderMatch("X-Flag"),)])
        return HTTPRule(method=rnd.choice(METHODS), path=rnd.choice(PATTERNS + [""] * 1),
                        host=rnd.choice(["", "", r"api\.example"]), headers=headers)

    peers = tuple(PeerRule(rnd.choice([None, frozenset({1000}), frozenset({1001})]),
                           tuple(rule() for _ in range(rnd.randint(0, 12)))) for _ in range(rnd.randint(1, 4)))
    rules = rbac(*peers)
    checked = 0
    for path in _paths_to_try(PATTERNS):
        for method in ("GET", "POST", "PUT"):
            for source in (PEER_IP, "10.0.1.6"):
                for extra in ({}, {"x_token": "s"}, {"x_flag": "1"}):
                    for host in ("svc", "api.example"):
                        req = request(method, path, source, host, **extra)
                        assert rbac_allows(rules, req) == rules_allow(peers, req), (peers, req)
                        checked += 1
    assert checked > 1000


def test_1000_rules_verdicts_and_size():
    # The benchmark's shape: 999 regex rules that do not match and the used ones last.
    rules = tuple(HTTPRule(method="GET", path=f"/svc{i}/items/[0-9]+") for i in range(998))
    rules += (HTTPRule(method="GET", path="/index.html"), HTTPRule(method="GET", path="/probe-0"))
    peers = (PeerRule(frozenset({1000}), rules),)
    out = rbac(*peers)
    (policy,) = out["policies"].values()
    assert len(policy["permissions"]) == 1
    for method, path in [("GET", "/index.html"), ("GET", "/probe-0"), ("GET", "/svc997/items/42"),
                         ("GET", "/svc998/items/42"), ("GET", "/svc5/items/"), ("POST", "/index.html"),
                         ("GET", "/svc12/items/7/x"), ("GET", "/nope")]:
        req = request(method, path)
        assert rbac_allows(out, req) == rules_allow(peers, req), (method, path)
