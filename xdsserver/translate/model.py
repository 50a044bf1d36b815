"""Input of the translation: what must be enforced on which redirected (endpoint, direction, port).

Kept close to the policy engine's output (mesh/policy): per endpoint and per (direction, port,
protocol) a list of (remote identities or wildcard, HTTP rules), plus the ipcache (identity →
IPs/CIDRs). Pure data: frozen dataclasses, no I/O.

Matching semantics (as Cilium documents them, handed to Envoy the same way):
- method, path, host are regular expressions, matched as an RE2 *full* match (`GET` does not match
  `GETX`; use `/public/.*` for a subtree). The path is matched without the query string, after
  Envoy's normalization (`..`, `.` and `//` resolved); host is matched without a port.
- headers: `HeaderMatch(name)` requires presence, `HeaderMatch(name, value)` an exact value.
- Within one HTTPRule all fields must match (AND); a request passes if any rule of any PeerRule
  whose peers include the remote side matches (OR). A PeerRule with no HTTP rules allows every
  request from its peers (an L3/L4 allow on a port another rule made L7).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping


class Direction(str, Enum):
    INGRESS = "ingress"   # rules of the destination endpoint; remote = source
    EGRESS = "egress"     # rules of the source endpoint; remote = destination


class EscapedSlashes(str, Enum):
    """What Envoy does with %2F/%5C in paths (HCM path_with_escaped_slashes_action)."""

    # Default: answer with a redirect to the unescaped path. The redirected request is normalized
    # and checked by RBAC like any other; the escaped form never reaches RBAC or the backend, so
    # `/public%2F..%2Fprivate` can never be allowed as "/public..." and served as "/private".
    UNESCAPE_AND_REDIRECT = "UNESCAPE_AND_REDIRECT"
    REJECT_REQUEST = "REJECT_REQUEST"             # 400 for any escaped slash
    UNESCAPE_AND_FORWARD = "UNESCAPE_AND_FORWARD"  # RBAC and backend both see the unescaped path


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    name: str
    value: str | None = None      # None: the header must be present (any value)


@dataclass(frozen=True, slots=True)
class HTTPRule:
    method: str = ""              # RE2 full match on :method ("" = any)
    path: str = ""                # RE2 full match on the normalized path, no query ("" = any)
    host: str = ""                # RE2 full match on :authority without port ("" = any)
    headers: tuple[HeaderMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class PeerRule:
    """Remote identities allowed on the port, with the HTTP rules that apply to them."""

    identities: frozenset[int] | None      # None: any remote peer (wildcard)
    http: tuple[HTTPRule, ...] = ()         # empty: every request from these peers


@dataclass(frozen=True, slots=True)
class PortPolicy:
    """The L7 policy of one redirected (endpoint ip, direction, port)."""

    endpoint_ip: str
    direction: Direction
    port: int                               # 0: every port (the chain matches no port)
    proxy_port: int                         # Envoy listener port the datapath redirects to
    rules: tuple[PeerRule, ...]
    protocol: str = "TCP"
    endpoint: str = ""                      # endpoint name/id, for logs and stats only


@dataclass(frozen=True, slots=True)
class ProxyOptions:
    listener_address: str = "127.0.0.1"
    # Also bound when some redirected endpoint is IPv6 (an IPv4 socket never gets IPv6 flows).
    listener_address_v6: str = "::1"
    transparent: bool = True                 # needed for sk_assign'ed flows (ENVIRONMENT.md)
    upstream_mark: int = 0x1000              # SO_MARK on Envoy's upstream sockets (not redirected)
    als_cluster: str | None = "ostium_als"   # None: no access log
    als_flush_interval_ms: int = 100
    escaped_slashes: EscapedSlashes = EscapedSlashes.UNESCAPE_AND_REDIRECT
    connect_timeout_ms: int = 2000
    # Forward to this fixed (host, port) instead of the original destination: for tests and for
    # running without the datapath redirect. None: the ORIGINAL_DST cluster.
    static_upstream: tuple[str, int] | None = None
    denied_body: str = "Access denied\r\n"


@dataclass(frozen=True, slots=True)
class TranslateInput:
    ports: tuple[PortPolicy, ...]
    ipcache: Mapping[int, tuple[str, ...]] = field(default_factory=dict)  # identity → IPs/CIDRs
    options: ProxyOptions = ProxyOptions()
