"""Gateway manifests as typed, validated objects (pure data; parsing is in mesh.gateway.parse).

Kinds: `networking.k8s.io/v1` Ingress and IngressClass, `gateway.networking.k8s.io/v1` Gateway,
HTTPRoute and GRPCRoute, `v1` Secret (type kubernetes.io/tls) and `ostium.io/v1alpha1`
EgressGatewayPolicy. Field names follow the Kubernetes APIs; only what Ostium implements is kept.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

GATEWAY_API = "gateway.networking.k8s.io/v1"
GATEWAY_GROUP = "gateway.networking.k8s.io"
INGRESS_API = "networking.k8s.io/v1"
OSTIUM_API = "ostium.io/v1alpha1"
CONTROLLER_NAME = "ostium.io/gateway-controller"
TLS_SECRET_TYPE = "kubernetes.io/tls"

KIND_GATEWAY = "Gateway"
KIND_HTTPROUTE = "HTTPRoute"
KIND_GRPCROUTE = "GRPCRoute"
KIND_INGRESS = "Ingress"
KIND_INGRESS_CLASS = "IngressClass"
KIND_SECRET = "Secret"
KIND_EGRESS = "EgressGatewayPolicy"
GATEWAY_KINDS = (KIND_GATEWAY, KIND_HTTPROUTE, KIND_GRPCROUTE, KIND_INGRESS, KIND_INGRESS_CLASS,
                 KIND_SECRET, KIND_EGRESS)


class ListenerProtocol(enum.StrEnum):
    HTTP = "HTTP"
    HTTPS = "HTTPS"


class PathType(enum.StrEnum):
    EXACT = "Exact"
    PREFIX = "PathPrefix"
    REGEX = "RegularExpression"


class MatchType(enum.StrEnum):
    EXACT = "Exact"
    REGEX = "RegularExpression"


@dataclass(frozen=True, slots=True)
class Meta:
    name: str
    namespace: str
    # Gateway API breaks precedence ties by creation time: from metadata.creationTimestamp when the
    # manifest has one (RFC 3339 sorts as text), else the order the agent first saw the object.
    created: str = ""


# ---- Secret ------------------------------------------------------------------------------------


class _HasMeta:
    """`name` and `namespace` of the objects that carry a Meta."""

    __slots__ = ()
    meta: "Meta"

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def namespace(self) -> str:
        return self.meta.namespace


@dataclass(frozen=True, slots=True)
class TLSSecret(_HasMeta):
    meta: Meta
    type: str
    cert_pem: str      # decoded tls.crt ("" when missing)
    key_pem: str       # decoded tls.key


# ---- Gateway API -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SecretRef:
    name: str
    namespace: str            # defaulted to the referring object's namespace
    kind: str = "Secret"
    group: str = ""


@dataclass(frozen=True, slots=True)
class GatewayListener:
    name: str
    port: int
    protocol: ListenerProtocol
    hostname: str = ""                           # "" = any host
    certificate_refs: tuple[SecretRef, ...] = ()
    allowed_namespaces: str = "Same"             # Same | All
    allowed_kinds: tuple[str, ...] = ()          # () = the protocol's default route kinds


@dataclass(frozen=True, slots=True)
class Gateway(_HasMeta):
    meta: Meta
    gateway_class: str
    listeners: tuple[GatewayListener, ...]


@dataclass(frozen=True, slots=True)
class ParentRef:
    name: str
    namespace: str
    section_name: str = ""
    port: int = 0
    group: str = GATEWAY_GROUP
    kind: str = KIND_GATEWAY

    def to_api(self) -> dict:
        out: dict = {"group": self.group, "kind": self.kind, "namespace": self.namespace, "name": self.name}
        if self.section_name:
            out["sectionName"] = self.section_name
        if self.port:
            out["port"] = self.port
        return out


@dataclass(frozen=True, slots=True)
class BackendRef:
    name: str
    namespace: str
    port: int = 0              # 0: not given (required for Services)
    weight: int = 1
    group: str = ""
    kind: str = "Service"


@dataclass(frozen=True, slots=True)
class PathMatch:
    type: PathType
    value: str


@dataclass(frozen=True, slots=True)
class ValueMatch:
    """A header or query parameter match."""

    type: MatchType
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class HTTPMatch:
    path: PathMatch = PathMatch(PathType.PREFIX, "/")
    headers: tuple[ValueMatch, ...] = ()
    query_params: tuple[ValueMatch, ...] = ()
    method: str = ""


@dataclass(frozen=True, slots=True)
class HeaderModifier:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PathModifier:
    type: str              # ReplaceFullPath | ReplacePrefixMatch
    value: str


@dataclass(frozen=True, slots=True)
class RequestRedirect:
    scheme: str = ""
    hostname: str = ""
    port: int = 0
    path: PathModifier | None = None
    status_code: int = 302


@dataclass(frozen=True, slots=True)
class URLRewrite:
    hostname: str = ""
    path: PathModifier | None = None


@dataclass(frozen=True, slots=True)
class Filters:
    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    redirect: RequestRedirect | None = None
    rewrite: URLRewrite | None = None


@dataclass(frozen=True, slots=True)
class HTTPRouteRule:
    matches: tuple[HTTPMatch, ...] = (HTTPMatch(),)
    filters: Filters = Filters()
    backends: tuple[BackendRef, ...] = ()


@dataclass(frozen=True, slots=True)
class GRPCMethodMatch:
    type: MatchType = MatchType.EXACT
    service: str = ""          # "" = any service
    method: str = ""           # "" = any method


@dataclass(frozen=True, slots=True)
class GRPCMatch:
    method: GRPCMethodMatch | None = None
    headers: tuple[ValueMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class GRPCRouteRule:
    matches: tuple[GRPCMatch, ...] = (GRPCMatch(),)
    filters: Filters = Filters()
    backends: tuple[BackendRef, ...] = ()


@dataclass(frozen=True, slots=True)
class Route(_HasMeta):
    """An HTTPRoute or a GRPCRoute (`kind` says which; `rules` hold that kind's rules)."""

    kind: str
    meta: Meta
    parent_refs: tuple[ParentRef, ...]
    hostnames: tuple[str, ...]
    rules: tuple[HTTPRouteRule | GRPCRouteRule, ...]


# ---- Ingress -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IngressBackend:
    service: str
    port: int = 0              # by number, or
    port_name: str = ""        # by name (resolved against the Service)


@dataclass(frozen=True, slots=True)
class IngressPath:
    path: str
    path_type: str             # Exact | Prefix | ImplementationSpecific (= Prefix here)
    backend: IngressBackend


@dataclass(frozen=True, slots=True)
class IngressRule:
    host: str
    paths: tuple[IngressPath, ...]


@dataclass(frozen=True, slots=True)
class IngressTLS:
    hosts: tuple[str, ...]
    secret_name: str


@dataclass(frozen=True, slots=True)
class Ingress(_HasMeta):
    meta: Meta
    ingress_class: str
    default_backend: IngressBackend | None
    rules: tuple[IngressRule, ...]
    tls: tuple[IngressTLS, ...]


@dataclass(frozen=True, slots=True)
class IngressClass:
    name: str
    controller: str
    is_default: bool = False


# ---- Egress gateway ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    key: str
    operator: str              # In | NotIn | Exists | DoesNotExist
    values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EndpointSelector:
    """A pod selector, optionally with a namespace selector (both Kubernetes label selectors)."""

    pod: tuple[LabelRequirement, ...] = ()
    namespace: tuple[LabelRequirement, ...] | None = None   # None: any namespace


@dataclass(frozen=True, slots=True)
class EgressHTTPRule:
    method: str = ""
    path: str = ""
    host: str = ""
    headers: tuple[tuple[str, str | None], ...] = ()


@dataclass(frozen=True, slots=True)
class EgressGatewayPolicy(_HasMeta):
    meta: Meta
    selectors: tuple[EndpointSelector, ...]
    destination_cidrs: tuple[str, ...]
    excluded_cidrs: tuple[str, ...] = ()
    egress_ip: str = ""
    interface: str = ""
    http: tuple[EgressHTTPRule, ...] | None = None   # None: plain TCP, no L7 rules


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str = ""

    def to_api(self) -> dict:
        return {"type": self.type, "status": "True" if self.status else "False", "reason": self.reason,
                "message": self.message}


@dataclass(slots=True)
class ObjectStatus:
    """Status of one object: top-level conditions, per-listener (Gateway) or per-parent (routes)."""

    kind: str
    namespace: str
    name: str
    conditions: list[Condition] = field(default_factory=list)
    listeners: list[dict] = field(default_factory=list)
    parents: list[dict] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)   # Gateway status.addresses / Ingress loadBalancer

    def to_api(self) -> dict:
        out: dict = {"kind": self.kind, "namespace": self.namespace, "name": self.name,
                     "conditions": [c.to_api() for c in self.conditions]}
        if self.addresses:
            out["addresses"] = [{"type": "IPAddress", "value": a} for a in self.addresses]
        if self.listeners:
            out["listeners"] = self.listeners
        if self.parents:
            out["parents"] = self.parents
        return out
