"""Gateway semantics (pure): manifests + service endpoints → the Envoy gateway model + status conditions.

    res = resolve(objects, settings, resolve_backends, endpoints=..., interface_ip=...)
    res.input        # xdsserver.translate.gateway.GatewayInput → translate_gateway → snapshot
    res.statuses     # ObjectStatus per Gateway / route / Ingress / EgressGatewayPolicy
    res.egress_redirects   # what the datapath must steer to the egress listener

Gateway API v1 semantics implemented here (see the module's tests and tests/data/gateway/):
- Listeners of every Gateway of our class share the node address. On one port the first listener
  (oldest Gateway, then namespace/name, then list order) fixes the protocol; a listener with another
  protocol is Conflicted/ProtocolConflict, one with a hostname already taken on that port is
  Conflicted/HostnameConflict. Conflicted listeners are not programmed.
- HTTPS listeners terminate TLS with their first valid certificateRef (a kubernetes.io/tls Secret
  in the Gateway's namespace); a missing, cross-namespace, wrong-kind or unparsable certificate is
  ResolvedRefs=False/InvalidCertificateRef (RefNotPermitted for another namespace) and, with no
  valid certificate left, the listener is not programmed. Filter chains are chosen by SNI.
- A route attaches to the listeners its parentRef selects (sectionName, port) that allow its
  namespace (allowedRoutes.namespaces.from Same|All) and kind, and whose hostname intersects the
  route's hostnames; otherwise Accepted=False with NoMatchingParent, NotAllowedByListeners or
  NoMatchingListenerHostname.
- Backend refs must be core Services (else InvalidKind) in the route's namespace (else
  RefNotPermitted: ReferenceGrant is not implemented) with a port that exists (else
  BackendNotFound). Invalid refs keep their weight and answer 500, so a rule whose backends are
  all invalid answers 500 and a half-invalid one answers 500 to about half of the requests.
- Precedence inside a hostname: Exact path, then RegularExpression, then the longest PathPrefix
  (whole path elements), then a method match, then more header matches, then more query matches;
  ties go to the oldest route, then namespace/name, then rule and match order. gRPC routes come
  before HTTP routes of the same hostname (they only match gRPC requests) and order by
  service, method and header matches.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

from mesh.gateway.model import (CONTROLLER_NAME, GATEWAY_GROUP, KIND_EGRESS, KIND_GATEWAY, KIND_GRPCROUTE,
                                KIND_HTTPROUTE, KIND_INGRESS, TLS_SECRET_TYPE, BackendRef, Condition,
                                EgressGatewayPolicy, Filters, Gateway, GatewayListener, GRPCRouteRule,
                                HTTPRouteRule, Ingress, IngressBackend, IngressClass, LabelRequirement,
                                ListenerProtocol, MatchType, ObjectStatus, PathType, Route, SecretRef,
                                TLSSecret)
from xdsserver.translate.gateway import (EgressChain, EgressCluster, GatewayInput, GatewayOptions, GwBackend,
                                         GwCluster, GwFilterChain, GwHeaders, GwListener, GwMatch, GwRedirect,
                                         GwRewrite, GwRoute, GwSecret, GwValueMatch, GwVirtualHost)
from xdsserver.translate.model import HeaderMatch, HTTPRule

# (namespace, service, port number or name) → [(ip, port)] endpoints, or None: no such service/port.
BackendResolver = Callable[[str, str, "int | str"], "list[tuple[str, int]] | None"]
NAMESPACE_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    gateway_class: str = "ostium"
    ingress_class: str = "ostium"
    claim_unclassed_ingresses: bool = True     # Ingresses without ingressClassName are ours
    ingress_http_port: int = 80
    ingress_https_port: int = 443
    options: GatewayOptions = field(default_factory=GatewayOptions)


@dataclass(frozen=True, slots=True)
class EgressEndpoint:
    ip: str
    namespace: str
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class EgressRedirect:
    """For the datapath: TCP from `sources` to `destinations` (minus `excluded`) → egress listener."""

    policy: str
    sources: tuple[str, ...]
    destinations: tuple[str, ...]
    excluded: tuple[str, ...]
    egress_ip: str
    proxy_port: int

    def to_api(self) -> dict:
        return {"policy": self.policy, "sources": list(self.sources), "destinationCIDRs": list(self.destinations),
                "excludedCIDRs": list(self.excluded), "egressIP": self.egress_ip, "proxyPort": self.proxy_port}


@dataclass(slots=True)
class GatewayObjects:
    gateways: list[Gateway] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    ingresses: list[Ingress] = field(default_factory=list)
    ingress_classes: list[IngressClass] = field(default_factory=list)
    secrets: dict[tuple[str, str], TLSSecret] = field(default_factory=dict)
    egress_policies: list[EgressGatewayPolicy] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Resolution:
    input: GatewayInput
    statuses: tuple[ObjectStatus, ...]
    egress_redirects: tuple[EgressRedirect, ...]


def check_certificate(cert_pem: str, key_pem: str) -> str | None:
    """None if the PEM certificate chain and key load and match (OpenSSL via `ssl`), else why not.

    Checked before Envoy sees it: Envoy would NACK the whole update for one bad certificate."""
    if "-----BEGIN CERTIFICATE-----" not in cert_pem:
        return "tls.crt holds no PEM certificate"
    if "PRIVATE KEY-----" not in key_pem:
        return "tls.key holds no PEM private key"
    with tempfile.TemporaryDirectory(prefix="ostium-cert-") as d:
        cert_path, key_path = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
        with open(cert_path, "w") as fh:
            fh.write(cert_pem)
        with open(key_path, "w") as fh:
            fh.write(key_pem)
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            return f"certificate or key does not load: {exc.reason or exc}"
    return None


def _cond(type_: str, ok: bool, reason: str, message: str = "") -> Condition:
    return Condition(type_, ok, reason, message)


def hostname_matches(host: str, pattern: str) -> bool:
    """Gateway API: `*.example.com` matches any name with at least one more label."""
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def intersect_hostnames(route_hosts: Sequence[str], listener_host: str) -> list[str]:
    if not listener_host:
        return list(route_hosts) or ["*"]
    if not route_hosts:
        return [listener_host]
    out = []
    for h in route_hosts:
        if hostname_matches(h, listener_host) or h == listener_host:
            out.append(h)
        elif h.startswith("*.") and hostname_matches(listener_host, h):
            out.append(listener_host)
    return sorted(set(out), key=out.index)


# ---- backends ------------------------------------------------------------------------------------


INVALID_BACKEND = ""   # GwBackend.cluster for a ref that does not resolve (answered with 500)


def cluster_name(namespace: str, service: str, port: "int | str", http2: bool = False) -> str:
    return f"gw:{namespace}/{service}:{port}{'/h2' if http2 else ''}"


class _Backends:
    def __init__(self, resolver: BackendResolver) -> None:
        self.resolver = resolver
        self.clusters: dict[str, GwCluster] = {}

    def cluster(self, namespace: str, service: str, port: "int | str", http2: bool = False) -> str | None:
        name = cluster_name(namespace, service, port, http2)
        if name not in self.clusters:
            eps = self.resolver(namespace, service, port)
            if eps is None:
                return None
            self.clusters[name] = GwCluster(name, tuple(sorted((str(ip), int(p)) for ip, p in eps)), http2)
        return name


def _check_backend_ref(ref: BackendRef, route_ns: str, backends: _Backends,
                       http2: bool = False) -> tuple[str | None, str, str]:
    """(cluster or None, failure reason, message)."""
    label = f"{ref.namespace}/{ref.name}"
    if ref.group not in ("", "core") or ref.kind != "Service":
        return None, "InvalidKind", f"backendRef {label}: {ref.group or 'core'}/{ref.kind} is not a Service"
    if ref.namespace != route_ns:
        return None, "RefNotPermitted", (f"backendRef {label}: another namespace needs a ReferenceGrant, "
                                         "which Ostium does not implement")
    if not ref.port:
        return None, "BackendNotFound", f"backendRef {label}: port is required for a Service"
    name = backends.cluster(ref.namespace, ref.name, ref.port, http2)
    if name is None:
        return None, "BackendNotFound", f"backendRef {label}: service or port {ref.port} not found"
    return name, "", ""


# ---- matches -------------------------------------------------------------------------------------


_PATH_RANK = {PathType.EXACT: 0, PathType.REGEX: 1, PathType.PREFIX: 2}


def _http_matches(rule: HTTPRouteRule) -> list[tuple[tuple, GwMatch]]:
    out = []
    for m in rule.matches:
        gm = GwMatch(path_kind={PathType.EXACT: "exact", PathType.REGEX: "regex"}.get(m.path.type, "prefix"),
                     path=m.path.value,
                     headers=tuple(GwValueMatch(h.name, h.value, h.type is MatchType.REGEX) for h in m.headers),
                     query=tuple(GwValueMatch(q.name, q.value, q.type is MatchType.REGEX) for q in m.query_params),
                     method=m.method)
        path_len = len(m.path.value.rstrip("/")) if m.path.type is PathType.PREFIX else len(m.path.value)
        key = (1, _PATH_RANK[m.path.type], -path_len, 0 if m.method else 1, -len(m.headers), -len(m.query_params))
        out.append((key, gm))
    return out


def _grpc_matches(rule: GRPCRouteRule) -> list[tuple[tuple, GwMatch]]:
    out = []
    for m in rule.matches:
        headers = tuple(GwValueMatch(h.name, h.value, h.type is MatchType.REGEX) for h in m.headers)
        mm = m.method
        if mm is None:
            gm = GwMatch("prefix", "/", headers, grpc=True)
            key = (0, 1, 0, 0, -len(headers), 0)
        else:
            if mm.type is MatchType.EXACT and mm.service and mm.method:
                gm = GwMatch("exact", f"/{mm.service}/{mm.method}", headers, grpc=True)
            elif mm.type is MatchType.EXACT and mm.service:
                gm = GwMatch("prefix", f"/{mm.service}", headers, grpc=True)
            else:
                svc = mm.service if mm.type is MatchType.REGEX else mm.service.replace(".", r"\.")
                gm = GwMatch("regex", f"/{svc or '[^/]+'}/{mm.method or '[^/]+'}", headers, grpc=True)
            key = (0, 0 if mm.type is MatchType.EXACT else 1, -len(mm.service), -len(mm.method), -len(headers), 0)
        out.append((key, gm))
    return out


def _headers(h) -> GwHeaders | None:
    return GwHeaders(h.set, h.add, h.remove) if h is not None else None


def _filters(f: Filters) -> dict:
    out: dict = {"request_headers": _headers(f.request_headers), "response_headers": _headers(f.response_headers)}
    if f.redirect is not None:
        r = f.redirect
        kind = {"ReplaceFullPath": "full", "ReplacePrefixMatch": "prefix"}.get(r.path.type, "") if r.path else ""
        out["redirect"] = GwRedirect(r.scheme, r.hostname, r.port, kind, r.path.value if r.path else "", r.status_code)
    if f.rewrite is not None:
        r = f.rewrite
        kind = {"ReplaceFullPath": "full", "ReplacePrefixMatch": "prefix"}.get(r.path.type, "") if r.path else ""
        out["rewrite"] = GwRewrite(r.hostname, kind, r.path.value if r.path else "")
    return out


@dataclass(slots=True)
class _Entry:
    sort_key: tuple
    route: GwRoute


def _order_key(created: str, ns: str, name: str) -> tuple:
    return (created or "~", ns, name)   # "~": objects without a timestamp sort after dated ones


def _vhosts(entries: Mapping[str, list[_Entry]], prefix: str) -> tuple[GwVirtualHost, ...]:
    out = []
    for host in sorted(entries, key=lambda h: (h == "*", h.startswith("*."), h)):
        routes = [e.route for e in sorted(entries[host], key=lambda e: e.sort_key)]
        out.append(GwVirtualHost(f"{prefix}|{host}", (host,), tuple(routes)))
    return tuple(out)


# ---- the resolver --------------------------------------------------------------------------------


class _Resolver:
    def __init__(self, objs: GatewayObjects, settings: GatewaySettings, backends: _Backends,
                 check_cert: Callable[[str, str], str | None]) -> None:
        self.objs = objs
        self.s = settings
        self.backends = backends
        self.check_cert = check_cert
        self.statuses: list[ObjectStatus] = []
        self.secrets: dict[str, GwSecret] = {}
        self._cert_memo: dict[tuple[str, str], str | None] = {}

    # -- certificates --
    def certificate(self, ref: SecretRef, owner_ns: str) -> tuple[str | None, str, str]:
        """(SDS secret name or None, reason, message)."""
        label = f"{ref.namespace}/{ref.name}"
        if ref.group not in ("", "core") or ref.kind != "Secret":
            return None, "InvalidCertificateRef", f"certificateRef {label}: {ref.kind} is not a Secret"
        if ref.namespace != owner_ns:
            return None, "RefNotPermitted", f"certificateRef {label}: another namespace needs a ReferenceGrant"
        secret = self.objs.secrets.get((ref.namespace, ref.name))
        if secret is None:
            return None, "InvalidCertificateRef", f"certificateRef {label}: Secret not found"
        if secret.type != TLS_SECRET_TYPE:
            return None, "InvalidCertificateRef", f"certificateRef {label}: type {secret.type}, not {TLS_SECRET_TYPE}"
        key = (secret.cert_pem, secret.key_pem)
        if key not in self._cert_memo:
            self._cert_memo[key] = self.check_cert(*key)
        err = self._cert_memo[key]
        if err:
            return None, "InvalidCertificateRef", f"certificateRef {label}: {err}"
        name = f"gw-secret:{ref.namespace}/{ref.name}"
        self.secrets[name] = GwSecret(name, secret.cert_pem, secret.key_pem)
        return name, "", ""

    # -- Gateways --
    def gateways(self, reserved_ports: Mapping[int, str]):
        """→ {(ns, gw, listener name): (listener, secret or "", programmed)}, statuses per gateway."""
        ours = []
        for gw in sorted(self.objs.gateways, key=lambda g: _order_key(g.meta.created, g.namespace, g.name)):
            st = ObjectStatus(KIND_GATEWAY, gw.namespace, gw.name)
            self.statuses.append(st)
            if gw.gateway_class != self.s.gateway_class:
                st.conditions += [_cond("Accepted", False, "Pending",
                                        f"gatewayClassName {gw.gateway_class!r} is not handled by Ostium "
                                        f"(it handles {self.s.gateway_class!r})")]
                continue
            ours.append((gw, st))
        port_proto: dict[int, ListenerProtocol] = {}
        port_hosts: dict[tuple[int, str], str] = {}
        self.listeners: dict[tuple[str, str, str], tuple[GatewayListener, str, bool]] = {}
        self.listener_status: dict[tuple[str, str, str], dict] = {}
        for gw, st in ours:
            programmed_any = False
            for lst in gw.listeners:
                conds: list[Condition] = []
                programmed = True
                key = (gw.namespace, gw.name, lst.name)
                who = f"{gw.namespace}/{gw.name}/{lst.name}"
                if lst.port in reserved_ports:
                    conds.append(_cond("Accepted", False, "PortUnavailable", reserved_ports[lst.port]))
                    programmed = False
                else:
                    conds.append(_cond("Accepted", True, "Accepted"))
                proto = port_proto.setdefault(lst.port, lst.protocol) if programmed else lst.protocol
                if programmed and proto is not lst.protocol:
                    conds.append(_cond("Conflicted", True, "ProtocolConflict",
                                       f"port {lst.port} is already used with protocol {proto}"))
                    programmed = False
                elif programmed and (lst.port, lst.hostname) in port_hosts:
                    conds.append(_cond("Conflicted", True, "HostnameConflict",
                                       f"port {lst.port} hostname {lst.hostname or '*'} is already used by "
                                       f"listener {port_hosts[(lst.port, lst.hostname)]}"))
                    programmed = False
                else:
                    conds.append(_cond("Conflicted", False, "NoConflicts"))
                secret = ""
                if lst.protocol is ListenerProtocol.HTTPS:
                    problems = []
                    for ref in lst.certificate_refs:
                        name, reason, msg = self.certificate(ref, gw.namespace)
                        if name and not secret:
                            secret = name
                        elif not name:
                            problems.append((reason, msg))
                    if problems:
                        conds.append(_cond("ResolvedRefs", False, problems[0][0], "; ".join(m for _, m in problems)))
                    else:
                        conds.append(_cond("ResolvedRefs", True, "ResolvedRefs"))
                    if not secret:
                        programmed = False
                else:
                    conds.append(_cond("ResolvedRefs", True, "ResolvedRefs"))
                if programmed:
                    port_hosts[(lst.port, lst.hostname)] = who
                conds.append(_cond("Programmed", programmed, "Programmed" if programmed else "Invalid"))
                programmed_any |= programmed
                self.listeners[key] = (lst, secret, programmed)
                kinds = list(lst.allowed_kinds) or [KIND_HTTPROUTE, KIND_GRPCROUTE]
                self.listener_status[key] = {
                    "name": lst.name, "port": lst.port, "protocol": str(lst.protocol), "hostname": lst.hostname,
                    "attachedRoutes": 0,
                    "supportedKinds": [{"group": GATEWAY_GROUP, "kind": k} for k in kinds
                                       if k in (KIND_HTTPROUTE, KIND_GRPCROUTE)],
                    "conditions": [c.to_api() for c in conds]}
                st.listeners.append(self.listener_status[key])
            if programmed_any:
                st.addresses.append(self.s.options.address)
            st.conditions += [_cond("Accepted", True, "Accepted"),
                              _cond("Programmed", programmed_any, "Programmed" if programmed_any else "Invalid",
                                    "" if programmed_any else "no listener could be programmed")]
        self.gateway_by_key = {(gw.namespace, gw.name): gw for gw, _ in ours}

    # -- routes --
    def routes(self) -> dict[tuple[str, str, str], dict[str, list[_Entry]]]:
        """→ {(gw ns, gw name, listener): {hostname: [entries]}}"""
        attached: dict[tuple[str, str, str], dict[str, list[_Entry]]] = defaultdict(lambda: defaultdict(list))
        for route in sorted(self.objs.routes, key=lambda r: _order_key(r.meta.created, r.namespace, r.name)):
            st = ObjectStatus(route.kind, route.namespace, route.name)
            self.statuses.append(st)
            # ResolvedRefs: the same for every parent.
            resolved_rules = []
            problems: list[tuple[str, str]] = []
            for rule in route.rules:
                bks = []
                for ref in rule.backends:
                    name, reason, msg = _check_backend_ref(ref, route.namespace, self.backends,
                                                           http2=route.kind == KIND_GRPCROUTE)
                    if name is None:
                        problems.append((reason, msg))
                    bks.append(GwBackend(name or INVALID_BACKEND, ref.weight))
                resolved_rules.append(tuple(bks))
            refs_cond = (_cond("ResolvedRefs", False, problems[0][0], "; ".join(m for _, m in problems)) if problems
                         else _cond("ResolvedRefs", True, "ResolvedRefs"))
            for pref in route.parent_refs:
                pst = {"parentRef": pref.to_api(), "controllerName": CONTROLLER_NAME}
                targets, cond = self._attach(route, pref)
                pst["conditions"] = [cond.to_api(), refs_cond.to_api()]
                st.parents.append(pst)
                for key, hosts in targets:
                    self.listener_status[key]["attachedRoutes"] += 1
                    for i, (rule, bks) in enumerate(zip(route.rules, resolved_rules)):
                        matches = _grpc_matches(rule) if route.kind == KIND_GRPCROUTE else _http_matches(rule)
                        extra = _filters(rule.filters)
                        for j, (mkey, gm) in enumerate(matches):
                            name = f"{route.kind}/{route.namespace}/{route.name}/rule{i}/match{j}"
                            gr = GwRoute(name, gm, bks, **extra)
                            skey = mkey + _order_key(route.meta.created, route.namespace, route.name) + (i, j)
                            for h in hosts:
                                attached[key][h].append(_Entry(skey, gr))
            if not route.parent_refs:
                st.conditions.append(_cond("Accepted", False, "NoMatchingParent", "the route has no parentRefs"))
        return attached

    def _attach(self, route: Route, pref) -> tuple[list[tuple[tuple[str, str, str], list[str]]], Condition]:
        if pref.group != GATEWAY_GROUP or pref.kind != KIND_GATEWAY:
            return [], _cond("Accepted", False, "NoMatchingParent", f"parent {pref.group}/{pref.kind} is not a Gateway")
        gw = self.gateway_by_key.get((pref.namespace, pref.name))
        if gw is None:
            return [], _cond("Accepted", False, "NoMatchingParent",
                             f"Gateway {pref.namespace}/{pref.name} not found (or not of class {self.s.gateway_class})")
        cands = [lst for lst in gw.listeners
                 if (not pref.section_name or lst.name == pref.section_name) and (not pref.port or lst.port == pref.port)]
        if not cands:
            return [], _cond("Accepted", False, "NoMatchingParent",
                             f"Gateway {gw.namespace}/{gw.name} has no listener "
                             f"{pref.section_name or ''}{' port ' + str(pref.port) if pref.port else ''}")
        allowed = [lst for lst in cands
                   if (lst.allowed_namespaces == "All" or route.namespace == gw.namespace)
                   and (not lst.allowed_kinds or route.kind in lst.allowed_kinds)]
        if not allowed:
            return [], _cond("Accepted", False, "NotAllowedByListeners",
                             f"no listener of Gateway {gw.namespace}/{gw.name} allows {route.kind} "
                             f"from namespace {route.namespace}")
        targets = []
        for lst in allowed:
            hosts = intersect_hostnames(route.hostnames, lst.hostname)
            if hosts:
                targets.append((lst, hosts))
        if not targets:
            return [], _cond("Accepted", False, "NoMatchingListenerHostname",
                             f"no hostname of the route matches a listener of Gateway {gw.namespace}/{gw.name}")
        live = [((gw.namespace, gw.name, lst.name), hosts) for lst, hosts in targets
                if self.listeners[(gw.namespace, gw.name, lst.name)][2]]
        if not live:
            return [], _cond("Accepted", False, "NotAllowedByListeners",
                             "every matching listener is conflicted or invalid (see the Gateway's status)")
        return live, _cond("Accepted", True, "Accepted")

    # -- Ingress --
    def ingress(self) -> tuple[dict[str, list[_Entry]], list[tuple[str, tuple[str, ...]]]]:
        """→ ({hostname: entries}, [(secret, SNI hosts)])"""
        classes = {c.name for c in self.objs.ingress_classes if c.controller == CONTROLLER_NAME}
        classes.add(self.s.ingress_class)
        default_ours = any(c.is_default and c.controller == CONTROLLER_NAME for c in self.objs.ingress_classes)
        hosts: dict[str, list[_Entry]] = defaultdict(list)
        tls: list[tuple[str, tuple[str, ...]]] = []
        defaults: list[tuple[tuple, GwRoute]] = []
        for ing in sorted(self.objs.ingresses, key=lambda i: _order_key(i.meta.created, i.namespace, i.name)):
            st = ObjectStatus(KIND_INGRESS, ing.namespace, ing.name)
            self.statuses.append(st)
            ours = ing.ingress_class in classes if ing.ingress_class else (self.s.claim_unclassed_ingresses
                                                                            or default_ours)
            if not ours:
                st.conditions.append(_cond("Accepted", False, "Pending",
                                           f"ingressClassName {ing.ingress_class!r} is not Ostium's"))
                continue
            st.conditions.append(_cond("Accepted", True, "Accepted"))
            problems: list[str] = []
            okey = _order_key(ing.meta.created, ing.namespace, ing.name)

            def backend(b: IngressBackend) -> tuple[GwBackend, ...]:
                port: int | str = b.port or b.port_name
                name = self.backends.cluster(ing.namespace, b.service, port)
                if name is None:
                    problems.append(f"service {ing.namespace}/{b.service} port {port} not found")
                return (GwBackend(name or INVALID_BACKEND, 1),)

            for i, rule in enumerate(ing.rules):
                host = rule.host or "*"
                for j, p in enumerate(rule.paths):
                    exact = p.path_type == "Exact"
                    gm = GwMatch("exact" if exact else "prefix", p.path)
                    plen = len(p.path) if exact else len(p.path.rstrip("/"))
                    key = (1, 0 if exact else 2, -plen, 1, 0, 0) + okey + (i, j)
                    hosts[host].append(_Entry(key, GwRoute(f"Ingress/{ing.namespace}/{ing.name}/rule{i}/path{j}",
                                                           gm, backend(p.backend))))
            if ing.default_backend is not None:
                defaults.append((okey, GwRoute(f"Ingress/{ing.namespace}/{ing.name}/default", GwMatch(),
                                               backend(ing.default_backend))))
            cert_problems = []
            for t in ing.tls:
                name, reason, msg = self.certificate(SecretRef(t.secret_name, ing.namespace), ing.namespace)
                if name:
                    tls.append((name, t.hosts))
                else:
                    cert_problems.append(msg)
            if problems or cert_problems:
                st.conditions.append(_cond("ResolvedRefs", False,
                                           "InvalidCertificateRef" if cert_problems and not problems
                                           else "BackendNotFound", "; ".join(problems + cert_problems)))
            else:
                st.conditions.append(_cond("ResolvedRefs", True, "ResolvedRefs"))
            st.conditions.append(_cond("Programmed", True, "Programmed"))
            st.addresses.append(self.s.options.address)
        if defaults:
            # The oldest Ingress's defaultBackend catches what no rule of any host matches.
            default = sorted(defaults, key=lambda d: d[0])[0][1]
            for host in set(hosts) | {"*"}:
                hosts[host].append(_Entry((9,), default))
        return hosts, tls


def resolve(objs: GatewayObjects, settings: GatewaySettings, resolve_backends: BackendResolver, *,
            endpoints: Iterable[EgressEndpoint] = (), namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
            interface_ip: Callable[[str], str | None] = lambda _name: None,
            check_cert: Callable[[str, str], str | None] = check_certificate) -> Resolution:
    """The whole gateway configuration of a node, and every object's status. Never raises for a bad
    reference: that is a condition in the status, and the rest is still served."""
    backends = _Backends(resolve_backends)
    r = _Resolver(objs, settings, backends, check_cert)
    opts = settings.options
    ingress_hosts, ingress_tls = r.ingress()
    reserved: dict[int, str] = {}
    if ingress_hosts:
        reserved[settings.ingress_http_port] = f"port {settings.ingress_http_port} serves Ingress resources"
    if ingress_tls:
        reserved[settings.ingress_https_port] = f"port {settings.ingress_https_port} serves Ingress TLS"
    r.gateways(reserved)
    attached = r.routes()

    listeners: list[GwListener] = []
    by_port: dict[int, list[tuple[str, str, str]]] = defaultdict(list)
    for key, (lst, _secret, programmed) in r.listeners.items():
        if programmed:
            by_port[lst.port].append(key)
    for port in sorted(by_port):
        keys = by_port[port]
        first = r.listeners[keys[0]][0]
        if first.protocol is ListenerProtocol.HTTP:
            merged: dict[str, list[_Entry]] = defaultdict(list)
            listener_hosts = [r.listeners[k][0].hostname for k in keys]
            for key in keys:
                own = r.listeners[key][0].hostname
                for host, entries in attached.get(key, {}).items():
                    # Listener isolation: a request is served only by routes of the most specific
                    # listener matching its host, so a route of a broader listener loses hostnames
                    # that a more specific listener on the same port claims.
                    if any(_more_specific(other, own) and (host == other or hostname_matches(host, other))
                           for other in listener_hosts):
                        continue
                    merged[host].extend(entries)
            name = f"gw-http-{port}"
            chains = (GwFilterChain(name, _vhosts(merged, name)),)
        else:
            chains_l = []
            for key in sorted(keys, key=lambda k: (r.listeners[k][0].hostname == "", k)):
                lst, secret, _ = r.listeners[key]
                name = f"gw-https-{port}:{key[0]}/{key[1]}/{key[2]}"
                chains_l.append(GwFilterChain(name, _vhosts(attached.get(key, {}), name), secret,
                                              (lst.hostname,) if lst.hostname else ()))
            chains = tuple(chains_l)
        listeners.append(GwListener(f"gw-listener-{port}", port, chains))
    if ingress_hosts:
        name = f"ingress-http-{settings.ingress_http_port}"
        listeners.append(GwListener(name, settings.ingress_http_port,
                                    (GwFilterChain(name, _vhosts(ingress_hosts, name)),)))
    if ingress_tls:
        chains_l, seen_sni = [], set()
        for secret, hosts in ingress_tls:
            sni = tuple(h for h in hosts if h not in seen_sni)
            if hosts and not sni or (not hosts and () in seen_sni):
                continue   # every host already has a certificate (first Ingress wins)
            seen_sni.update(sni or [()])
            name = f"ingress-https-{settings.ingress_https_port}:{secret.split(':', 1)[1]}"
            chains_l.append(GwFilterChain(name, _vhosts(ingress_hosts, name), secret, sni))
        chains_l.sort(key=lambda c: not c.server_names)
        listeners.append(GwListener(f"ingress-https-{settings.ingress_https_port}", settings.ingress_https_port,
                                    tuple(chains_l)))

    chains, clusters, redirects = _egress(objs.egress_policies, r.statuses, list(endpoints),
                                          namespace_labels or {}, interface_ip, opts)
    inp = GatewayInput(tuple(listeners), tuple(sorted(backends.clusters.values(), key=lambda c: c.name)),
                       tuple(sorted(r.secrets.values(), key=lambda s: s.name)), chains, clusters, opts)
    return Resolution(inp, tuple(r.statuses), redirects)


def _more_specific(a: str, b: str) -> bool:
    """Is listener hostname `a` more specific than `b` ("" = any; exact beats wildcard)?"""
    if a == b or not a:
        return False
    if not b:
        return True
    if b.startswith("*."):
        return not a.startswith("*.") and hostname_matches(a, b) or (a.startswith("*.") and a.endswith(b[1:])
                                                                      and len(a) > len(b))
    return False


# ---- egress --------------------------------------------------------------------------------------


def _req_ok(req: LabelRequirement, labels: Mapping[str, str]) -> bool:
    has = req.key in labels
    if req.operator == "In":
        return has and labels[req.key] in req.values
    if req.operator == "NotIn":
        return not has or labels[req.key] not in req.values
    if req.operator == "Exists":
        return has
    return not has


def _selected(pol: EgressGatewayPolicy, ep: EgressEndpoint, ns_labels: Mapping[str, Mapping[str, str]]) -> bool:
    nsl = {NAMESPACE_LABEL: ep.namespace, **ns_labels.get(ep.namespace, {})}
    for sel in pol.selectors:
        if all(_req_ok(r, ep.labels) for r in sel.pod) and \
                (sel.namespace is None or all(_req_ok(r, nsl) for r in sel.namespace)):
            return True
    return False


def _subtract(dests: Sequence[str], excluded: Sequence[str]) -> list[str]:
    nets = [ipaddress.ip_network(d) for d in dests]
    for ex in (ipaddress.ip_network(e) for e in excluded):
        out = []
        for n in nets:
            if ex.version != n.version or not n.overlaps(ex):
                out.append(n)
            elif n.subnet_of(ex):  # type: ignore[arg-type]
                continue
            else:
                out.extend(n.address_exclude(ex))  # type: ignore[arg-type]
        nets = out
    return [str(n) for n in sorted(set(nets), key=lambda n: (n.network_address, n.prefixlen))]


def _egress(policies: list[EgressGatewayPolicy], statuses: list[ObjectStatus], endpoints: list[EgressEndpoint],
            ns_labels: Mapping[str, Mapping[str, str]], interface_ip: Callable[[str], str | None],
            opts: GatewayOptions):
    chains, clusters, redirects = [], {}, []
    claimed: list[tuple[str, ipaddress.IPv4Network, str]] = []   # (endpoint ip, destination, policy)
    for pol in sorted(policies, key=lambda p: _order_key(p.meta.created, "", p.name)):
        st = ObjectStatus(KIND_EGRESS, "", pol.name)
        statuses.append(st)
        egress_ip = pol.egress_ip or interface_ip(pol.interface) or ""
        if not egress_ip:
            st.conditions += [_cond("Accepted", True, "Accepted"),
                              _cond("ResolvedRefs", False, "InterfaceNotFound",
                                    f"interface {pol.interface!r} does not exist or has no IPv4 address"),
                              _cond("Programmed", False, "Invalid")]
            continue
        dests = _subtract(pol.destination_cidrs, pol.excluded_cidrs)
        dest_nets = [ipaddress.ip_network(d) for d in dests]
        sources, conflicts = [], []
        for ep in sorted({e.ip: e for e in endpoints if _selected(pol, e, ns_labels)}.values(),
                         key=lambda e: ipaddress.ip_address(e.ip)):
            clash = next((other for ip, net, other in claimed if ip == ep.ip and other != pol.name
                          and any(net.overlaps(d) for d in dest_nets)), None)
            if clash:
                conflicts.append(f"{ep.namespace}/{ep.ip} (older policy {clash})")
                continue
            sources.append(ep.ip)
        for ip in sources:
            claimed += [(ip, d, pol.name) for d in dest_nets]
        st.conditions.append(_cond("Accepted", True, "Accepted"))
        st.conditions.append(_cond("ResolvedRefs", True, "ResolvedRefs"))
        if conflicts:
            st.conditions.append(_cond("Conflicted", True, "Overlapping",
                                       "destinations overlap an older policy for: " + ", ".join(conflicts)))
        else:
            st.conditions.append(_cond("Conflicted", False, "NoConflicts"))
        st.conditions.append(_cond("Programmed", bool(sources and dests), "Programmed" if sources and dests
                                   else "NoSelectedEndpoints", f"{len(sources)} endpoint(s) use egress IP {egress_ip}"))
        if not sources or not dests:
            continue   # an empty source list would match every source in Envoy: leave the chain out
        cname = f"egress-gw:{egress_ip}"
        clusters[cname] = EgressCluster(cname, egress_ip)
        http = None
        if pol.http is not None:
            http = tuple(HTTPRule(r.method, r.path, r.host, tuple(HeaderMatch(n, v) for n, v in r.headers))
                         for r in pol.http)
        chains.append(EgressChain(f"egress:{pol.name}", tuple(sources), tuple(dests), cname, http))
        redirects.append(EgressRedirect(pol.name, tuple(sources), tuple(pol.destination_cidrs),
                                        tuple(pol.excluded_cidrs), egress_ip, opts.egress_port))
    return tuple(chains), tuple(sorted(clusters.values(), key=lambda c: c.name)), tuple(redirects)


def service_backend_resolver(services: Iterable, candidates: Iterable) -> BackendResolver:
    """A BackendResolver over mesh.services (Service manifests + endpoint candidates), as the agent
    has them: a port is the Service port number or name; the endpoints are its ready backends."""
    from mesh.services.resolve import resolve_service

    by_key = {(s.namespace, s.name): s for s in services}
    cands = list(candidates)
    memo: dict[tuple, "list[tuple[str, int]] | None"] = {}

    def resolver(namespace: str, service: str, port: "int | str") -> "list[tuple[str, int]] | None":
        key = (namespace, service, port)
        if key in memo:
            return memo[key]
        svc = by_key.get((namespace, service))
        out = None
        if svc is not None:
            for sp, fe in zip(svc.ports, resolve_service(svc, cands)):
                if sp.protocol == "TCP" and (sp.port == port if isinstance(port, int) else sp.name == port):
                    out = [(b.ip, b.port) for b in fe.backends]
                    break
        memo[key] = out
        return out

    return resolver


STATUS_COLUMNS = ["kind", "namespace", "name", "accepted", "programmed", "resolved", "reason", "message"]


def status_rows(statuses: Iterable[dict]) -> list[dict]:
    """Status objects (ObjectStatus.to_api()) flattened for `ostium gateway status -o table`: one row
    per object, per Gateway listener and per route parent; the first failing condition explains it."""
    def summary(conds: list[dict]) -> dict:
        by = {c["type"]: c for c in conds}
        bad = next((c for c in conds if (c["status"] == "False") != (c["type"] == "Conflicted")), None)
        flag = lambda t: by[t]["status"] if t in by else "-"  # noqa: E731
        return {"accepted": flag("Accepted"), "programmed": flag("Programmed"), "resolved": flag("ResolvedRefs"),
                "reason": bad["reason"] if bad else "", "message": bad["message"] if bad else ""}

    rows = []
    for st in statuses:
        base = {"kind": st["kind"], "namespace": st["namespace"] or "-", "name": st["name"]}
        rows.append({**base, **summary(st["conditions"])})
        for lst in st.get("listeners", []):
            rows.append({**base, "kind": "  listener", "name": f"{st['name']}/{lst['name']}:{lst['port']}",
                         **summary(lst["conditions"])})
        for p in st.get("parents", []):
            ref = p["parentRef"]
            section = f"/{ref['sectionName']}" if ref.get("sectionName") else ""
            rows.append({**base, "kind": "  parent", "name": f"{ref['namespace']}/{ref['name']}{section}",
                         **summary(p["conditions"])})
    return rows
