"""Gateway model → Envoy Listeners, Routes, Clusters and Secrets (proto3 JSON dicts). Pure: no I/O.

The input is already resolved (mesh.gateway.resolve): routes in precedence order, backends turned
into clusters with endpoint addresses, certificates checked. This module only speaks Envoy:

- one listener per ingress port on the node address; plain HTTP ports have one filter chain whose
  RouteConfiguration (RDS) holds a virtual host per hostname; HTTPS ports have a tls_inspector and
  one filter chain per certificate, selected by SNI (server_names), each with its own routes;
  certificates are SDS Secrets over ADS, so a renewed certificate does not drain the listener;
- backend clusters are STATIC with the service's endpoints; their upstream sockets bind to the
  ingress source address (`GatewayOptions.upstream_source`), which the agent maps to the reserved
  identity `ingress` (8) in the ipcache, so the backends' policies see gateway traffic as ingress;
- one transparent egress-gateway listener: a filter chain per (policy, selected endpoints,
  destination CIDRs) matched on source and destination prefixes, forwarding to the original
  destination through an ORIGINAL_DST cluster bound to the policy's egress IP (optionally under
  HTTP rules, enforced with RBAC like the L7 policy listeners).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from xdsserver.resources import TypeURL
from xdsserver.translate.build import (ALS_TYPE, HCM_TYPE, HTTP_OPTIONS_TYPE, ORIGINAL_DST_TYPE, RBAC_FILTER,
                                       RBAC_TYPE, ROUTER_TYPE, SO_MARK, SOL_SOCKET, rbac_rules)
from xdsserver.translate.model import Direction, HTTPRule, PeerRule

_T = "type.googleapis.com/"
TLS_INSPECTOR_TYPE = _T + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
DOWNSTREAM_TLS_TYPE = _T + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
TCP_PROXY_TYPE = _T + "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
EGRESS_LISTENER = "ostium-egress-gateway"
INVALID_BACKEND_CLUSTER = "ostium-gw-invalid-backend"   # never defined: routes to it answer 500


# ---- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GwValueMatch:
    name: str
    value: str
    regex: bool = False


@dataclass(frozen=True, slots=True)
class GwMatch:
    path_kind: str = "prefix"      # exact | prefix (path-element-wise) | regex
    path: str = "/"
    headers: tuple[GwValueMatch, ...] = ()
    query: tuple[GwValueMatch, ...] = ()
    method: str = ""
    grpc: bool = False             # only gRPC requests (content-type application/grpc)


@dataclass(frozen=True, slots=True)
class GwBackend:
    cluster: str                   # "" = an invalid backend ref (its share of requests gets 500)
    weight: int = 1


@dataclass(frozen=True, slots=True)
class GwHeaders:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GwRedirect:
    scheme: str = ""
    host: str = ""
    port: int = 0
    path_kind: str = ""            # "" (keep) | full | prefix
    path: str = ""
    status: int = 302


@dataclass(frozen=True, slots=True)
class GwRewrite:
    host: str = ""
    path_kind: str = ""            # "" | full | prefix
    path: str = ""


@dataclass(frozen=True, slots=True)
class GwRoute:
    name: str
    match: GwMatch
    backends: tuple[GwBackend, ...] = ()
    redirect: GwRedirect | None = None
    rewrite: GwRewrite | None = None
    request_headers: GwHeaders | None = None
    response_headers: GwHeaders | None = None
    direct_status: int = 0         # answer locally with this status (500: no valid backend)


@dataclass(frozen=True, slots=True)
class GwVirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[GwRoute, ...]


@dataclass(frozen=True, slots=True)
class GwFilterChain:
    name: str
    virtual_hosts: tuple[GwVirtualHost, ...]
    secret: str = ""                       # SDS secret name; "" = plain HTTP
    server_names: tuple[str, ...] = ()     # SNI; () = any (the default certificate)


@dataclass(frozen=True, slots=True)
class GwListener:
    name: str
    port: int
    chains: tuple[GwFilterChain, ...]
    address: str = ""                      # "" = GatewayOptions.address


@dataclass(frozen=True, slots=True)
class GwCluster:
    name: str
    endpoints: tuple[tuple[str, int], ...]
    http2: bool = False            # HTTP/2 (h2c) upstream: gRPC backends; else HTTP/1.1


@dataclass(frozen=True, slots=True)
class GwSecret:
    name: str
    cert_pem: str
    key_pem: str


@dataclass(frozen=True, slots=True)
class EgressChain:
    name: str
    sources: tuple[str, ...]               # selected endpoints' IPs
    destinations: tuple[str, ...]          # CIDRs
    cluster: str                           # the egress cluster of the policy's egress IP
    http: tuple[HTTPRule, ...] | None = None


@dataclass(frozen=True, slots=True)
class EgressCluster:
    name: str
    source_ip: str


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    address: str = "0.0.0.0"               # the node address ingress listeners bind to
    upstream_source: str = ""              # source address of upstream connections (identity 8)
    egress_address: str = "127.0.0.1"      # where the egress gateway listener binds
    egress_port: int = 15003
    egress_transparent: bool = True        # sk_assign'ed / TPROXY'd flows need IP_TRANSPARENT
    upstream_mark: int = 0x1000            # egress upstream: skipped by the datapath redirect
    als_cluster: str | None = "ostium_als"
    als_flush_interval_ms: int = 100
    connect_timeout_ms: int = 2000


@dataclass(frozen=True, slots=True)
class GatewayInput:
    listeners: tuple[GwListener, ...] = ()
    clusters: tuple[GwCluster, ...] = ()
    secrets: tuple[GwSecret, ...] = ()
    egress_chains: tuple[EgressChain, ...] = ()
    egress_clusters: tuple[EgressCluster, ...] = ()
    options: GatewayOptions = field(default_factory=GatewayOptions)


@dataclass(frozen=True, slots=True)
class GatewayResources:
    listeners: tuple[dict[str, Any], ...]
    routes: tuple[dict[str, Any], ...]
    clusters: tuple[dict[str, Any], ...]
    secrets: tuple[dict[str, Any], ...]

    def by_type(self) -> dict[str, list[dict[str, Any]]]:
        return {TypeURL.CLUSTER.value: list(self.clusters), TypeURL.LISTENER.value: list(self.listeners),
                TypeURL.ROUTE.value: list(self.routes), TypeURL.SECRET.value: list(self.secrets)}


# ---- translation -------------------------------------------------------------------------------


def translate_gateway(inp: GatewayInput) -> GatewayResources:
    opts = inp.options
    listeners, routes = [], []
    for lst in inp.listeners:
        chains = []
        for chain in lst.chains:
            chains.append(_chain(chain, opts))
            routes.append(_route_config(chain))
        listener: dict[str, Any] = {
            "name": lst.name,
            "address": {"socket_address": {"address": lst.address or opts.address, "port_value": lst.port}},
            "filter_chains": chains,
            "traffic_direction": "INBOUND",
        }
        if any(c.secret for c in lst.chains):
            listener["listener_filters"] = [{"name": "envoy.filters.listener.tls_inspector",
                                             "typed_config": {"@type": TLS_INSPECTOR_TYPE}}]
        listeners.append(listener)
    clusters = [_cluster(c, opts) for c in inp.clusters]
    if inp.egress_chains:
        listeners.append(_egress_listener(inp.egress_chains, opts))
        clusters += [_egress_cluster(c, opts) for c in inp.egress_clusters]
    secrets = [{"name": s.name, "tls_certificate": {"certificate_chain": {"inline_string": s.cert_pem},
                                                     "private_key": {"inline_string": s.key_pem}}}
               for s in inp.secrets]
    return GatewayResources(tuple(listeners), tuple(routes), tuple(clusters), tuple(secrets))


def _access_log(opts: GatewayOptions, name: str, kind: str) -> list[dict[str, Any]]:
    if not opts.als_cluster:
        return []
    return [{"name": "envoy.access_loggers.http_grpc", "typed_config": {
        "@type": ALS_TYPE,
        "common_config": {
            "log_name": name, "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": opts.als_cluster}},
            "buffer_flush_interval": f"{opts.als_flush_interval_ms / 1000:.3f}s",
            "custom_tags": [{"tag": "ostium.direction", "literal": {"value": kind}},
                            {"tag": "ostium.filter_chain", "literal": {"value": name}}]},
        "additional_response_headers_to_log": ["grpc-status"],
        "additional_response_trailers_to_log": ["grpc-status"]}}]


def _hcm(name: str, opts: GatewayOptions, kind: str, *, rds: bool = True,
         route_config: dict | None = None, rbac: dict | None = None) -> dict[str, Any]:
    filters = []
    if rbac is not None:
        filters.append({"name": RBAC_FILTER, "typed_config": {"@type": RBAC_TYPE, "rules": rbac}})
    filters.append({"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}})
    hcm: dict[str, Any] = {
        "@type": HCM_TYPE, "stat_prefix": name.replace(":", "_").replace("/", "_"), "codec_type": "AUTO",
        "normalize_path": True, "merge_slashes": True,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
        "strip_any_host_port": True,
        # An edge proxy: X-Forwarded-For gets the real client, never what the client claimed.
        "use_remote_address": kind == "ingress-gateway",
        "http_filters": filters,
    }
    if rds:
        hcm["rds"] = {"route_config_name": name, "config_source": {"ads": {}, "resource_api_version": "V3"}}
    else:
        hcm["route_config"] = route_config
    log = _access_log(opts, name, kind)
    if log:
        hcm["access_log"] = log
    return hcm


def _chain(chain: GwFilterChain, opts: GatewayOptions) -> dict[str, Any]:
    out: dict[str, Any] = {"name": chain.name, "filters": [{
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": _hcm(chain.name, opts, "ingress-gateway")}]}
    if chain.secret:
        if chain.server_names:
            out["filter_chain_match"] = {"server_names": list(chain.server_names)}
        out["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": DOWNSTREAM_TLS_TYPE,
            "common_tls_context": {
                "alpn_protocols": ["h2", "http/1.1"],
                "tls_certificate_sds_secret_configs": [{
                    "name": chain.secret, "sds_config": {"ads": {}, "resource_api_version": "V3"}}]}}}
    return out


def _string_match(value: str, regex: bool) -> dict[str, Any]:
    return {"safe_regex": {"regex": value}} if regex else {"exact": value}


def _route_match(m: GwMatch) -> dict[str, Any]:
    out: dict[str, Any]
    if m.path_kind == "exact":
        out = {"path": m.path}
    elif m.path_kind == "regex":
        out = {"safe_regex": {"regex": m.path}}
    else:
        trimmed = m.path.rstrip("/")
        # Gateway API and Ingress prefixes match whole path elements: /foo matches /foo and /foo/x,
        # never /foobar. Envoy's path_separated_prefix is exactly that (and needs no trailing /).
        out = {"path_separated_prefix": trimmed} if trimmed else {"prefix": "/"}
    headers = [{"name": h.name.lower(), "string_match": _string_match(h.value, h.regex)} for h in m.headers]
    if m.method:
        headers.append({"name": ":method", "string_match": {"exact": m.method}})
    if headers:
        out["headers"] = headers
    if m.query:
        out["query_parameters"] = [{"name": q.name, "string_match": _string_match(q.value, q.regex)}
                                   for q in m.query]
    if m.grpc:
        out["grpc"] = {}
    return out


def _header_options(h: GwHeaders, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    adds = [{"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"} for k, v in h.set]
    adds += [{"header": {"key": k, "value": v}, "append_action": "APPEND_IF_EXISTS_OR_ADD"} for k, v in h.add]
    if adds:
        out[f"{prefix}_headers_to_add"] = adds
    if h.remove:
        out[f"{prefix}_headers_to_remove"] = [n.lower() for n in h.remove]
    return out


def _route(r: GwRoute) -> dict[str, Any]:
    out: dict[str, Any] = {"name": r.name, "match": _route_match(r.match)}
    if r.request_headers:
        out.update(_header_options(r.request_headers, "request"))
    if r.response_headers:
        out.update(_header_options(r.response_headers, "response"))
    if r.redirect is not None:
        rd = r.redirect
        red: dict[str, Any] = {"response_code": "MOVED_PERMANENTLY" if rd.status == 301 else "FOUND"}
        if rd.scheme:
            red["scheme_redirect"] = rd.scheme
        if rd.host:
            red["host_redirect"] = rd.host
        if rd.port:
            red["port_redirect"] = rd.port
        if rd.path_kind == "full":
            red["path_redirect"] = rd.path
        elif rd.path_kind == "prefix":
            red["prefix_rewrite"] = rd.path
        out["redirect"] = red
        return out
    backends = [b for b in r.backends if b.weight > 0]
    if r.direct_status or not any(b.cluster for b in backends):
        # The spec: a rule whose backends are all invalid (or weigh 0, or none) answers 500.
        out["direct_response"] = {"status": r.direct_status or 500}
        return out
    action: dict[str, Any] = {"timeout": "0s"}   # no route timeout: gRPC streams live as long as they need
    if len(backends) == 1:
        action["cluster"] = backends[0].cluster
    else:
        # An invalid backend keeps its weight and points at a cluster that does not exist: Envoy then
        # answers 500 for its share of the requests, as the Gateway API asks.
        action["weighted_clusters"] = {"clusters": [{"name": b.cluster or INVALID_BACKEND_CLUSTER,
                                                     "weight": b.weight} for b in backends]}
        if not all(b.cluster for b in backends):
            action["cluster_not_found_response_code"] = "INTERNAL_SERVER_ERROR"
    if r.rewrite is not None:
        rw = r.rewrite
        if rw.host:
            action["host_rewrite_literal"] = rw.host
        if rw.path_kind == "full":
            action["regex_rewrite"] = {"pattern": {"regex": ".*"}, "substitution": rw.path}
        elif rw.path_kind == "prefix":
            action["prefix_rewrite"] = rw.path
    out["route"] = action
    return out


def _route_config(chain: GwFilterChain) -> dict[str, Any]:
    return {"name": chain.name,
            "virtual_hosts": [{"name": vh.name, "domains": list(vh.domains),
                               "routes": [_route(r) for r in vh.routes]} for vh in chain.virtual_hosts]}


def _protocol_options(http2: bool | None = None) -> dict[str, Any]:
    """None: the downstream's protocol (egress: the client chose it); else HTTP/2 or HTTP/1.1."""
    if http2 is None:
        config: dict[str, Any] = {"use_downstream_protocol_config": {"http_protocol_options": {},
                                                                     "http2_protocol_options": {}}}
    else:
        config = {"explicit_http_config": {"http2_protocol_options" if http2 else "http_protocol_options": {}}}
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {"@type": HTTP_OPTIONS_TYPE, **config}}


def _cluster(c: GwCluster, opts: GatewayOptions) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": c.name, "type": "STATIC", "lb_policy": "ROUND_ROBIN",
        "connect_timeout": f"{opts.connect_timeout_ms / 1000:.3f}s",
        # Gateway API: HTTP/1.1 to backends unless they speak gRPC (HTTP/2 without TLS).
        "typed_extension_protocol_options": _protocol_options(c.http2),
        "load_assignment": {"cluster_name": c.name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": ip, "port_value": port}}}}
            for ip, port in c.endpoints]}] if c.endpoints else []},
    }
    if opts.upstream_source:
        # The backends see connections from this address; the ipcache maps it to identity 8 (ingress).
        cluster["upstream_bind_config"] = {"source_address": {"address": opts.upstream_source, "port_value": 0}}
    return cluster


def _egress_cluster(c: EgressCluster, opts: GatewayOptions) -> dict[str, Any]:
    return {
        "name": c.name, "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": f"{opts.connect_timeout_ms / 1000:.3f}s",
        "typed_extension_protocol_options": _protocol_options(),
        "upstream_bind_config": {
            # The destination sees the egress IP; the mark keeps the datapath from redirecting again.
            "source_address": {"address": c.source_ip, "port_value": 0},
            "socket_options": [{"level": SOL_SOCKET, "name": SO_MARK, "int_value": opts.upstream_mark,
                                "state": "STATE_PREBIND"}]},
    }


def _prefix(cidr: str) -> dict[str, Any]:
    addr, _, plen = cidr.partition("/")
    return {"address_prefix": addr, "prefix_len": int(plen or 32)}


def _egress_listener(chains: tuple[EgressChain, ...], opts: GatewayOptions) -> dict[str, Any]:
    out = []
    for ch in chains:
        match = {"source_prefix_ranges": [_prefix(f"{ip}/32") for ip in ch.sources],
                 "prefix_ranges": [_prefix(c) for c in ch.destinations]}
        if ch.http is None:
            filters = [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": TCP_PROXY_TYPE, "stat_prefix": ch.name.replace(":", "_").replace("/", "_"),
                "cluster": ch.cluster}}]
        else:
            # Wildcard peer: the chain already selects source and destination; the HTTP rules decide.
            rbac = rbac_rules(Direction.EGRESS, [PeerRule(None, ch.http)], {})
            route_config = {"name": ch.name, "virtual_hosts": [{"name": ch.name, "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": ch.cluster, "timeout": "0s"}}]}]}
            filters = [{"name": "envoy.filters.network.http_connection_manager",
                        "typed_config": _hcm(ch.name, opts, "egress-gateway", rds=False,
                                             route_config=route_config, rbac=rbac)}]
        out.append({"name": ch.name, "filter_chain_match": match, "filters": filters})
    return {
        "name": EGRESS_LISTENER,
        "address": {"socket_address": {"address": opts.egress_address, "port_value": opts.egress_port}},
        "transparent": opts.egress_transparent,
        "listener_filters": [{"name": "envoy.filters.listener.original_dst",
                              "typed_config": {"@type": ORIGINAL_DST_TYPE}}],
        "filter_chains": out,
        "traffic_direction": "OUTBOUND",
    }
