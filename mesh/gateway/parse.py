"""Parsing and validation of gateway manifests (pure). Errors name the field: `spec.rules[0].matches[1].path.type`.

Structural errors (a field of the wrong type, an unknown path match type, an invalid regex) reject
the document, as the Kubernetes API server's schema validation would. References to other objects
(backends, parents, certificates) are not checked here: a dangling reference is reported in the
object's status conditions (mesh.gateway.resolve), and the rest of the configuration keeps serving.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from typing import Any

from mesh.errors import ValidationError
from mesh.gateway.model import (GATEWAY_GROUP, KIND_GATEWAY, KIND_GRPCROUTE, KIND_HTTPROUTE, BackendRef,
                                EgressGatewayPolicy, EgressHTTPRule, EndpointSelector, Filters, Gateway,
                                GatewayListener, GRPCMatch, GRPCMethodMatch, GRPCRouteRule, HeaderModifier,
                                HTTPMatch, HTTPRouteRule, Ingress, IngressBackend, IngressClass, IngressPath,
                                IngressRule, IngressTLS, LabelRequirement, ListenerProtocol, MatchType, Meta,
                                ParentRef, PathMatch, PathModifier, PathType, RequestRedirect, Route, SecretRef,
                                TLSSecret, URLRewrite)
from mesh.labels import name_error
from mesh.manifests import Document, check_fields, expect_type, parse_metadata

_HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_|~`]+$")
_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
_GRPC_NAME = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*(\.[A-Za-z_][A-Za-z_0-9]*)*$")
_TOP = ("apiVersion", "kind", "metadata", "spec", "status")


# ---- small helpers -------------------------------------------------------------------------------


def _meta(body: dict, *, namespaced: bool = True) -> Meta:
    check_fields(body, "", _TOP + (("type", "data", "stringData", "immutable") if body.get("kind") == "Secret" else ()))
    m = parse_metadata(body, namespaced=namespaced)
    created = (body.get("metadata") or {}).get("creationTimestamp") or ""
    return Meta(m.name, m.namespace, str(created))


def _spec(body: dict) -> dict:
    spec = body.get("spec")
    if spec is None:
        raise ValidationError("required field is missing", path="spec")
    return expect_type(spec, dict, "spec", "a mapping")


def _list(value: Any, path: str, *, max_items: int = 0) -> list:
    if value is None:
        return []
    expect_type(value, list, path, "a list")
    if max_items and len(value) > max_items:
        raise ValidationError(f"at most {max_items} items are allowed, got {len(value)}", path=path)
    return value


def _str(value: Any, path: str, *, allow_empty: bool = False) -> str:
    expect_type(value, str, path, "a string")
    if not value and not allow_empty:
        raise ValidationError("must not be empty", path=path)
    return value


def _port(value: Any, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ValidationError(f"must be an integer from 1 to 65535, got {value!r}", path=path)
    return value


def _hostname(value: Any, path: str, *, wildcard: bool = True) -> str:
    host = _str(value, path)
    if host != host.lower() or not _HOSTNAME.match(host) or len(host) > 253:
        raise ValidationError(f"{host!r} is not a valid hostname (lowercase DNS name"
                              f"{', optionally prefixed with *.' if wildcard else ''})", path=path)
    if host.startswith("*.") and not wildcard:
        raise ValidationError(f"{host!r}: a wildcard is not allowed here", path=path)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    raise ValidationError(f"{host!r} is an IP address; a hostname is required", path=path)


def _regex(value: str, path: str) -> str:
    from xdsserver.translate.validate import check_regex
    check_regex(value, path)
    return value


def _object_name(value: Any, path: str) -> str:
    name = _str(value, path)
    err = name_error(name, "name")
    if err:
        raise ValidationError(err, path=path)
    return name


# ---- Secret --------------------------------------------------------------------------------------


def parse_secret(doc: Document) -> TLSSecret:
    """`v1 Secret`: Ostium uses type kubernetes.io/tls (tls.crt, tls.key; base64 in `data`,
    plain text in `stringData`). Other types are accepted and ignored (a Kubernetes habit)."""
    body = doc.body
    meta = _meta(body)
    stype = body.get("type", "Opaque")
    _str(stype, "type")
    data = body.get("data") or {}
    expect_type(data, dict, "data", "a mapping")
    decoded: dict[str, str] = {}
    for key, value in data.items():
        _str(value, f"data.{key}", allow_empty=True)
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValidationError("is not valid base64", path=f"data.{key}") from None
        decoded[key] = raw.decode("utf-8", errors="replace")
    string_data = body.get("stringData") or {}
    expect_type(string_data, dict, "stringData", "a mapping")
    for key, value in string_data.items():
        decoded[key] = _str(value, f"stringData.{key}", allow_empty=True)
    if stype == "kubernetes.io/tls":
        for key in ("tls.crt", "tls.key"):
            if key not in decoded:
                raise ValidationError("a kubernetes.io/tls secret needs tls.crt and tls.key", path=f"data.{key}")
    return TLSSecret(meta, stype, decoded.get("tls.crt", ""), decoded.get("tls.key", ""))


# ---- Gateway -------------------------------------------------------------------------------------


def _secret_ref(obj: Any, path: str, namespace: str) -> SecretRef:
    check_fields(obj, path, ("group", "kind", "name", "namespace"), required=("name",))
    return SecretRef(name=_object_name(obj["name"], f"{path}.name"),
                     namespace=_str(obj.get("namespace", namespace), f"{path}.namespace"),
                     kind=_str(obj.get("kind", "Secret"), f"{path}.kind"),
                     group=_str(obj.get("group", ""), f"{path}.group", allow_empty=True))


def _listener(obj: Any, path: str, namespace: str) -> GatewayListener:
    check_fields(obj, path, ("name", "hostname", "port", "protocol", "tls", "allowedRoutes"),
                 required=("name", "port", "protocol"))
    name = _str(obj["name"], f"{path}.name")
    port = _port(obj["port"], f"{path}.port")
    proto_raw = _str(obj["protocol"], f"{path}.protocol")
    try:
        protocol = ListenerProtocol(proto_raw)
    except ValueError:
        raise ValidationError(f"protocol {proto_raw!r} is not supported (HTTP, HTTPS)",
                              path=f"{path}.protocol") from None
    hostname = _hostname(obj["hostname"], f"{path}.hostname") if obj.get("hostname") else ""
    certs: tuple[SecretRef, ...] = ()
    tls = obj.get("tls")
    if protocol is ListenerProtocol.HTTPS:
        if tls is None:
            raise ValidationError("an HTTPS listener needs tls.certificateRefs", path=f"{path}.tls")
        check_fields(tls, f"{path}.tls", ("mode", "certificateRefs", "options"))
        mode = tls.get("mode", "Terminate")
        if mode != "Terminate":
            raise ValidationError(f"tls mode {mode!r} is not supported (Terminate)", path=f"{path}.tls.mode")
        refs = _list(tls.get("certificateRefs"), f"{path}.tls.certificateRefs", max_items=64)
        if not refs:
            raise ValidationError("must name at least one Secret", path=f"{path}.tls.certificateRefs")
        certs = tuple(_secret_ref(r, f"{path}.tls.certificateRefs[{i}]", namespace) for i, r in enumerate(refs))
    elif tls is not None:
        raise ValidationError("tls is only allowed on HTTPS listeners", path=f"{path}.tls")
    allowed_ns, kinds = "Same", ()
    ar = obj.get("allowedRoutes")
    if ar is not None:
        check_fields(ar, f"{path}.allowedRoutes", ("namespaces", "kinds"))
        nsobj = ar.get("namespaces") or {}
        check_fields(nsobj, f"{path}.allowedRoutes.namespaces", ("from", "selector"))
        allowed_ns = nsobj.get("from", "Same")
        if allowed_ns not in ("Same", "All"):
            raise ValidationError(f"namespaces.from {allowed_ns!r} is not supported (Same, All)",
                                  path=f"{path}.allowedRoutes.namespaces.from")
        kl = []
        for i, k in enumerate(_list(ar.get("kinds"), f"{path}.allowedRoutes.kinds")):
            kp = f"{path}.allowedRoutes.kinds[{i}]"
            check_fields(k, kp, ("group", "kind"), required=("kind",))
            kl.append(_str(k["kind"], f"{kp}.kind"))
        kinds = tuple(kl)
    return GatewayListener(name, port, protocol, hostname, certs, allowed_ns, kinds)


def parse_gateway(doc: Document) -> Gateway:
    body = doc.body
    meta = _meta(body)
    spec = _spec(body)
    check_fields(spec, "spec", ("gatewayClassName", "listeners", "addresses", "infrastructure"),
                 required=("gatewayClassName", "listeners"))
    cls = _str(spec["gatewayClassName"], "spec.gatewayClassName")
    raw = _list(spec["listeners"], "spec.listeners", max_items=64)
    if not raw:
        raise ValidationError("must list at least one listener", path="spec.listeners")
    listeners = tuple(_listener(obj, f"spec.listeners[{i}]", meta.namespace) for i, obj in enumerate(raw))
    seen: dict[str, int] = {}
    for i, lst in enumerate(listeners):
        if lst.name in seen:
            raise ValidationError(f"listener name {lst.name!r} is already used by spec.listeners[{seen[lst.name]}]",
                                  path=f"spec.listeners[{i}].name")
        seen[lst.name] = i
    return Gateway(meta, cls, listeners)


# ---- routes --------------------------------------------------------------------------------------


def _parent_ref(obj: Any, path: str, namespace: str) -> ParentRef:
    check_fields(obj, path, ("group", "kind", "namespace", "name", "sectionName", "port"), required=("name",))
    port = _port(obj["port"], f"{path}.port") if "port" in obj else 0
    return ParentRef(name=_object_name(obj["name"], f"{path}.name"),
                     namespace=_str(obj.get("namespace", namespace), f"{path}.namespace"),
                     section_name=_str(obj.get("sectionName", ""), f"{path}.sectionName", allow_empty=True),
                     port=port, group=_str(obj.get("group", GATEWAY_GROUP), f"{path}.group", allow_empty=True),
                     kind=_str(obj.get("kind", KIND_GATEWAY), f"{path}.kind"))


def _backend_ref(obj: Any, path: str, namespace: str) -> BackendRef:
    check_fields(obj, path, ("group", "kind", "name", "namespace", "port", "weight", "filters"), required=("name",))
    if obj.get("filters"):
        raise ValidationError("backendRef filters are not supported; put filters on the rule", path=f"{path}.filters")
    weight = obj.get("weight", 1)
    if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 1_000_000:
        raise ValidationError(f"must be an integer from 0 to 1000000, got {weight!r}", path=f"{path}.weight")
    port = _port(obj["port"], f"{path}.port") if "port" in obj else 0
    return BackendRef(name=_object_name(obj["name"], f"{path}.name"),
                      namespace=_str(obj.get("namespace", namespace), f"{path}.namespace"),
                      port=port, weight=weight,
                      group=_str(obj.get("group", ""), f"{path}.group", allow_empty=True),
                      kind=_str(obj.get("kind", "Service"), f"{path}.kind"))


def _value_match(obj: Any, path: str, *, header: bool) -> tuple:
    check_fields(obj, path, ("type", "name", "value"), required=("name", "value"))
    mtype_raw = obj.get("type", "Exact")
    try:
        mtype = MatchType(mtype_raw)
    except ValueError:
        raise ValidationError(f"match type {mtype_raw!r} is not supported (Exact, RegularExpression)",
                              path=f"{path}.type") from None
    name = _str(obj["name"], f"{path}.name")
    if header and not _HEADER_NAME.match(name):
        raise ValidationError(f"invalid header name {name!r}", path=f"{path}.name")
    value = _str(obj["value"], f"{path}.value", allow_empty=True)
    if any(c in value for c in "\r\n\0"):
        raise ValidationError("value contains CR, LF or NUL", path=f"{path}.value")
    if mtype is MatchType.REGEX:
        _regex(value, f"{path}.value")
    return mtype, name, value


def _value_matches(raw: Any, path: str, *, header: bool):
    from mesh.gateway.model import ValueMatch

    out, seen = [], set()
    for i, obj in enumerate(_list(raw, path, max_items=16)):
        mtype, name, value = _value_match(obj, f"{path}[{i}]", header=header)
        key = name.lower() if header else name
        if key in seen:   # the spec: only the first match of a name counts; we reject the ambiguity
            raise ValidationError(f"{name!r} is matched twice", path=f"{path}[{i}].name")
        seen.add(key)
        out.append(ValueMatch(mtype, name, value))
    return tuple(out)


def _path_match(obj: Any, path: str) -> PathMatch:
    check_fields(obj, path, ("type", "value"))
    ptype_raw = obj.get("type", "PathPrefix")
    try:
        ptype = PathType(ptype_raw)
    except ValueError:
        raise ValidationError(f"path match type {ptype_raw!r} is not supported (Exact, PathPrefix, "
                              "RegularExpression)", path=f"{path}.type") from None
    value = _str(obj.get("value", "/"), f"{path}.value")
    if ptype is PathType.REGEX:
        _regex(value, f"{path}.value")
    else:
        if not value.startswith("/"):
            raise ValidationError(f"{value!r} must start with '/'", path=f"{path}.value")
        if "//" in value or "/./" in value or "/../" in value or "?" in value or "#" in value:
            raise ValidationError(f"{value!r} must be a normalized path without query or fragment",
                                  path=f"{path}.value")
    return PathMatch(ptype, value)


def _http_match(obj: Any, path: str) -> HTTPMatch:
    check_fields(obj, path, ("path", "headers", "queryParams", "method"))
    pm = _path_match(obj["path"], f"{path}.path") if obj.get("path") is not None else PathMatch(PathType.PREFIX, "/")
    method = ""
    if obj.get("method") is not None:
        method = _str(obj["method"], f"{path}.method")
        if method not in _METHODS:
            raise ValidationError(f"method {method!r} is not one of {', '.join(_METHODS)}", path=f"{path}.method")
    return HTTPMatch(pm, _value_matches(obj.get("headers"), f"{path}.headers", header=True),
                     _value_matches(obj.get("queryParams"), f"{path}.queryParams", header=False), method)


def _header_modifier(obj: Any, path: str) -> HeaderModifier:
    check_fields(obj, path, ("set", "add", "remove"))

    def pairs(key: str) -> tuple[tuple[str, str], ...]:
        out = []
        for i, h in enumerate(_list(obj.get(key), f"{path}.{key}", max_items=16)):
            hp = f"{path}.{key}[{i}]"
            check_fields(h, hp, ("name", "value"), required=("name", "value"))
            name = _str(h["name"], f"{hp}.name")
            if not _HEADER_NAME.match(name):
                raise ValidationError(f"invalid header name {name!r}", path=f"{hp}.name")
            value = _str(h["value"], f"{hp}.value", allow_empty=True)
            if any(c in value for c in "\r\n\0"):
                raise ValidationError("value contains CR, LF or NUL", path=f"{hp}.value")
            out.append((name, value))
        return tuple(out)

    remove = tuple(_str(n, f"{path}.remove[{i}]") for i, n in enumerate(_list(obj.get("remove"), f"{path}.remove")))
    return HeaderModifier(pairs("set"), pairs("add"), remove)


def _path_modifier(obj: Any, path: str) -> PathModifier:
    check_fields(obj, path, ("type", "replaceFullPath", "replacePrefixMatch"), required=("type",))
    ptype = obj["type"]
    if ptype == "ReplaceFullPath":
        value = obj.get("replaceFullPath")
    elif ptype == "ReplacePrefixMatch":
        value = obj.get("replacePrefixMatch")
    else:
        raise ValidationError(f"{ptype!r} is not ReplaceFullPath or ReplacePrefixMatch", path=f"{path}.type")
    key = "replaceFullPath" if ptype == "ReplaceFullPath" else "replacePrefixMatch"
    value = _str(value, f"{path}.{key}")
    if not value.startswith("/"):
        raise ValidationError(f"{value!r} must start with '/'", path=f"{path}.{key}")
    return PathModifier(ptype, value)


def _filters(raw: Any, path: str, matches: tuple, *, grpc: bool) -> Filters:
    req = resp = redirect = rewrite = None
    for i, f in enumerate(_list(raw, path, max_items=16)):
        fp = f"{path}[{i}]"
        check_fields(f, fp, ("type", "requestHeaderModifier", "responseHeaderModifier", "requestRedirect",
                             "urlRewrite", "requestMirror", "extensionRef"), required=("type",))
        ftype = f["type"]
        if ftype == "RequestHeaderModifier" and req is None:
            req = _header_modifier(f.get("requestHeaderModifier") or {}, f"{fp}.requestHeaderModifier")
        elif ftype == "ResponseHeaderModifier" and resp is None:
            resp = _header_modifier(f.get("responseHeaderModifier") or {}, f"{fp}.responseHeaderModifier")
        elif ftype == "RequestRedirect" and not grpc and redirect is None:
            r = f.get("requestRedirect") or {}
            rp = f"{fp}.requestRedirect"
            check_fields(r, rp, ("scheme", "hostname", "path", "port", "statusCode"))
            scheme = r.get("scheme") or ""
            if scheme not in ("", "http", "https"):
                raise ValidationError(f"scheme {scheme!r} is not http or https", path=f"{rp}.scheme")
            status = r.get("statusCode", 302)
            if status not in (301, 302):
                raise ValidationError(f"statusCode must be 301 or 302, got {status!r}", path=f"{rp}.statusCode")
            pmod = _path_modifier(r["path"], f"{rp}.path") if r.get("path") else None
            redirect = RequestRedirect(scheme, _hostname(r["hostname"], f"{rp}.hostname", wildcard=False)
                                       if r.get("hostname") else "",
                                       _port(r["port"], f"{rp}.port") if r.get("port") else 0, pmod, status)
        elif ftype == "URLRewrite" and not grpc and rewrite is None:
            r = f.get("urlRewrite") or {}
            rp = f"{fp}.urlRewrite"
            check_fields(r, rp, ("hostname", "path"))
            rewrite = URLRewrite(_hostname(r["hostname"], f"{rp}.hostname", wildcard=False)
                                 if r.get("hostname") else "",
                                 _path_modifier(r["path"], f"{rp}.path") if r.get("path") else None)
        elif ftype in ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite"):
            if grpc and ftype in ("RequestRedirect", "URLRewrite"):
                raise ValidationError(f"{ftype} is not allowed in a GRPCRoute", path=f"{fp}.type")
            raise ValidationError(f"{ftype} may appear once per rule", path=f"{fp}.type")
        else:
            raise ValidationError(f"filter type {ftype!r} is not supported (RequestHeaderModifier, "
                                  "ResponseHeaderModifier, RequestRedirect, URLRewrite)", path=f"{fp}.type")
    if redirect is not None and rewrite is not None:
        raise ValidationError("RequestRedirect and URLRewrite cannot both be set", path=path)
    for pm in (redirect.path if redirect else None, rewrite.path if rewrite else None):
        if pm is not None and pm.type == "ReplacePrefixMatch":
            if any(m.path.type is not PathType.PREFIX for m in matches):
                raise ValidationError("ReplacePrefixMatch needs every match of the rule to be a PathPrefix match",
                                      path=path)
    return Filters(req, resp, redirect, rewrite)


def _grpc_match(obj: Any, path: str) -> GRPCMatch:
    check_fields(obj, path, ("method", "headers"))
    method = None
    if obj.get("method") is not None:
        m = obj["method"]
        mp = f"{path}.method"
        check_fields(m, mp, ("type", "service", "method"))
        try:
            mtype = MatchType(m.get("type", "Exact"))
        except ValueError:
            raise ValidationError(f"match type {m.get('type')!r} is not supported (Exact, RegularExpression)",
                                  path=f"{mp}.type") from None
        service = _str(m.get("service", ""), f"{mp}.service", allow_empty=True)
        meth = _str(m.get("method", ""), f"{mp}.method", allow_empty=True)
        if not service and not meth:
            raise ValidationError("one of service or method must be given", path=mp)
        for key, value in (("service", service), ("method", meth)):
            if not value:
                continue
            if mtype is MatchType.EXACT and not _GRPC_NAME.match(value) or (key == "method" and "." in value
                                                                              and mtype is MatchType.EXACT):
                raise ValidationError(f"{value!r} is not a valid gRPC {key} name", path=f"{mp}.{key}")
            if mtype is MatchType.REGEX:
                _regex(value, f"{mp}.{key}")
        method = GRPCMethodMatch(mtype, service, meth)
    return GRPCMatch(method, _value_matches(obj.get("headers"), f"{path}.headers", header=True))


def _route(doc: Document, kind: str) -> Route:
    body = doc.body
    meta = _meta(body)
    spec = _spec(body)
    check_fields(spec, "spec", ("parentRefs", "hostnames", "rules"))
    parents = tuple(_parent_ref(p, f"spec.parentRefs[{i}]", meta.namespace)
                    for i, p in enumerate(_list(spec.get("parentRefs"), "spec.parentRefs", max_items=32)))
    hostnames = tuple(_hostname(h, f"spec.hostnames[{i}]")
                      for i, h in enumerate(_list(spec.get("hostnames"), "spec.hostnames", max_items=16)))
    grpc = kind == KIND_GRPCROUTE
    rules: list = []
    raw_rules = _list(spec.get("rules"), "spec.rules", max_items=16) or [{}]
    for i, r in enumerate(raw_rules):
        rp = f"spec.rules[{i}]"
        check_fields(r, rp, ("name", "matches", "filters", "backendRefs", "timeouts", "retry", "sessionPersistence"))
        raw_matches = _list(r.get("matches"), f"{rp}.matches", max_items=64)
        if grpc:
            matches = tuple(_grpc_match(m, f"{rp}.matches[{j}]") for j, m in enumerate(raw_matches)) or (GRPCMatch(),)
        else:
            matches = tuple(_http_match(m, f"{rp}.matches[{j}]") for j, m in enumerate(raw_matches)) or (HTTPMatch(),)
        backends = tuple(_backend_ref(b, f"{rp}.backendRefs[{j}]", meta.namespace)
                         for j, b in enumerate(_list(r.get("backendRefs"), f"{rp}.backendRefs", max_items=16)))
        filters = _filters(r.get("filters"), f"{rp}.filters", matches if not grpc else (), grpc=grpc)
        rule_cls = GRPCRouteRule if grpc else HTTPRouteRule
        rules.append(rule_cls(matches, filters, backends))
    return Route(kind, meta, parents, hostnames, tuple(rules))


def parse_httproute(doc: Document) -> Route:
    return _route(doc, KIND_HTTPROUTE)


def parse_grpcroute(doc: Document) -> Route:
    return _route(doc, KIND_GRPCROUTE)


# ---- Ingress -------------------------------------------------------------------------------------


def _ingress_backend(obj: Any, path: str) -> IngressBackend:
    check_fields(obj, path, ("service", "resource"))
    if "resource" in obj:
        raise ValidationError("resource backends are not supported; name a service", path=f"{path}.resource")
    svc = obj.get("service")
    if svc is None:
        raise ValidationError("required field is missing", path=f"{path}.service")
    sp = f"{path}.service"
    check_fields(svc, sp, ("name", "port"), required=("name", "port"))
    port = svc["port"]
    check_fields(port, f"{sp}.port", ("number", "name"))
    if ("number" in port) == ("name" in port):
        raise ValidationError("give exactly one of number or name", path=f"{sp}.port")
    if "number" in port:
        return IngressBackend(_object_name(svc["name"], f"{sp}.name"), port=_port(port["number"], f"{sp}.port.number"))
    return IngressBackend(_object_name(svc["name"], f"{sp}.name"), port_name=_str(port["name"], f"{sp}.port.name"))


def parse_ingress(doc: Document) -> Ingress:
    body = doc.body
    meta = _meta(body)
    spec = _spec(body)
    check_fields(spec, "spec", ("ingressClassName", "defaultBackend", "rules", "tls"))
    cls = _str(spec.get("ingressClassName", ""), "spec.ingressClassName", allow_empty=True)
    default = _ingress_backend(spec["defaultBackend"], "spec.defaultBackend") if spec.get("defaultBackend") else None
    rules = []
    for i, r in enumerate(_list(spec.get("rules"), "spec.rules")):
        rp = f"spec.rules[{i}]"
        check_fields(r, rp, ("host", "http"))
        host = _hostname(r["host"], f"{rp}.host") if r.get("host") else ""
        paths = []
        http = r.get("http")
        if http is not None:
            check_fields(http, f"{rp}.http", ("paths",), required=("paths",))
            raw_paths = _list(http["paths"], f"{rp}.http.paths")
            if not raw_paths:
                raise ValidationError("must list at least one path", path=f"{rp}.http.paths")
            for j, p in enumerate(raw_paths):
                pp = f"{rp}.http.paths[{j}]"
                check_fields(p, pp, ("path", "pathType", "backend"), required=("pathType", "backend"))
                ptype = p["pathType"]
                if ptype not in ("Exact", "Prefix", "ImplementationSpecific"):
                    raise ValidationError(f"pathType {ptype!r} is not Exact, Prefix or ImplementationSpecific",
                                          path=f"{pp}.pathType")
                value = _str(p.get("path", "/"), f"{pp}.path")
                if not value.startswith("/"):
                    raise ValidationError(f"{value!r} must start with '/'", path=f"{pp}.path")
                paths.append(IngressPath(value, ptype, _ingress_backend(p["backend"], f"{pp}.backend")))
        rules.append(IngressRule(host, tuple(paths)))
    if default is None and not rules:
        raise ValidationError("needs rules or a defaultBackend", path="spec")
    tls = []
    for i, t in enumerate(_list(spec.get("tls"), "spec.tls")):
        tp = f"spec.tls[{i}]"
        check_fields(t, tp, ("hosts", "secretName"), required=("secretName",))
        hosts = tuple(_hostname(h, f"{tp}.hosts[{j}]") for j, h in enumerate(_list(t.get("hosts"), f"{tp}.hosts")))
        tls.append(IngressTLS(hosts, _object_name(t["secretName"], f"{tp}.secretName")))
    return Ingress(meta, cls, default, tuple(rules), tuple(tls))


def parse_ingress_class(doc: Document) -> IngressClass:
    body = doc.body
    meta = _meta(body, namespaced=False)
    spec = _spec(body)
    check_fields(spec, "spec", ("controller", "parameters"), required=("controller",))
    ann = (body.get("metadata") or {}).get("annotations") or {}
    default = ann.get("ingressclass.kubernetes.io/is-default-class") == "true"
    return IngressClass(meta.name, _str(spec["controller"], "spec.controller"), default)


# ---- EgressGatewayPolicy -------------------------------------------------------------------------


def _label_selector(obj: Any, path: str) -> tuple[LabelRequirement, ...]:
    check_fields(obj, path, ("matchLabels", "matchExpressions"))
    reqs = []
    labels = obj.get("matchLabels") or {}
    expect_type(labels, dict, f"{path}.matchLabels", "a mapping")
    for k, v in sorted(labels.items()):
        reqs.append(LabelRequirement(_str(k, f"{path}.matchLabels"), "In",
                                     (_str(v, f"{path}.matchLabels.{k}", allow_empty=True),)))
    for i, e in enumerate(_list(obj.get("matchExpressions"), f"{path}.matchExpressions")):
        ep = f"{path}.matchExpressions[{i}]"
        check_fields(e, ep, ("key", "operator", "values"), required=("key", "operator"))
        op = e["operator"]
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValidationError(f"operator {op!r} is not In, NotIn, Exists or DoesNotExist", path=f"{ep}.operator")
        values = tuple(_str(v, f"{ep}.values[{j}]", allow_empty=True)
                       for j, v in enumerate(_list(e.get("values"), f"{ep}.values")))
        if op in ("In", "NotIn") and not values:
            raise ValidationError(f"{op} needs values", path=f"{ep}.values")
        if op in ("Exists", "DoesNotExist") and values:
            raise ValidationError(f"{op} takes no values", path=f"{ep}.values")
        reqs.append(LabelRequirement(_str(e["key"], f"{ep}.key"), op, values))
    return tuple(reqs)


def _cidr(value: Any, path: str) -> str:
    text = _str(value, path)
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValidationError(f"{text!r} is not a CIDR", path=path) from None
    if net.version != 4:
        raise ValidationError(f"{text}: only IPv4 destinations are supported", path=path)
    return str(net)


def parse_egress_policy(doc: Document) -> EgressGatewayPolicy:
    body = doc.body
    meta = _meta(body, namespaced=False)
    spec = _spec(body)
    check_fields(spec, "spec", ("selectors", "destinationCIDRs", "excludedCIDRs", "egressGateway", "rules"),
                 required=("selectors", "destinationCIDRs", "egressGateway"))
    selectors = []
    raw = _list(spec["selectors"], "spec.selectors")
    if not raw:
        raise ValidationError("must list at least one selector", path="spec.selectors")
    for i, s in enumerate(raw):
        sp = f"spec.selectors[{i}]"
        check_fields(s, sp, ("podSelector", "endpointSelector", "namespaceSelector"))
        if ("podSelector" in s) == ("endpointSelector" in s):
            raise ValidationError("give exactly one of podSelector or endpointSelector", path=sp)
        key = "podSelector" if "podSelector" in s else "endpointSelector"
        pod = _label_selector(s[key], f"{sp}.{key}")
        ns = _label_selector(s["namespaceSelector"], f"{sp}.namespaceSelector") if "namespaceSelector" in s else None
        selectors.append(EndpointSelector(pod, ns))
    dests = tuple(_cidr(c, f"spec.destinationCIDRs[{i}]")
                  for i, c in enumerate(_list(spec["destinationCIDRs"], "spec.destinationCIDRs")))
    if not dests:
        raise ValidationError("must list at least one CIDR", path="spec.destinationCIDRs")
    excluded = tuple(_cidr(c, f"spec.excludedCIDRs[{i}]")
                     for i, c in enumerate(_list(spec.get("excludedCIDRs"), "spec.excludedCIDRs")))
    gw = spec["egressGateway"]
    check_fields(gw, "spec.egressGateway", ("egressIP", "interface", "nodeSelector"))
    egress_ip = ""
    if gw.get("egressIP"):
        egress_ip = _str(gw["egressIP"], "spec.egressGateway.egressIP")
        try:
            if ipaddress.ip_address(egress_ip).version != 4:
                raise ValueError
        except ValueError:
            raise ValidationError(f"{egress_ip!r} is not an IPv4 address", path="spec.egressGateway.egressIP") from None
    interface = _str(gw.get("interface", ""), "spec.egressGateway.interface", allow_empty=True)
    if not egress_ip and not interface:
        raise ValidationError("give egressIP or interface", path="spec.egressGateway")
    http = None
    if spec.get("rules") is not None:
        rules = spec["rules"]
        check_fields(rules, "spec.rules", ("http",))
        http = tuple(_egress_http_rule(r, f"spec.rules.http[{i}]")
                     for i, r in enumerate(_list(rules.get("http"), "spec.rules.http")))
    return EgressGatewayPolicy(meta, tuple(selectors), dests, excluded, egress_ip, interface, http)


def _egress_http_rule(obj: Any, path: str) -> EgressHTTPRule:
    """Cilium's HTTP rule fields: method, path, host are RE2 full matches; headers "Name" (present)
    or "Name: value" (exact)."""
    check_fields(obj, path, ("method", "path", "host", "headers"))
    vals = {}
    for key in ("method", "path", "host"):
        v = _str(obj.get(key, ""), f"{path}.{key}", allow_empty=True)
        if v:
            _regex(v, f"{path}.{key}")
        vals[key] = v
    headers = []
    for i, h in enumerate(_list(obj.get("headers"), f"{path}.headers")):
        text = _str(h, f"{path}.headers[{i}]")
        name, sep, value = text.partition(":")
        name = name.strip()
        if not _HEADER_NAME.match(name):
            raise ValidationError(f"invalid header name {name!r}", path=f"{path}.headers[{i}]")
        headers.append((name, value.strip() if sep else None))
    return EgressHTTPRule(vals["method"], vals["path"], vals["host"], tuple(headers))
