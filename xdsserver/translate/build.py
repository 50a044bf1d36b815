"""L7 policy → Envoy Listeners, Routes and Clusters (proto3 JSON dicts). Pure: no I/O, no protobuf.

One transparent listener per proxy port, one filter chain per redirected (endpoint, direction,
port), each with an HTTP connection manager whose route configuration comes over RDS and carries
the RBAC rules as per-route config (RBACPerRoute on the virtual host). The listener-level RBAC
filter denies everything: a chain whose routes are not there yet allows nothing (fail closed).

Why rules live in RDS, not in the listener: a policy change then only replaces a
RouteConfiguration. Envoy swaps it atomically for new requests, established connections stay up
(an LDS change of a filter chain drains its connections), and nothing is rebuilt but the routes.

Output is deterministic (sorted), so an unchanged policy yields unchanged resource versions and
Envoy is not touched.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from mesh.errors import ValidationError
from xdsserver.resources import TypeURL
from xdsserver.translate.model import (Direction, HTTPRule, PeerRule, PortPolicy, ProxyOptions,
                                       TranslateInput)
from xdsserver.translate.regexfactor import factor_alternation

ORIGINAL_DST_CLUSTER = "ostium-original-dst"
STATIC_UPSTREAM_CLUSTER = "ostium-upstream"
_T = "type.googleapis.com/"
HCM_TYPE = _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
RBAC_TYPE = _T + "envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_PER_ROUTE_TYPE = _T + "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
RBAC_FILTER = "envoy.filters.http.rbac"
ROUTER_TYPE = _T + "envoy.extensions.filters.http.router.v3.Router"
ORIGINAL_DST_TYPE = _T + "envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
ALS_TYPE = _T + "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
HTTP_OPTIONS_TYPE = _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
SOL_SOCKET, SO_MARK = 1, 36


@dataclass(frozen=True, slots=True)
class Resources:
    listeners: tuple[dict[str, Any], ...]
    routes: tuple[dict[str, Any], ...]
    clusters: tuple[dict[str, Any], ...]

    def by_type(self) -> dict[str, list[dict[str, Any]]]:
        """In the shape Snapshot.build takes."""
        return {TypeURL.CLUSTER.value: list(self.clusters),
                TypeURL.LISTENER.value: list(self.listeners),
                TypeURL.ROUTE.value: list(self.routes)}


def translate(inp: TranslateInput) -> Resources:
    """Listeners (one per proxy port) and the upstream cluster for a set of port policies."""
    opts = inp.options
    by_proxy: dict[int, dict[tuple[str, Direction, int], list[PortPolicy]]] = defaultdict(
        lambda: defaultdict(list))
    owner: dict[tuple[str, Direction, int], int] = {}
    for i, pp in enumerate(inp.ports):
        _check_port_policy(pp, f"ports[{i}]")
        key = (str(_ip(pp.endpoint_ip)), pp.direction, pp.port)
        if owner.setdefault(key, pp.proxy_port) != pp.proxy_port:
            raise ValidationError(
                f"{key[1].value} {key[0]}:{key[2]} is redirected to two proxy ports "
                f"({owner[key]} and {pp.proxy_port})", path=f"ports[{i}].proxy_port")
        by_proxy[pp.proxy_port][key].append(pp)
    upstream = STATIC_UPSTREAM_CLUSTER if opts.static_upstream else ORIGINAL_DST_CLUSTER
    index = _IPCacheIndex(inp.ipcache)   # once per translation: routes share peer sets
    listeners, routes = [], []
    for proxy_port in sorted(by_proxy):
        chains = []
        for (ip, direction, port), pps in sorted(by_proxy[proxy_port].items(),
                                                  key=lambda kv: _chain_sort_key(kv[0])):
            name = chain_name(direction, ip, port)
            chains.append(_filter_chain(name, ip, direction, port, pps[0].endpoint, opts))
            routes.append(_route_config(name, direction, [r for pp in pps for r in pp.rules],
                                        index, upstream))
        ipv6 = any(_ip(ip).version == 6 for ip, _, _ in by_proxy[proxy_port])
        listeners.append(_listener(proxy_port, chains, opts, ipv6))
    return Resources(tuple(listeners), tuple(routes), (_upstream_cluster(opts),))


def chain_name(direction: Direction, ip: str, port: int) -> str:
    """Name of the filter chain and of its RouteConfiguration (and the access log's log_name)."""
    return f"{direction.value}:{ip}:{port}"


def listener_name(proxy_port: int) -> str:
    return f"ostium-proxy-{proxy_port}"


def _chain_sort_key(key: tuple[str, Direction, int]) -> tuple:
    ip, direction, port = key
    return (direction.value, _ip(ip).version, int(_ip(ip)), port)


def _check_port_policy(pp: PortPolicy, path: str) -> None:
    try:
        _ip(pp.endpoint_ip)
    except ValueError:
        raise ValidationError(f"{pp.endpoint_ip!r} is not an IP address",
                              path=f"{path}.endpoint_ip") from None
    if not 0 <= pp.port <= 65535:
        raise ValidationError(f"{pp.port} is not a port (1-65535, 0 = any)", path=f"{path}.port")
    if not 1 <= pp.proxy_port <= 65535:
        raise ValidationError(f"{pp.proxy_port} is not a port (1-65535)", path=f"{path}.proxy_port")
    if pp.protocol.upper() != "TCP":
        raise ValidationError(f"HTTP rules need TCP, not {pp.protocol}", path=f"{path}.protocol")


# ---- listener and filter chains ---------------------------------------------------------------


def _listener(proxy_port: int, chains: list[dict[str, Any]], opts: ProxyOptions,
              ipv6: bool) -> dict[str, Any]:
    listener = {
        "name": listener_name(proxy_port),
        "address": {"socket_address": {"address": opts.listener_address, "port_value": proxy_port}},
        # The datapath hands us flows for other addresses (bpf_sk_assign); the SYN-ACK from that
        # non-local address needs IP_TRANSPARENT on the listener.
        "transparent": opts.transparent,
        # original_dst restores the socket's real local address (= the original destination) so
        # filter chains match on it and the ORIGINAL_DST cluster forwards there.
        "listener_filters": [{"name": "envoy.filters.listener.original_dst",
                              "typed_config": {"@type": ORIGINAL_DST_TYPE}}],
        # No chain matches → Envoy closes the connection: fail closed.
        "filter_chains": chains,
        "traffic_direction": "UNSPECIFIED",
    }
    if ipv6 and _ip(opts.listener_address).version == 4:
        listener["additional_addresses"] = [{"address": {"socket_address": {
            "address": opts.listener_address_v6, "port_value": proxy_port}}}]
    return listener


def _host_prefix(ip: str) -> dict[str, Any]:
    addr = _ip(ip)
    return {"address_prefix": str(addr), "prefix_len": addr.max_prefixlen}


def _filter_chain(name: str, ip: str, direction: Direction, port: int, endpoint: str,
                  opts: ProxyOptions) -> dict[str, Any]:
    if direction is Direction.INGRESS:
        # Redirected at the destination: the flow is addressed to the endpoint.
        match: dict[str, Any] = {"prefix_ranges": [_host_prefix(ip)]}
    else:
        # Redirected at the source: the flow comes from the endpoint to any peer on `port`.
        match = {"source_prefix_ranges": [_host_prefix(ip)]}
    if port:  # 0: L7 rules on every port of the endpoint
        match["destination_port"] = port
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": f"ostium_{direction.value}_{port}",
        "codec_type": "AUTO",                       # HTTP/1.1 and HTTP/2 (gRPC) downstream
        # Normalize before any filter runs so RBAC and the backend see the same path.
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": opts.escaped_slashes.value,
        "strip_any_host_port": True,                # host rules match "svc", not "svc:80"
        # The peer is who connected (the redirected endpoint), never what X-Forwarded-For claims:
        # access logs and flows must not take a client-supplied source. Requests pass unaltered.
        "use_remote_address": True,
        "skip_xff_append": True,
        "rds": {"route_config_name": name,
                "config_source": {"ads": {}, "resource_api_version": "V3"}},
        "http_filters": [
            # Deny-all default; the route's RBACPerRoute replaces it with the policy's rules.
            {"name": RBAC_FILTER, "typed_config": {"@type": RBAC_TYPE, "rules": {"action": "ALLOW"}}},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}},
        ],
        # RBAC denies with a local 403; give it Cilium's body. Local replies only: a backend's
        # own 403 passes untouched. For gRPC requests Envoy turns the local 403 into
        # grpc-status 7 (PERMISSION_DENIED) with this text as grpc-message.
        "local_reply_config": {"mappers": [{
            "filter": {"status_code_filter": {"comparison": {
                "op": "EQ", "value": {"default_value": 403, "runtime_key": "ostium.denied_status"}}}},
            "body": {"inline_string": opts.denied_body},
        }]},
    }
    if opts.als_cluster:
        hcm["access_log"] = [_access_log(opts, name, direction, ip, port, endpoint)]
    return {"name": name, "filter_chain_match": match,
            "filters": [{"name": "envoy.filters.network.http_connection_manager",
                         "typed_config": hcm}]}


def _route_config(name: str, direction: Direction, rules: list[PeerRule],
                  index: "_IPCacheIndex", upstream: str) -> dict[str, Any]:
    return {
        "name": name,
        "virtual_hosts": [{
            "name": name, "domains": ["*"],
            "routes": [{"match": {"prefix": "/"},
                        # No route timeout: gRPC streams and long polls live as long as they need.
                        "route": {"cluster": upstream, "timeout": "0s"}}],
            "typed_per_filter_config": {RBAC_FILTER: {
                "@type": RBAC_PER_ROUTE_TYPE,
                "rbac": {"rules": rbac_rules(direction, rules, index)}}},
        }],
    }


def _access_log(opts: ProxyOptions, name: str, direction: Direction, ip: str, port: int,
                endpoint: str) -> dict[str, Any]:
    # One tag: every tag is copied into each request's log entry by Envoy, and the rest (endpoint, port,
    # filter chain) is in log_name, which the stream carries once.
    del ip, port, endpoint
    tags = [("ostium.direction", direction.value)]
    return {
        "name": "envoy.access_loggers.http_grpc",
        "typed_config": {
            "@type": ALS_TYPE,
            "common_config": {
                "log_name": name,
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": opts.als_cluster}},
                "buffer_flush_interval": f"{opts.als_flush_interval_ms / 1000:.3f}s",
                # Fewer, larger messages under load (Envoy's default is 16 KiB, ~50 entries; 64 KiB keeps one
                # message's processing short for the agent's event loop).
                "buffer_size_bytes": 65536,
                "custom_tags": [{"tag": k, "literal": {"value": v}} for k, v in tags],
            },
            "additional_request_headers_to_log": ["content-type"],
            # gRPC status is a trailer, or a header in a trailers-only reply (denials).
            "additional_response_headers_to_log": ["grpc-status", "grpc-message"],
            "additional_response_trailers_to_log": ["grpc-status", "grpc-message"],
        },
    }


# ---- RBAC ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)   # pure parse memo: the same addresses recur in every translation
def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(value)


@functools.lru_cache(maxsize=65536)
def _net(value: "str | _Net") -> "_Net":
    return ipaddress.ip_network(value, strict=False)


WORLD = 2  # reserved identity: every address no ipcache prefix claims (mesh.identity.labels)
_Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def rbac_rules(direction: Direction, rules: Iterable[PeerRule],
               ipcache: "Mapping[int, Iterable[str]] | _IPCacheIndex") -> dict[str, Any]:
    """The RBAC `rules` (action ALLOW): one policy per distinct set of remote identities (named
    after the first peer rule that has it). No policy → everything denied.

    Envoy evaluates policies and their permissions one after another, so peer rules with the same
    identities share one policy and their HTTP rules are merged (`_permissions`): a request costs
    about one principal check and one regex run however many rules the policy has.
    """
    policies: dict[str, Any] = {}
    index = ipcache if isinstance(ipcache, _IPCacheIndex) else _IPCacheIndex(ipcache)
    by_peers: dict[frozenset[int] | None, tuple[int, list[PeerRule]]] = {}
    for i, peer in enumerate(rules):
        by_peers.setdefault(peer.identities, (i, []))[1].append(peer)
    for identities, (i, peers) in by_peers.items():
        perms = list(_permissions_of(peers))
        if identities is None:
            policies[f"rule-{i}"] = {"permissions": perms, "principals": [{"any": True}]}
            continue
        ranges = index.ranges(identities)
        if not ranges:
            continue  # identities with no known address: they allow nobody (yet)
        if direction is Direction.INGRESS:
            # direct_remote_ip: the connection's peer, never an X-Forwarded-For value.
            principals = [_range_matcher(net, excl, "direct_remote_ip", "and_ids", "not_id",
                                         "or_ids", "ids") for net, excl in ranges]
        else:
            # Egress: the remote side is the (original) destination = the socket's local address.
            dest = [_range_matcher(net, excl, "destination_ip", "and_rules", "not_rule",
                                   "or_rules", "rules") for net, excl in ranges]
            dest_any = dest[0] if len(dest) == 1 else {"or_rules": {"rules": dest}}
            perms = [{"and_rules": {"rules": [dest_any, p]}} for p in perms]
            principals = [{"any": True}]
        policies[f"rule-{i}"] = {"permissions": perms, "principals": principals}
    return {"action": "ALLOW", "policies": policies}


class _IPCacheIndex:
    """Identity → prefixes, with the ipcache's longest-prefix-match meaning made explicit.

    An address belongs to the identity of the longest prefix containing it. So "identity A's
    prefix 10.0.0.0/8" as an RBAC range must exclude the more specific prefixes inside it that
    belong to other identities (an endpoint 10.0.1.5/32 is not A). World (2) is every address
    minus all known prefixes.
    """

    def __init__(self, ipcache: Mapping[int, Iterable[str]]) -> None:
        self.by_identity: dict[int, list[_Net]] = {}
        self.owner: dict[_Net, int] = {}
        for ident in sorted(ipcache):
            for c in ipcache[ident]:
                net = _net(c)
                self.by_identity.setdefault(ident, []).append(net)
                self.owner.setdefault(net, ident)
        self._memo: dict[frozenset[int], list[tuple[_Net, list[_Net]]]] = {}

    def ranges(self, identities: frozenset[int]) -> list[tuple[_Net, list[_Net]]]:
        hit = self._memo.get(identities)
        if hit is None:
            hit = self._memo[identities] = self._ranges(identities)
        return hit

    def _ranges(self, identities: frozenset[int]) -> list[tuple[_Net, list[_Net]]]:
        nets = {n for i in identities for n in self.by_identity.get(i, ())}
        if WORLD in identities:
            nets |= {ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")}
        out = []
        for net in sorted(nets, key=_net_key):
            excl: list[_Net] = []
            if net.prefixlen < net.max_prefixlen:   # a host address contains nothing else
                excl = [o for o, ident in self.owner.items()
                        if ident not in identities and o.version == net.version
                        and o.prefixlen > net.prefixlen and o.subnet_of(net)]  # type: ignore[arg-type]
                # Keep only the outermost exclusions: one inside another adds nothing.
                excl = [o for o in excl if not any(p != o and o.subnet_of(p) for p in excl)]  # type: ignore[arg-type]
            out.append((net, sorted(excl, key=_net_key)))
        return out


def _net_key(net: _Net) -> tuple:
    return (net.version, net.network_address, net.prefixlen)


def _range_matcher(net: _Net, excl: list[_Net], leaf: str, and_: str, not_: str, or_: str,
                   items: str) -> dict[str, Any]:
    """`net` minus `excl` as an RBAC principal (ids) or permission (rules) tree."""
    inside = {leaf: _net_prefix(net)}
    if not excl:
        return inside
    others = [{leaf: _net_prefix(o)} for o in excl]
    outside = others[0] if len(others) == 1 else {or_: {items: others}}
    return {and_: {items: [inside, {not_: outside}]}}


def _net_prefix(net: _Net) -> dict[str, Any]:
    return {"address_prefix": str(net.network_address), "prefix_len": net.prefixlen}


_REGEX_META = frozenset("\\.^$|?*+()[]{}")

# Envoy refuses a regex whose RE2 program is larger than the runtime key
# re2.max_program_size.error_level (100 by default). User patterns are held to that default one by
# one (validate.py); the bootstrap raises the key to ENVOY_REGEX_PROGRAM_LIMIT for the merged
# alternations built here, which are kept below MERGED_PROGRAM_BUDGET (estimated, see
# _program_estimate) so the estimate can be off by a factor of 2.5 before Envoy would refuse one.
ENVOY_REGEX_PROGRAM_LIMIT = 100_000
MERGED_PROGRAM_BUDGET = 40_000


def _regex(value: str) -> dict[str, Any]:
    """A rule pattern as an Envoy StringMatcher.

    safe_regex is RE2 with full-match semantics ("GET" never matches "GETX"). A pattern without
    regex metacharacters can only fully match itself, so it becomes an exact match: the same
    verdicts, no RE2 program for Envoy to compile and run (most methods and many paths).
    """
    if value and not _REGEX_META.intersection(value):
        return {"exact": value}
    return {"safe_regex": {"regex": value}}


# Constructs whose RE2 program can be far larger than the pattern text (counted repetition,
# Unicode classes, case folding, POSIX classes): their size is measured, not estimated.
_EXPANDING = ("{", "\\p", "\\P", "(?", "[[:")   # "(?" as in (?i); "(?:" alone is not counted


@functools.lru_cache(maxsize=65536)
def _program_estimate(pattern: str) -> int:
    """An upper estimate of the RE2 program size `pattern` adds to an alternation.

    Measured on RE2: a literal character is one instruction; `.`, a class or an escape is at most
    ~15 (a negated class over UTF-8); a program has ~4 of fixed overhead. Compiling 1,000 patterns
    one by one would take ~30 ms per policy change, so only the expanding constructs are compiled.
    """
    if not _REGEX_META.intersection(pattern):
        return len(pattern) + 2
    if any(s in pattern.replace("(?:", "") for s in _EXPANDING):
        import re2  # google-re2, the library Envoy links

        opts = re2.Options()
        opts.log_errors = False
        try:
            return int(re2.compile(f"(?:{pattern})", options=opts).programsize) + 2
        except re2.error:
            return MERGED_PROGRAM_BUDGET + 1   # not mergeable: it stays a regex of its own
    return len(pattern) + 16 * sum(pattern.count(c) for c in ".[\\") + 4


def _mergeable(pattern: str) -> bool:
    # \Q quotes up to \E or the end: inside "(?:...)|(?:...)" it would swallow what follows.
    return "\\Q" not in pattern and _program_estimate(pattern) <= MERGED_PROGRAM_BUDGET


def _path_matchers(paths: list[str]) -> list[dict[str, Any]]:
    """StringMatchers that together fully match exactly the paths any of `paths` fully matches.

    Several patterns become one RE2 alternation: Envoy's safe_regex is a full match of the whole
    alternation, i.e. of one of the alternatives. The alternation is factored
    (regexfactor.factor_alternation: `/svc(?:0|1|...)/items/[0-9]+`, the shared text once), which
    makes it a far smaller program for Envoy to compile on every route update; a pattern that
    cannot be cut safely joins it whole as `(?:p)`. Literal paths join it as they are: having no
    metacharacters they need no escaping. An alternation is closed when the estimated program
    size of its patterns unfactored would exceed MERGED_PROGRAM_BUDGET (factoring only shrinks
    it), so a huge rule set becomes a few alternations, never a refused one.
    """
    if len(paths) == 1:
        return [_regex(paths[0])]
    out: list[dict[str, Any]] = []
    chunk: list[str] = []
    size = 0

    def close() -> None:
        if len(chunk) == 1:
            out.append(_regex(chunk[0]))
        elif chunk:
            out.append({"safe_regex": {"regex": factor_alternation(chunk)}})

    for p in paths:
        if not _mergeable(p):
            out.append(_regex(p))
            continue
        cost = _program_estimate(p)
        if chunk and size + cost > MERGED_PROGRAM_BUDGET:
            close()
            chunk, size = [], 0
        chunk.append(p)
        size += cost
    close()
    return out


# _permissions by the identity of the peers' rule tuples: hashing a 1,000-rule tuple for the lru_cache costs
# ~1 ms, and every port and endpoint of a policy (and every later translation) has the very same tuples.
# Each entry keeps its tuples alive, so their ids cannot be reused while it is here.
_PERMISSIONS_BY_ID: dict[tuple[int, ...], tuple[tuple, tuple[dict[str, Any], ...]]] = {}


def _permissions_of(peers: list[PeerRule]) -> tuple[dict[str, Any], ...]:
    key = tuple(id(p.http) for p in peers)
    hit = _PERMISSIONS_BY_ID.get(key)
    if hit is not None:
        return hit[1]
    perms = _permissions(tuple(peers))
    if len(_PERMISSIONS_BY_ID) >= 1024:
        _PERMISSIONS_BY_ID.clear()
    _PERMISSIONS_BY_ID[key] = (tuple(p.http for p in peers), perms)
    return perms


@functools.lru_cache(maxsize=1024)
def _permissions(peers: tuple[PeerRule, ...]) -> tuple[dict[str, Any], ...]:
    """The RBAC permissions (OR) for the HTTP rules of peer rules that share their peers.

    Memoized (pure; callers only read the dicts): the same rule set recurs on every port and
    endpoint a policy selects, and in every later translation while it is unchanged.

    Rules that differ only by path (same method, host and headers) become one permission whose
    path matcher is an alternation of their paths; a rule without a path makes its group allow
    every path. A peer rule without HTTP rules allows every request.
    """
    if any(not peer.http for peer in peers):
        return ({"any": True},)
    groups: dict[tuple, list[str] | None] = {}
    for peer in peers:
        for r in peer.http:
            key = (r.method, r.host, r.headers)
            if not r.path:
                groups[key] = None               # any path
            elif key not in groups:
                groups[key] = [r.path]
            elif groups[key] is not None:
                groups[key].append(r.path)      # type: ignore[union-attr]
    perms = []
    for (method, host, headers), paths in groups.items():
        matchers = _path_matchers(list(dict.fromkeys(paths))) if paths else []
        perms.append(_http_permission(HTTPRule(method=method, host=host, headers=headers),
                                      matchers))
    return tuple(perms)


def _http_permission(rule: HTTPRule, path_matchers: list[dict[str, Any]] | None = None
                     ) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if rule.method:
        parts.append({"header": {"name": ":method", "string_match": _regex(rule.method)}})
    if path_matchers is None and rule.path:
        path_matchers = [_regex(rule.path)]
    if path_matchers:
        # url_path: the normalized path without the query string.
        paths = [{"url_path": {"path": m}} for m in path_matchers]
        parts.append(paths[0] if len(paths) == 1 else {"or_rules": {"rules": paths}})
    if rule.host:
        parts.append({"header": {"name": ":authority", "string_match": _regex(rule.host)}})
    for h in rule.headers:
        if h.value is None:
            parts.append({"header": {"name": h.name.lower(), "present_match": True}})
        else:
            parts.append({"header": {"name": h.name.lower(), "string_match": {"exact": h.value}}})
    if not parts:
        return {"any": True}
    return {"and_rules": {"rules": parts}}


# ---- upstream --------------------------------------------------------------------------------


def _upstream_cluster(opts: ProxyOptions) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "connect_timeout": f"{opts.connect_timeout_ms / 1000:.3f}s",
        # Same protocol upstream as downstream: HTTP/2 (gRPC) stays HTTP/2.
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": HTTP_OPTIONS_TYPE,
            "use_downstream_protocol_config": {"http_protocol_options": {},
                                               "http2_protocol_options": {}}}},
        # Mark Envoy's own upstream traffic so the datapath never redirects it again.
        "upstream_bind_config": {
            "source_address": {"address": "0.0.0.0", "port_value": 0},
            "socket_options": [{"level": SOL_SOCKET, "name": SO_MARK,
                                "int_value": opts.upstream_mark, "state": "STATE_PREBIND"}],
        },
    }
    if opts.static_upstream:
        host, port = opts.static_upstream
        cluster.update({
            "name": STATIC_UPSTREAM_CLUSTER, "type": "STATIC",
            "load_assignment": {"cluster_name": STATIC_UPSTREAM_CLUSTER, "endpoints": [{
                "lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                    "address": host, "port_value": port}}}}]}]},
        })
    else:
        cluster.update({"name": ORIGINAL_DST_CLUSTER, "type": "ORIGINAL_DST",
                        "lb_policy": "CLUSTER_PROVIDED"})
    return cluster
