"""Gateway semantics (pure): conditions, conflicts, precedence, egress overlap; translation is valid Envoy config."""

from __future__ import annotations

import pytest

from mesh.gateway.resolve import (GatewaySettings, check_certificate, hostname_matches, intersect_hostnames,
                                  resolve, status_rows, EgressEndpoint)
from mesh.gateway.testing import load_objects
from xdsserver.resources import TypeURL, from_dict
from xdsserver.translate.gateway import GatewayOptions, translate_gateway

BACKENDS = {("shop", "web", 80): [("10.0.0.5", 8080)], ("shop", "api", 80): [("10.0.0.6", 8080)],
            ("other", "web", 80): [("10.0.1.5", 8080)]}


def _resolve(text: str, **kw):
    return resolve(load_objects(text), GatewaySettings(), lambda ns, s, p: BACKENDS.get((ns, s, p)),
                   check_cert=kw.pop("check_cert", lambda c, k: None if c == "good" else "bad PEM"), **kw)


def _status(res, kind: str, name: str) -> dict:
    return next(s.to_api() for s in res.statuses if s.kind == kind and s.name == name)


def _conds(conds: list[dict]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in conds}


def _gateway(name: str, listeners: str, ts: str = "", ns: str = "shop") -> str:
    stamp = f", creationTimestamp: '{ts}'" if ts else ""
    return f"""---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {ns}{stamp}}}
spec: {{gatewayClassName: ostium, listeners: {listeners}}}
"""


def _route(name: str, parent: str, rules: str, ns: str = "shop", hostnames: str = "[]", kind: str = "HTTPRoute",
           ts: str = "") -> str:
    stamp = f", creationTimestamp: '{ts}'" if ts else ""
    return f"""---
apiVersion: gateway.networking.k8s.io/v1
kind: {kind}
metadata: {{name: {name}, namespace: {ns}{stamp}}}
spec: {{parentRefs: [{parent}], hostnames: {hostnames}, rules: {rules}}}
"""


def _secret(name: str, content: str) -> str:
    import base64
    b = base64.b64encode(content.encode()).decode()
    return f"""---
apiVersion: v1
kind: Secret
metadata: {{name: {name}, namespace: shop}}
type: kubernetes.io/tls
data: {{tls.crt: {b}, tls.key: {b}}}
"""


def test_hostname_rules():
    assert hostname_matches("a.example.com", "*.example.com")
    assert hostname_matches("a.b.example.com", "*.example.com")
    assert not hostname_matches("example.com", "*.example.com")
    assert intersect_hostnames(["*.example.com"], "foo.example.com") == ["foo.example.com"]
    assert intersect_hostnames(["foo.example.com", "bar.test"], "*.example.com") == ["foo.example.com"]
    assert intersect_hostnames([], "") == ["*"]
    assert intersect_hostnames(["x.test"], "y.test") == []


def test_listener_conflicts_older_gateway_wins():
    res = _resolve(_gateway("new", "[{name: h, port: 80, protocol: HTTP}, {name: p, port: 8443, protocol: HTTP}]",
                            "2026-02-01T00:00:00Z")
                   + _gateway("old", "[{name: h, port: 80, protocol: HTTP}, {name: s, port: 8443, protocol: HTTPS, "
                              "tls: {certificateRefs: [{name: c}]}}]", "2026-01-01T00:00:00Z")
                   + _secret("c", "good"))
    old, new = _status(res, "Gateway", "old"), _status(res, "Gateway", "new")
    assert all(_conds(lst["conditions"])["Conflicted"] == ("False", "NoConflicts") for lst in old["listeners"])
    by_name = {lst["name"]: _conds(lst["conditions"]) for lst in new["listeners"]}
    assert by_name["h"]["Conflicted"] == ("True", "HostnameConflict")
    assert by_name["p"]["Conflicted"] == ("True", "ProtocolConflict")
    assert by_name["h"]["Programmed"] == ("False", "Invalid")
    assert _conds(new["conditions"])["Programmed"] == ("False", "Invalid")
    assert sorted(lst.port for lst in res.input.listeners) == [80, 8443]


def test_invalid_certificates_are_reported_and_the_listener_not_programmed():
    res = _resolve(_gateway("gw", "[{name: ok, port: 443, protocol: HTTPS, hostname: a.test, tls: {certificateRefs: "
                            "[{name: good}]}}, {name: bad, port: 443, protocol: HTTPS, hostname: b.test, tls: "
                            "{certificateRefs: [{name: broken}]}}, {name: gone, port: 443, protocol: HTTPS, hostname: "
                            "c.test, tls: {certificateRefs: [{name: missing}]}}, {name: far, port: 443, protocol: "
                            "HTTPS, hostname: d.test, tls: {certificateRefs: [{name: good, namespace: other}]}}]")
                   + _secret("good", "good") + _secret("broken", "garbage"))
    lst = {lst["name"]: _conds(lst["conditions"]) for lst in _status(res, "Gateway", "gw")["listeners"]}
    assert lst["ok"]["ResolvedRefs"] == ("True", "ResolvedRefs") and lst["ok"]["Programmed"][0] == "True"
    assert lst["bad"]["ResolvedRefs"] == ("False", "InvalidCertificateRef")
    assert lst["gone"]["ResolvedRefs"] == ("False", "InvalidCertificateRef")
    assert lst["far"]["ResolvedRefs"] == ("False", "RefNotPermitted")
    assert all(lst[n]["Programmed"][0] == "False" for n in ("bad", "gone", "far"))
    (listener,) = res.input.listeners
    assert [c.server_names for c in listener.chains] == [("a.test",)]
    assert [s.name for s in res.input.secrets] == ["gw-secret:shop/good"]


def test_real_certificate_check():
    assert "no PEM certificate" in check_certificate("junk", "junk")
    assert "does not load" in check_certificate("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                                                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


def test_route_parent_conditions():
    gw = _gateway("gw", "[{name: web, port: 80, protocol: HTTP, hostname: '*.shop.test'}, {name: api, port: 81, "
                        "protocol: HTTP, allowedRoutes: {namespaces: {from: All}, kinds: [{kind: GRPCRoute}]}}]")
    rules = "[{backendRefs: [{name: web, port: 80}]}]"
    res = _resolve(gw
                   + _route("ok", "{name: gw, sectionName: web}", rules, hostnames="[a.shop.test]")
                   + _route("nogw", "{name: nope}", rules)
                   + _route("nosection", "{name: gw, sectionName: zzz}", rules)
                   + _route("otherns", "{name: gw, namespace: shop}", rules, ns="other")
                   + _route("nohost", "{name: gw, sectionName: web}", rules, hostnames="[a.other.test]"))

    def accepted(name: str, ns: str = "shop"):
        st = next(s.to_api() for s in res.statuses if s.name == name and s.namespace == ns)
        return _conds(st["parents"][0]["conditions"])["Accepted"]

    assert accepted("ok") == ("True", "Accepted")
    assert accepted("nogw") == ("False", "NoMatchingParent")
    assert accepted("nosection") == ("False", "NoMatchingParent")
    # web allows only shop; api allows All namespaces but only GRPCRoute.
    assert accepted("otherns", "other") == ("False", "NotAllowedByListeners")
    assert accepted("nohost") == ("False", "NoMatchingListenerHostname")
    web = next(lst for lst in _status(res, "Gateway", "gw")["listeners"] if lst["name"] == "web")
    assert web["attachedRoutes"] == 1


def test_backend_ref_conditions_and_500_routes():
    rules = ("[{matches: [{path: {value: /missing}}], backendRefs: [{name: nope, port: 80}]}, "
             "{matches: [{path: {value: /kind}}], backendRefs: [{kind: Widget, name: web, port: 80}]}, "
             "{matches: [{path: {value: /far}}], backendRefs: [{name: web, namespace: other, port: 80}]}, "
             "{matches: [{path: {value: /noport}}], backendRefs: [{name: web}]}, "
             "{backendRefs: [{name: web, port: 80}]}]")
    res = _resolve(_gateway("gw", "[{name: web, port: 80, protocol: HTTP}]") + _route("r", "{name: gw}", rules))
    st = _status(res, "HTTPRoute", "r")
    conds = _conds(st["parents"][0]["conditions"])
    assert conds["Accepted"] == ("True", "Accepted")
    assert conds["ResolvedRefs"] == ("False", "BackendNotFound")
    msg = next(c["message"] for c in st["parents"][0]["conditions"] if c["type"] == "ResolvedRefs")
    assert "shop/nope" in msg and "Widget" in msg and "ReferenceGrant" in msg and "port is required" in msg
    routes = res.input.listeners[0].chains[0].virtual_hosts[0].routes
    by_path = {r.match.path: r for r in routes}
    assert all(by_path[p].backends[0].cluster == "" for p in ("/missing", "/kind", "/far", "/noport"))
    assert by_path["/"].backends[0].cluster == "gw:shop/web:80"
    envoy = translate_gateway(res.input).routes[0]["virtual_hosts"][0]["routes"]
    assert sum(1 for r in envoy if r.get("direct_response") == {"status": 500}) == 4


def test_precedence_order_within_a_hostname():
    rules = ("[{matches: [{path: {value: /}}], backendRefs: [{name: web, port: 80}]}, "
             "{matches: [{path: {value: /a}}, {path: {type: Exact, value: /a/b}}], backendRefs: [{name: web, port: 80}]},"
             "{matches: [{path: {value: /a}, method: GET}], backendRefs: [{name: web, port: 80}]},"
             "{matches: [{path: {value: /a}, headers: [{name: x, value: '1'}]}], backendRefs: [{name: web, port: 80}]},"
             "{matches: [{path: {type: RegularExpression, value: '/r.*'}}], backendRefs: [{name: web, port: 80}]},"
             "{matches: [{path: {value: /a/long}}], backendRefs: [{name: web, port: 80}]}]")
    res = _resolve(_gateway("gw", "[{name: web, port: 80, protocol: HTTP}]") + _route("r", "{name: gw}", rules))
    order = [(r.match.path_kind, r.match.path, r.match.method, len(r.match.headers))
             for r in res.input.listeners[0].chains[0].virtual_hosts[0].routes]
    assert order == [("exact", "/a/b", "", 0), ("regex", "/r.*", "", 0), ("prefix", "/a/long", "", 0),
                     ("prefix", "/a", "GET", 0), ("prefix", "/a", "", 1), ("prefix", "/a", "", 0),
                     ("prefix", "/", "", 0)]


def test_older_route_wins_a_tie():
    rules = "[{matches: [{path: {value: /x}}], backendRefs: [{name: %s, port: 80}]}]"
    res = _resolve(_gateway("gw", "[{name: web, port: 80, protocol: HTTP}]")
                   + _route("b-new", "{name: gw}", rules % "web", ts="2026-03-01T00:00:00Z")
                   + _route("a-old", "{name: gw}", rules % "api", ts="2026-01-01T00:00:00Z"))
    first = res.input.listeners[0].chains[0].virtual_hosts[0].routes[0]
    assert first.backends[0].cluster == "gw:shop/api:80"


EGRESS = """---
apiVersion: ostium.io/v1alpha1
kind: EgressGatewayPolicy
metadata: {name: %s, creationTimestamp: '%s'}
spec:
  selectors: [{podSelector: {matchLabels: {app: %s}}, namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: default}}}]
  destinationCIDRs: [%s]
  excludedCIDRs: [%s]
  egressGateway: {egressIP: %s}
"""


def test_egress_overlap_older_policy_wins_and_excluded_cidrs_are_cut_out():
    eps = [EgressEndpoint("10.0.0.1", "default", {"app": "a"}), EgressEndpoint("10.0.0.2", "default", {"app": "b"}),
           EgressEndpoint("10.0.0.3", "kube", {"app": "a"})]
    text = (EGRESS % ("young", "2026-02-01T00:00:00Z", "a", "192.0.2.0/28", "", "198.51.100.2")
            + EGRESS % ("old", "2026-01-01T00:00:00Z", "a", "192.0.2.0/24", "192.0.2.128/25", "198.51.100.1")
            + EGRESS % ("other", "2026-03-01T00:00:00Z", "b", "192.0.2.0/24", "", "198.51.100.3"))
    res = _resolve(text, endpoints=eps)
    young = _conds(_status(res, "EgressGatewayPolicy", "young")["conditions"])
    assert young["Conflicted"] == ("True", "Overlapping") and young["Programmed"][0] == "False"
    assert _conds(_status(res, "EgressGatewayPolicy", "old")["conditions"])["Conflicted"] == ("False", "NoConflicts")
    chains = {c.name: c for c in res.input.egress_chains}
    assert set(chains) == {"egress:old", "egress:other"}
    assert chains["egress:old"].sources == ("10.0.0.1",)          # 10.0.0.3 is in another namespace
    assert chains["egress:old"].destinations == ("192.0.2.0/25",)  # minus the excluded /25
    assert chains["egress:other"].sources == ("10.0.0.2",)
    redirect = next(r for r in res.egress_redirects if r.policy == "old")
    assert redirect.to_api() == {"policy": "old", "sources": ["10.0.0.1"], "destinationCIDRs": ["192.0.2.0/24"],
                                 "excludedCIDRs": ["192.0.2.128/25"], "egressIP": "198.51.100.1",
                                 "proxyPort": 15003}


def test_ingress_class_and_default_backend():
    ing = """---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: %s, namespace: shop}
spec:
  %s
  defaultBackend: {service: {name: api, port: {number: 80}}}
  rules: [{host: a.test, http: {paths: [{path: /x/, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}},
                                        {path: /x/y, pathType: Exact, backend: {service: {name: nope, port: {number: 80}}}}]}}]
"""
    res = _resolve(ing % ("mine", "") + ing % ("theirs", "ingressClassName: nginx"))
    assert _conds(_status(res, "Ingress", "theirs")["conditions"])["Accepted"] == ("False", "Pending")
    mine = _conds(_status(res, "Ingress", "mine")["conditions"])
    assert mine["ResolvedRefs"] == ("False", "BackendNotFound")
    (listener,) = res.input.listeners
    assert listener.port == 80
    vhosts = {vh.domains[0]: vh for vh in listener.chains[0].virtual_hosts}
    assert [(r.match.path_kind, r.match.path) for r in vhosts["a.test"].routes] == [
        ("exact", "/x/y"), ("prefix", "/x/"), ("prefix", "/")]
    assert [r.backends[0].cluster for r in vhosts["*"].routes] == ["gw:shop/api:80"]


def test_translation_is_valid_envoy_config():
    text = (_gateway("gw", "[{name: web, port: 80, protocol: HTTP}, {name: tls, port: 443, protocol: HTTPS, "
                           "tls: {certificateRefs: [{name: c}]}}]") + _secret("c", "good")
            + _route("r", "{name: gw}", "[{matches: [{path: {value: /a}, headers: [{name: x, type: RegularExpression, "
                     "value: 'v.*'}], queryParams: [{name: q, value: '1'}]}], filters: [{type: RequestHeaderModifier, "
                     "requestHeaderModifier: {add: [{name: a, value: b}], remove: [c]}}, {type: URLRewrite, urlRewrite: "
                     "{hostname: h.test, path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}], backendRefs: "
                     "[{name: web, port: 80, weight: 2}, {name: nope, port: 80}]}, {filters: [{type: RequestRedirect, "
                     "requestRedirect: {scheme: https, statusCode: 301}}]}]")
            + _route("g", "{name: gw}", "[{matches: [{method: {type: RegularExpression, service: 'a\\\\..*'}}], "
                     "backendRefs: [{name: api, port: 80}]}]", kind="GRPCRoute")
            + (EGRESS % ("e", "", "a", "192.0.2.0/24", "", "198.51.100.1")).replace(
                "egressGateway: {egressIP: 198.51.100.1}", "egressGateway: {egressIP: 198.51.100.1}\n"
                "  rules: {http: [{method: GET, headers: ['X-A: 1', X-B]}]}"))
    res = _resolve(text, endpoints=[EgressEndpoint("10.0.0.1", "default", {"app": "a"})])
    out = translate_gateway(res.input)
    counts = {t: len(items) for t, items in out.by_type().items()}
    assert counts == {TypeURL.CLUSTER.value: 3, TypeURL.LISTENER.value: 3, TypeURL.ROUTE.value: 2,
                      TypeURL.SECRET.value: 1}
    for type_url, items in out.by_type().items():
        for item in items:
            from_dict(type_url, item)   # raises ValidationError on anything Envoy's protos reject
    http_routes = out.routes[0]["virtual_hosts"][0]["routes"]
    assert http_routes[0]["match"]["grpc"] == {}          # gRPC routes first
    weighted = next(r for r in http_routes if "weighted_clusters" in r.get("route", {}))
    assert weighted["route"]["cluster_not_found_response_code"] == "INTERNAL_SERVER_ERROR"


def test_status_rows_explain_the_first_failure():
    res = _resolve(_gateway("gw", "[{name: web, port: 80, protocol: HTTP}]")
                   + _route("r", "{name: gw}", "[{backendRefs: [{name: nope, port: 80}]}]"))
    rows = status_rows([s.to_api() for s in res.statuses])
    parent = next(r for r in rows if r["kind"].strip() == "parent")
    assert (parent["accepted"], parent["resolved"], parent["reason"]) == ("True", "False", "BackendNotFound")
    gw = next(r for r in rows if r["kind"] == "Gateway")
    assert (gw["accepted"], gw["programmed"], gw["reason"]) == ("True", "True", "")


@pytest.mark.parametrize("cls, accepted", [("ostium", "True"), ("other", "False")])
def test_gateway_class(cls, accepted):
    res = _resolve(_gateway("gw", "[{name: web, port: 80, protocol: HTTP}]").replace("ostium", cls))
    assert _conds(_status(res, "Gateway", "gw")["conditions"])["Accepted"][0] == accepted


def test_examples_parse_and_resolve():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "examples" / "gateways"
    text = "\n---\n".join(p.read_text() for p in sorted(root.glob("*.yaml")))
    res = resolve(load_objects(text), GatewaySettings(), lambda ns, s, p: [("10.0.0.9", 8080)],
                  endpoints=[EgressEndpoint("10.0.0.1", "shop", {"app": "billing"})])
    edge = _status(res, "Gateway", "edge")
    https = next(lst for lst in edge["listeners"] if lst["name"] == "https")
    assert _conds(https["conditions"])["ResolvedRefs"] == ("False", "InvalidCertificateRef")   # placeholder PEM
    assert all(_conds(s.to_api()["conditions"]).get("Accepted", ("True",))[0] == "True" for s in res.statuses)
    assert sorted(lst.port for lst in res.input.listeners) == [80, 8080]
    (chain,) = res.input.egress_chains
    assert chain.sources == ("10.0.0.1",) and chain.http[0].host == r"api\.partner\.example"


def test_http_listener_isolation():
    """gateway-http-listener-isolation: a host goes only to routes of the most specific listener."""
    gw = _gateway("gw", "[{name: empty, port: 80, protocol: HTTP}, {name: wild, port: 80, protocol: HTTP, "
                        "hostname: '*.example.com'}, {name: exact, port: 80, protocol: HTTP, hostname: a.example.com}]")
    rule = "[{backendRefs: [{name: %s, port: 80}]}]"
    res = _resolve(gw + _route("r-empty", "{name: gw, sectionName: empty}", rule % "web",
                               hostnames="[a.example.com, b.example.com, other.test]")
                   + _route("r-wild", "{name: gw, sectionName: wild}", rule % "api")
                   + _route("r-exact", "{name: gw, sectionName: exact}", rule % "web"))
    vhosts = {vh.domains[0]: [r.name.split("/")[2] for r in vh.routes]
              for vh in res.input.listeners[0].chains[0].virtual_hosts}
    assert vhosts == {"a.example.com": ["r-exact"], "*.example.com": ["r-wild"], "other.test": ["r-empty"]}


def test_programmed_objects_report_the_node_address():
    res = resolve(load_objects(_gateway("gw", "[{name: web, port: 80, protocol: HTTP}]")),
                  GatewaySettings(options=GatewayOptions(address="192.0.2.7")), lambda *a: None)
    assert _status(res, "Gateway", "gw")["addresses"] == [{"type": "IPAddress", "value": "192.0.2.7"}]
