"""Gateway manifests: parsing, and bad input rejected with the field path (nothing applied)."""

from __future__ import annotations

import base64
import textwrap

import pytest

from mesh.errors import ValidationError
from mesh.gateway.model import ListenerProtocol, MatchType, PathType
from mesh.gateway.testing import load_objects
from mesh.manifests import known_kinds

GW = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  gatewayClassName: ostium
  listeners: %s
"""
ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{name: edge}]
  rules:
  - %s
"""


def test_gateway_kinds_are_registered():
    kinds = known_kinds()
    for k in ("gateway.networking.k8s.io/v1 Gateway", "gateway.networking.k8s.io/v1 HTTPRoute",
              "gateway.networking.k8s.io/v1 GRPCRoute", "networking.k8s.io/v1 Ingress", "v1 Secret",
              "ostium.io/v1alpha1 EgressGatewayPolicy"):
        assert k in kinds


def test_full_httproute_parses():
    objs = load_objects(ROUTE % textwrap.dedent("""\
        matches:
          - path: {type: Exact, value: /a}
            headers: [{name: X-A, value: "1"}, {name: X-B, type: RegularExpression, value: "v[0-9]+"}]
            queryParams: [{name: q, value: x}]
            method: POST
        filters:
          - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: A, value: b}], remove: [C]}}
        backendRefs: [{name: svc, port: 80, weight: 3}]""").replace("\n", "\n    "))
    rule = objs.routes[0].rules[0]
    m = rule.matches[0]
    assert m.path.type is PathType.EXACT and m.method == "POST"
    assert [h.type for h in m.headers] == [MatchType.EXACT, MatchType.REGEX]
    assert rule.backends[0].weight == 3 and rule.backends[0].namespace == "shop"
    assert rule.filters.request_headers.set == (("A", "b"),)


@pytest.mark.parametrize("fragment, path, message", [
    ("matches: [{path: {type: Glob, value: /x}}]", "spec.rules[0].matches[0].path.type", "not supported"),
    ("matches: [{path: {value: x}}]", "spec.rules[0].matches[0].path.value", "must start with '/'"),
    ("matches: [{path: {type: RegularExpression, value: '(['}}]", "spec.rules[0].matches[0].path.value",
     "invalid regular expression"),
    ("matches: [{method: FETCH}]", "spec.rules[0].matches[0].method", "not one of"),
    ("matches: [{headers: [{name: 'bad header', value: x}]}]", "spec.rules[0].matches[0].headers[0].name",
     "invalid header name"),
    ("backendRefs: [{name: svc, port: 70000}]", "spec.rules[0].backendRefs[0].port", "1 to 65535"),
    ("backendRefs: [{name: svc, port: 80, weight: -1}]", "spec.rules[0].backendRefs[0].weight", "0 to 1000000"),
    ("filters: [{type: RequestRedirect, requestRedirect: {statusCode: 307}}]",
     "spec.rules[0].filters[0].requestRedirect.statusCode", "301 or 302"),
    ("filters: [{type: RequestMirror}]", "spec.rules[0].filters[0].type", "not supported"),
    ("{matches: [{path: {type: Exact, value: /a}}], filters: [{type: URLRewrite, urlRewrite: "
     "{path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]}", "spec.rules[0].filters", "PathPrefix"),
])
def test_bad_httproute_names_the_field(fragment, path, message):
    with pytest.raises(ValidationError) as exc:
        load_objects(ROUTE % fragment)
    assert exc.value.path == path and message in exc.value.message
    assert "HTTPRoute shop/web" in str(exc.value)


@pytest.mark.parametrize("listeners, path, message", [
    ("[{name: a, port: 80, protocol: UDP}]", "spec.listeners[0].protocol", "not supported"),
    ("[{name: a, port: 443, protocol: HTTPS}]", "spec.listeners[0].tls", "certificateRefs"),
    ("[{name: a, port: 80, protocol: HTTP}, {name: a, port: 81, protocol: HTTP}]", "spec.listeners[1].name",
     "already used"),
    ("[{name: a, port: 80, protocol: HTTP, hostname: 'Foo.example'}]", "spec.listeners[0].hostname",
     "not a valid hostname"),
    ("[{name: a, port: 80, protocol: HTTP, hostname: 10.0.0.1}]", "spec.listeners[0].hostname", "IP address"),
    ("[]", "spec.listeners", "at least one"),
])
def test_bad_gateway_names_the_field(listeners, path, message):
    with pytest.raises(ValidationError) as exc:
        load_objects(GW % listeners)
    assert exc.value.path == path and message in exc.value.message


def test_grpcroute_method_validation():
    route = """
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: shop}
spec:
  rules: [{matches: [{method: %s}]}]
"""
    objs = load_objects(route % "{service: pkg.Svc, method: Get}")
    assert objs.routes[0].rules[0].matches[0].method.service == "pkg.Svc"
    with pytest.raises(ValidationError, match="one of service or method") as exc:
        load_objects(route % "{type: Exact}")
    assert exc.value.path == "spec.rules[0].matches[0].method"
    with pytest.raises(ValidationError, match="not a valid gRPC method name"):
        load_objects(route % "{service: pkg.Svc, method: a.b}")


def test_ingress_and_secret():
    crt = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nx\n").decode()
    objs = load_objects(f"""
apiVersion: v1
kind: Secret
metadata: {{name: c, namespace: shop}}
type: kubernetes.io/tls
data: {{tls.crt: {crt}, tls.key: {crt}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: i, namespace: shop}}
spec:
  tls: [{{hosts: [a.example], secretName: c}}]
  rules:
  - host: a.example
    http: {{paths: [{{path: /x, pathType: Prefix, backend: {{service: {{name: s, port: {{name: http}}}}}}}}]}}
""")
    assert objs.secrets[("shop", "c")].cert_pem.startswith("-----BEGIN CERTIFICATE")
    ing = objs.ingresses[0]
    assert ing.rules[0].paths[0].backend.port_name == "http" and ing.tls[0].secret_name == "c"
    with pytest.raises(ValidationError) as exc:
        load_objects("apiVersion: v1\nkind: Secret\nmetadata: {name: c}\ntype: kubernetes.io/tls\n"
                     "data: {tls.crt: '!!notbase64', tls.key: ''}\n")
    assert exc.value.path == "data.tls.crt"
    with pytest.raises(ValidationError) as exc:
        load_objects("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: i}\nspec:\n"
                     "  rules: [{http: {paths: [{path: /, pathType: Regex, backend: {service: {name: s, "
                     "port: {number: 80}}}}]}}]\n")
    assert exc.value.path == "spec.rules[0].http.paths[0].pathType"


@pytest.mark.parametrize("spec, path", [
    ("{selectors: [], destinationCIDRs: [10.0.0.0/8], egressGateway: {egressIP: 10.1.1.1}}", "spec.selectors"),
    ("{selectors: [{podSelector: {}}], destinationCIDRs: [10.0.0.0/33], egressGateway: {egressIP: 10.1.1.1}}",
     "spec.destinationCIDRs[0]"),
    ("{selectors: [{podSelector: {}}], destinationCIDRs: [10.0.0.0/8], egressGateway: {}}", "spec.egressGateway"),
    ("{selectors: [{podSelector: {}}], destinationCIDRs: [10.0.0.0/8], egressGateway: {egressIP: x}}",
     "spec.egressGateway.egressIP"),
    ("{selectors: [{podSelector: {matchExpressions: [{key: a, operator: In}]}}], destinationCIDRs: [10.0.0.0/8],"
     " egressGateway: {egressIP: 10.1.1.1}}", "spec.selectors[0].podSelector.matchExpressions[0].values"),
    ("{selectors: [{podSelector: {}}], destinationCIDRs: [10.0.0.0/8], egressGateway: {egressIP: 10.1.1.1},"
     " rules: {http: [{method: '(['}]}}", "spec.rules.http[0].method"),
])
def test_bad_egress_policy_names_the_field(spec, path):
    with pytest.raises(ValidationError) as exc:
        load_objects(f"apiVersion: ostium.io/v1alpha1\nkind: EgressGatewayPolicy\nmetadata: {{name: e}}\nspec: {spec}\n")
    assert exc.value.path == path


def test_listener_protocols():
    objs = load_objects(GW % "[{name: a, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}]")
    lst = objs.gateways[0].listeners[0]
    assert lst.protocol is ListenerProtocol.HTTP and lst.allowed_namespaces == "All"
