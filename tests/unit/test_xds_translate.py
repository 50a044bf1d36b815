"""Table tests of the pure L7 → Envoy translation."""

from __future__ import annotations

import pytest

from mesh.errors import ValidationError
from xdsserver.cache import Snapshot
from xdsserver.translate import (ORIGINAL_DST_CLUSTER, Direction, EscapedSlashes, HeaderMatch,
                                 HTTPRule, PeerRule, PortPolicy, ProxyOptions, TranslateInput,
                                 listener_name, translate, validate_http_rule)

IN, OUT = Direction.INGRESS, Direction.EGRESS
IPCACHE = {1000: ("10.0.1.5",), 1001: ("10.0.2.0/24", "fd00::7"), 1002: (),
           1003: ("10.0.2.9", "10.0.2.10")}


def only_chain(res, i=0):
    (listener,) = res.listeners
    return listener["filter_chains"][i]


def hcm(chain):
    return chain["filters"][0]["typed_config"]


def route_of(res, chain):
    (route,) = [r for r in res.routes if r["name"] == hcm(chain)["rds"]["route_config_name"]]
    return route


def rbac_of(res, chain):
    per_route = route_of(res, chain)["virtual_hosts"][0]["typed_per_filter_config"]
    return per_route["envoy.filters.http.rbac"]["rbac"]["rules"]


def run(*ports, **opts):
    return translate(TranslateInput(ports=tuple(ports), ipcache=IPCACHE,
                                    options=ProxyOptions(**opts)))


GET_PUBLIC = HTTPRule(method="GET", path="/public/.*")

# (test id, port policy, expected RBAC policies)
RBAC_TABLE = [
    ("ingress identities become direct_remote_ip principals",
     PortPolicy("10.0.0.1", IN, 80, 15001, (PeerRule(frozenset({1000, 1001, 1003}), (GET_PUBLIC,)),)),
     {"rule-0": {
         "principals": [{"direct_remote_ip": {"address_prefix": "10.0.1.5", "prefix_len": 32}},
                        {"direct_remote_ip": {"address_prefix": "10.0.2.0", "prefix_len": 24}},
                        {"direct_remote_ip": {"address_prefix": "10.0.2.9", "prefix_len": 32}},
                        {"direct_remote_ip": {"address_prefix": "10.0.2.10", "prefix_len": 32}},
                        {"direct_remote_ip": {"address_prefix": "fd00::7", "prefix_len": 128}}],
         "permissions": [{"and_rules": {"rules": [
             {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
             {"url_path": {"path": {"safe_regex": {"regex": "/public/.*"}}}}]}}]}}),
    ("wildcard peers: any principal",
     PortPolicy("10.0.0.1", IN, 80, 15001, (PeerRule(None, (HTTPRule(method="POST"),)),)),
     {"rule-0": {"principals": [{"any": True}], "permissions": [{"and_rules": {"rules": [
         {"header": {"name": ":method", "string_match": {"exact": "POST"}}}]}}]}}),
    ("no http rules: every request from the peers",
     PortPolicy("10.0.0.1", IN, 80, 15001, (PeerRule(frozenset({1000}), ()),)),
     {"rule-0": {"principals": [{"direct_remote_ip": {"address_prefix": "10.0.1.5", "prefix_len": 32}}],
                 "permissions": [{"any": True}]}}),
    ("identity without addresses allows nobody",
     PortPolicy("10.0.0.1", IN, 80, 15001, (PeerRule(frozenset({1002, 9999}), (GET_PUBLIC,)),)),
     {}),
    ("longest prefix match: a CIDR identity excludes other identities' addresses inside it",
     PortPolicy("10.0.0.1", IN, 80, 15001, (PeerRule(frozenset({1001}), ()),)),
     {"rule-0": {"permissions": [{"any": True}], "principals": [
         {"and_ids": {"ids": [
             {"direct_remote_ip": {"address_prefix": "10.0.2.0", "prefix_len": 24}},
             {"not_id": {"or_ids": {"ids": [
                 {"direct_remote_ip": {"address_prefix": "10.0.2.9", "prefix_len": 32}},
                 {"direct_remote_ip": {"address_prefix": "10.0.2.10", "prefix_len": 32}}]}}}]}},
         {"direct_remote_ip": {"address_prefix": "fd00::7", "prefix_len": 128}}]}}),
    ("world: every address except the known ones",
     PortPolicy("10.0.0.1", IN, 80, 15001, (PeerRule(frozenset({2, 1000}), ()),)),
     {"rule-0": {"permissions": [{"any": True}], "principals": [
         {"and_ids": {"ids": [
             {"direct_remote_ip": {"address_prefix": "0.0.0.0", "prefix_len": 0}},
             {"not_id": {"direct_remote_ip": {"address_prefix": "10.0.2.0", "prefix_len": 24}}}]}},
         {"direct_remote_ip": {"address_prefix": "10.0.1.5", "prefix_len": 32}},
         {"and_ids": {"ids": [
             {"direct_remote_ip": {"address_prefix": "::", "prefix_len": 0}},
             {"not_id": {"direct_remote_ip": {"address_prefix": "fd00::7", "prefix_len": 128}}}]}}]}}),
    ("egress to a CIDR identity: destination_ip minus the others inside it",
     PortPolicy("10.0.0.9", OUT, 443, 15002, (PeerRule(frozenset({1001, 1003}), ()),)),
     {"rule-0": {"principals": [{"any": True}], "permissions": [{"and_rules": {"rules": [
         {"or_rules": {"rules": [
             {"destination_ip": {"address_prefix": "10.0.2.0", "prefix_len": 24}},
             {"destination_ip": {"address_prefix": "10.0.2.9", "prefix_len": 32}},
             {"destination_ip": {"address_prefix": "10.0.2.10", "prefix_len": 32}},
             {"destination_ip": {"address_prefix": "fd00::7", "prefix_len": 128}}]}},
         {"any": True}]}}]}}),
    ("headers: presence and exact, names lower-cased; host on :authority",
     PortPolicy("10.0.0.1", IN, 80, 15001, (PeerRule(None, (HTTPRule(
         host=r"api\.example", headers=(HeaderMatch("X-Trace"), HeaderMatch("X-Env", "prod"))),)),)),
     {"rule-0": {"principals": [{"any": True}], "permissions": [{"and_rules": {"rules": [
         {"header": {"name": ":authority", "string_match": {"safe_regex": {"regex": r"api\.example"}}}},
         {"header": {"name": "x-trace", "present_match": True}},
         {"header": {"name": "x-env", "string_match": {"exact": "prod"}}}]}}]}}),
    ("egress: remote identities are destination_ip in every permission",
     PortPolicy("10.0.0.9", OUT, 443, 15002, (PeerRule(frozenset({1000}), (HTTPRule(method="GET"),)),)),
     {"rule-0": {"principals": [{"any": True}], "permissions": [{"and_rules": {"rules": [
         {"destination_ip": {"address_prefix": "10.0.1.5", "prefix_len": 32}},
         {"and_rules": {"rules": [
             {"header": {"name": ":method", "string_match": {"exact": "GET"}}}]}}]}}]}}),
    ("several peer rules: one policy each (OR)",
     PortPolicy("10.0.0.1", IN, 80, 15001, (PeerRule(None, (HTTPRule(method="GET"),)),
                                            PeerRule(frozenset({1000}), ()))),
     {"rule-0": {"principals": [{"any": True}], "permissions": [{"and_rules": {"rules": [
         {"header": {"name": ":method", "string_match": {"exact": "GET"}}}]}}]},
      "rule-1": {"principals": [{"direct_remote_ip": {"address_prefix": "10.0.1.5", "prefix_len": 32}}],
                 "permissions": [{"any": True}]}}),
]


@pytest.mark.parametrize("pp,expected", [c[1:] for c in RBAC_TABLE], ids=[c[0] for c in RBAC_TABLE])
def test_rbac_policies(pp, expected):
    res = run(pp)
    assert rbac_of(res, only_chain(res)) == {"action": "ALLOW", "policies": expected}


@pytest.mark.parametrize("direction,match", [
    (IN, {"destination_port": 80, "prefix_ranges": [{"address_prefix": "10.0.0.1", "prefix_len": 32}]}),
    (OUT, {"destination_port": 80,
           "source_prefix_ranges": [{"address_prefix": "10.0.0.1", "prefix_len": 32}]}),
])
def test_filter_chain_matches_the_endpoint_per_direction(direction, match):
    chain = only_chain(run(PortPolicy("10.0.0.1", direction, 80, 15001, (PeerRule(None),))))
    assert chain["filter_chain_match"] == match
    assert chain["name"] == f"{direction.value}:10.0.0.1:80"


def test_listener_is_transparent_with_original_dst_on_localhost():
    res = run(PortPolicy("10.0.0.1", IN, 80, 15001, (PeerRule(None),)))
    (listener,) = res.listeners
    assert listener["name"] == listener_name(15001)
    assert listener["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 15001}}
    assert listener["transparent"] is True
    assert [f["name"] for f in listener["listener_filters"]] == ["envoy.filters.listener.original_dst"]


def test_http_connection_manager_normalizes_and_maps_denials():
    h = hcm(only_chain(run(PortPolicy("10.0.0.1", IN, 80, 15001, (PeerRule(None),)))))
    assert h["codec_type"] == "AUTO"
    assert h["normalize_path"] is True and h["merge_slashes"] is True
    assert h["path_with_escaped_slashes_action"] == "UNESCAPE_AND_REDIRECT"
    assert [f["name"] for f in h["http_filters"]] == ["envoy.filters.http.rbac", "envoy.filters.http.router"]
    # Fail closed: without the route's per-route rules, the listener's RBAC allows nothing.
    assert h["http_filters"][0]["typed_config"]["rules"] == {"action": "ALLOW"}
    assert h["rds"]["config_source"] == {"ads": {}, "resource_api_version": "V3"}
    (mapper,) = h["local_reply_config"]["mappers"]
    assert mapper["filter"]["status_code_filter"]["comparison"]["value"]["default_value"] == 403
    assert mapper["body"] == {"inline_string": "Access denied\r\n"}
    als = h["access_log"][0]["typed_config"]
    assert als["common_config"]["grpc_service"] == {"envoy_grpc": {"cluster_name": "ostium_als"}}
    assert "grpc-status" in als["additional_response_trailers_to_log"]


def test_escaped_slash_action_and_no_access_log_are_options():
    h = hcm(only_chain(run(PortPolicy("10.0.0.1", IN, 80, 15001, (PeerRule(None),)),
                           escaped_slashes=EscapedSlashes.REJECT_REQUEST, als_cluster=None)))
    assert h["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
    assert "access_log" not in h


def test_original_dst_cluster_marks_upstream_sockets():
    (cluster,) = run(PortPolicy("10.0.0.1", IN, 80, 15001, (PeerRule(None),)),
                     upstream_mark=0x2a00).clusters
    assert cluster["name"] == ORIGINAL_DST_CLUSTER
    assert (cluster["type"], cluster["lb_policy"]) == ("ORIGINAL_DST", "CLUSTER_PROVIDED")
    assert cluster["upstream_bind_config"]["socket_options"] == [
        {"level": 1, "name": 36, "int_value": 0x2a00, "state": "STATE_PREBIND"}]


def test_one_listener_per_proxy_port_and_merged_duplicate_ports():
    res = run(PortPolicy("10.0.0.1", IN, 80, 15001, (PeerRule(None, (HTTPRule(method="GET"),)),)),
              PortPolicy("10.0.0.1", IN, 80, 15001, (PeerRule(None, (HTTPRule(method="PUT"),)),)),
              PortPolicy("10.0.0.2", IN, 80, 15001, (PeerRule(None),)),
              PortPolicy("10.0.0.1", OUT, 53, 15002, (PeerRule(None),)))
    assert [l["name"] for l in res.listeners] == [listener_name(15001), listener_name(15002)]
    chains = res.listeners[0]["filter_chains"]
    assert [c["name"] for c in chains] == ["ingress:10.0.0.1:80", "ingress:10.0.0.2:80"]
    # The two port policies' rules are combined; the same peers (any) share one RBAC policy.
    (policy,) = rbac_of(res, chains[0])["policies"].values()
    assert [p["and_rules"]["rules"][0]["header"]["string_match"] for p in policy["permissions"]] == [
        {"exact": "GET"}, {"exact": "PUT"}]
    assert [r["name"] for r in res.routes] == ["ingress:10.0.0.1:80", "ingress:10.0.0.2:80",
                                               "egress:10.0.0.1:53"]


def test_a_rule_change_touches_only_the_route():
    before = run(PortPolicy("10.0.0.1", IN, 80, 15001, (PeerRule(None, (HTTPRule(method="GET"),)),)))
    after = run(PortPolicy("10.0.0.1", IN, 80, 15001, (PeerRule(None, (HTTPRule(method="PUT"),)),)))
    assert before.listeners == after.listeners and before.clusters == after.clusters
    assert before.routes != after.routes


def test_same_endpoint_port_on_two_proxy_ports_is_refused():
    with pytest.raises(ValidationError, match="two proxy ports") as exc:
        run(PortPolicy("10.0.0.1", IN, 80, 15001, (PeerRule(None),)),
            PortPolicy("10.0.0.1", IN, 80, 15002, (PeerRule(None),)))
    assert exc.value.path == "ports[1].proxy_port"


def test_output_is_deterministic_whatever_the_input_order():
    a = PortPolicy("10.0.0.2", IN, 80, 15001, (PeerRule(frozenset({1001, 1000})),))
    b = PortPolicy("10.0.0.1", IN, 8080, 15001, (PeerRule(None),))
    assert run(a, b) == run(b, a)
    assert Snapshot.build(run(a, b).by_type()).version == Snapshot.build(run(b, a).by_type()).version


def test_every_output_is_a_valid_envoy_resource():
    ingress = [c[1] for c in RBAC_TABLE if c[1].direction is IN][:1]
    egress = [c[1] for c in RBAC_TABLE if c[1].direction is OUT][:1]
    res = run(*ingress, *egress)
    snap = Snapshot.build(res.by_type())
    assert len(snap.resources("type.googleapis.com/envoy.config.listener.v3.Listener")) == 2
    assert len(snap.resources("type.googleapis.com/envoy.config.route.v3.RouteConfiguration")) == 2
    static = translate(TranslateInput(ports=(RBAC_TABLE[0][1],),
                                      options=ProxyOptions(static_upstream=("127.0.0.1", 8080))))
    Snapshot.build(static.by_type())


@pytest.mark.parametrize("pp,path", [
    (PortPolicy("10.0.0.300", IN, 80, 15001, ()), "ports[0].endpoint_ip"),
    (PortPolicy("10.0.0.1", IN, -1, 15001, ()), "ports[0].port"),
    (PortPolicy("10.0.0.1", IN, 80, 70000, ()), "ports[0].proxy_port"),
    (PortPolicy("10.0.0.1", IN, 53, 15001, (), protocol="UDP"), "ports[0].protocol"),
])
def test_bad_port_policy_names_the_field(pp, path):
    with pytest.raises(ValidationError) as exc:
        run(pp)
    assert exc.value.path == path


@pytest.mark.parametrize("rule,path,text", [
    (HTTPRule(path="/a("), "http.path", "missing )"),
    (HTTPRule(method="GET|("), "http.method", "invalid regular expression"),
    (HTTPRule(host="(?=x)y"), "http.host", "invalid regular expression"),   # lookahead: not RE2
    (HTTPRule(path="(a|b|c|d|e|f)+x{1,60}"), "http.path", "too complex"),
    (HTTPRule(headers=(HeaderMatch("bad header"),)), "http.headers[0]", "invalid header name"),
    (HTTPRule(headers=(HeaderMatch("x", "a\r\nb"),)), "http.headers[0]", "CR, LF"),
])
def test_validate_rejects_what_envoy_would_nack(rule, path, text):
    with pytest.raises(ValidationError) as exc:
        validate_http_rule(rule)
    assert exc.value.path == path and text in exc.value.message


def test_validate_accepts_cilium_style_rules():
    validate_http_rule(HTTPRule(method="GET|POST", path="/v1/request-landing", host=".*",
                                headers=(HeaderMatch(":authority"), HeaderMatch("X-Has-Force", "true"))))


@pytest.mark.parametrize("pattern,matcher", [
    ("GET", {"exact": "GET"}),
    ("/v1/request-landing", {"exact": "/v1/request-landing"}),
    ("GET|POST", {"safe_regex": {"regex": "GET|POST"}}),
    ("/public/.*", {"safe_regex": {"regex": "/public/.*"}}),
    (r"api\.example", {"safe_regex": {"regex": r"api\.example"}}),
    ("/a[b]", {"safe_regex": {"regex": "/a[b]"}}),
])
def test_literal_patterns_become_exact_matches(pattern, matcher):
    res = run(PortPolicy("10.0.0.1", IN, 80, 15001, (PeerRule(None, (HTTPRule(path=pattern),)),)))
    perm = rbac_of(res, only_chain(res))["policies"]["rule-0"]["permissions"][0]
    assert perm["and_rules"]["rules"][0]["url_path"]["path"] == matcher


def test_ipv6_endpoints_add_an_ipv6_listener_address():
    v4 = run(PortPolicy("10.0.0.1", IN, 80, 15001, (PeerRule(None),)))
    assert "additional_addresses" not in v4.listeners[0]
    both = run(PortPolicy("10.0.0.1", IN, 80, 15001, (PeerRule(None),)),
               PortPolicy("fd00::1", IN, 80, 15001, (PeerRule(None),)))
    assert both.listeners[0]["additional_addresses"] == [
        {"address": {"socket_address": {"address": "::1", "port_value": 15001}}}]
    assert both.listeners[0]["filter_chains"][1]["filter_chain_match"]["prefix_ranges"] == [
        {"address_prefix": "fd00::1", "prefix_len": 128}]
    Snapshot.build(both.by_type())
