"""The flow model (after Hubble's flow JSON) and the converters from each source's records.

A Flow is one observed event: a datapath trace/drop event, an HTTP/gRPC request Envoy logged, or a
Kafka request the Kafka proxy handled. Sources hand over their own record types; the converters
read them by attribute (or dict key) with defaults, so they stay decoupled from those modules.

JSON field names follow Hubble (`verdict`, `drop_reason_desc`, `IP`, `l4`, `source`, `destination`,
`l7`, `traffic_direction`, `is_reply`, `Summary`, `event_type`, ...); labels are "k=v" strings.
"""

from __future__ import annotations

import enum
import functools
import uuid as uuidlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from collections.abc import Mapping as _AbcMapping
from typing import Any, Callable, Mapping

TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")


class Verdict(enum.StrEnum):
    FORWARDED = "FORWARDED"
    DROPPED = "DROPPED"
    REDIRECTED = "REDIRECTED"
    AUDIT = "AUDIT"
    ERROR = "ERROR"


class FlowType(enum.StrEnum):
    """Where the flow came from (Hubble's event kinds; `--type trace|drop|l7`)."""

    TRACE = "trace"
    DROP = "drop"
    L7 = "l7"


class Direction(enum.StrEnum):
    INGRESS = "INGRESS"
    EGRESS = "EGRESS"
    UNKNOWN = "TRAFFIC_DIRECTION_UNKNOWN"


class L7Type(enum.StrEnum):
    REQUEST = "REQUEST"
    RESPONSE = "RESPONSE"


# Cilium monitor message types, as Hubble's event_type.type carries them.
EVENT_TYPE_CODES = {FlowType.DROP: 1, FlowType.TRACE: 4, FlowType.L7: 129}

# Datapath reason codes (bpf/lib/events.h) → (name, human text). Kept here, not imported from
# bpf.maps, so the CLI and the UI never need the datapath package.
DROP_REASONS: dict[int, tuple[str, str]] = {
    0: ("REASON_UNKNOWN", "Unknown"),
    1: ("NEW_FLOW", "New flow"),
    2: ("REPLY", "Reply"),
    10: ("POLICY_DENY", "Policy denied (deny rule)"),
    11: ("POLICY_DENIED", "Policy denied"),
    12: ("UNSUPPORTED_L3_PROTOCOL", "Unsupported L3 protocol"),
    13: ("INVALID_PACKET_DROPPED", "Invalid packet"),
    14: ("PROXY_UNAVAILABLE", "L7 proxy unavailable (refused)"),
    15: ("PROXY_BYPASS", "L7 rule not enforced by a proxy (dropped)"),
    16: ("PROXY_BOTH_ENDS", "L7 rules at both ends of a node-local flow (refused)"),
    63: ("EVENTS_LOST", "Events lost"),
    # L7 denials (not datapath codes): the proxy answered itself.
    200: ("L7_POLICY_DENIED", "L7 policy denied"),
    201: ("PROXY_ERROR", "Proxy error"),
}
DROP_REASON_CODES = {name: code for code, (name, _) in DROP_REASONS.items()}
L7_DENIED = 200
L7_ERROR = 201

PROTO_NAMES = {1: "ICMPv4", 6: "TCP", 17: "UDP", 132: "SCTP"}

# Reserved identities (DESIGN.md "Identity"): labels when the allocator knows nothing about them.
RESERVED_IDENTITIES: dict[int, str] = {1: "host", 2: "world", 3: "unmanaged", 4: "health", 5: "init",
                                       6: "remote-node", 7: "kube-apiserver", 8: "ingress"}
RESERVED_IDS = {name: num for num, name in RESERVED_IDENTITIES.items()}


@dataclass(frozen=True, slots=True)
class EndpointMeta:
    """What enrichment knows about one side (without the port): shared by every flow of that peer."""

    identity: int = 0
    labels: tuple[str, ...] = ()            # "k=v", sorted
    namespace: str = ""
    pod_name: str = ""
    workload: str = ""                      # app label or pod name without replica suffix
    endpoint_id: int = 0

    def label_map(self) -> dict[str, str]:
        return _label_map(self.labels)


@dataclass(slots=True)
class Endpoint:
    """One side of a flow. Not frozen: the observer builds two per flow it reads back from the ring
    and a frozen dataclass's __init__ costs several times more. Treat it as immutable."""

    ip: str = ""
    port: int = 0
    identity: int = 0
    labels: tuple[str, ...] = ()
    namespace: str = ""
    pod_name: str = ""
    workload: str = ""
    endpoint_id: int = 0

    @property
    def name(self) -> str:
        """ns/pod, else the reserved identity, else the IP: what a person calls this side."""
        if self.pod_name:
            return f"{self.namespace}/{self.pod_name}" if self.namespace else self.pod_name
        if self.identity in RESERVED_IDENTITIES:
            return f"reserved:{RESERVED_IDENTITIES[self.identity]}" if not self.ip else self.ip
        return self.ip

    def label_map(self) -> dict[str, str]:
        """Labels as a dict (shared and cached per label set: do not modify it)."""
        return _label_map(self.labels)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"identity": self.identity}
        if self.endpoint_id:
            d["ID"] = self.endpoint_id
        if self.namespace:
            d["namespace"] = self.namespace
        if self.labels:
            d["labels"] = list(self.labels)
        if self.pod_name:
            d["pod_name"] = self.pod_name
        if self.workload:
            d["workloads"] = [{"name": self.workload, "kind": "Workload"}]
        return d


# Label sources (Cilium's "source:key" form, see mesh/identity/labels.py). A key without a
# source matches any source, so `app=x` selects `k8s:app=x`.
LABEL_SOURCES = ("k8s", "reserved", "cidr", "any", "container", "unspec")


def bare_key(key: str) -> str:
    src, sep, rest = key.partition(":")
    return rest if sep and src in LABEL_SOURCES else key


@functools.lru_cache(maxsize=8192)
def _label_map(labels: tuple[str, ...]) -> dict[str, str]:
    """{key: value} with both the full keys ("k8s:app") and, where absent, the bare ones ("app")."""
    out: dict[str, str] = {}
    for kv in labels:
        k, _, v = kv.partition("=")
        out[k] = v
    for kv in labels:
        k, _, v = kv.partition("=")
        out.setdefault(bare_key(k), v)
    return out


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "namespace": self.namespace}


@dataclass(frozen=True, slots=True)
class HTTP:
    method: str = ""
    url: str = ""
    protocol: str = ""
    code: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    grpc_status: int | None = None

    @property
    def path(self) -> str:
        rest = self.url.split("://", 1)[-1] if "://" in self.url else self.url
        if "://" in self.url:
            slash = rest.find("/")
            rest = rest[slash:] if slash >= 0 else "/"
        return rest.split("?", 1)[0]

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"method": self.method, "url": self.url, "protocol": self.protocol}
        if self.code:
            d["code"] = self.code
        if self.headers:
            d["headers"] = [{"key": k, "value": v} for k, v in self.headers]
        if self.grpc_status is not None:
            d["grpc_status"] = self.grpc_status
        return d


@dataclass(frozen=True, slots=True)
class Kafka:
    api_key: str = ""
    api_version: int = 0
    topics: tuple[str, ...] = ()
    correlation_id: int = 0
    error_code: int = 0
    client_id: str = ""

    @property
    def topic(self) -> str:
        return ",".join(self.topics)

    def to_json(self) -> dict[str, Any]:
        return {"api_key": self.api_key, "api_version": self.api_version, "topic": self.topic,
                "correlation_id": self.correlation_id, "error_code": self.error_code,
                "client_id": self.client_id}


@dataclass(frozen=True, slots=True)
class L7:
    type: L7Type
    latency_ns: int = 0
    http: HTTP | None = None
    kafka: Kafka | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type.value, "latency_ns": self.latency_ns}
        if self.http is not None:
            d["http"] = self.http.to_json()
        if self.kafka is not None:
            d["kafka"] = self.kafka.to_json()
        return d


@dataclass(slots=True)
class Flow:
    time: float                                      # Unix seconds
    verdict: Verdict
    type: FlowType
    source: Endpoint
    destination: Endpoint
    protocol: str = ""                               # TCP, UDP, ICMPv4, SCTP, or a number
    tcp_flags: tuple[str, ...] = ()
    icmp_type: int | None = None
    drop_reason: int = 0
    traffic_direction: Direction = Direction.UNKNOWN
    is_reply: bool = False
    l7: L7 | None = None
    source_service: Service | None = None
    destination_service: Service | None = None
    node_name: str = ""
    proxy_port: int = 0
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))

    @property
    def drop_reason_desc(self) -> str:
        return DROP_REASONS.get(self.drop_reason, (f"REASON_{self.drop_reason}", ""))[0] \
            if self.drop_reason else ""

    @property
    def drop_reason_text(self) -> str:
        name, text = DROP_REASONS.get(self.drop_reason, (f"reason {self.drop_reason}", ""))
        return text or name

    @property
    def l7_protocol(self) -> str:
        if self.l7 is None:
            return ""
        return "http" if self.l7.http is not None else "kafka" if self.l7.kafka is not None else "l7"

    def summary(self) -> str:
        """Hubble's Summary: what happened, in one phrase."""
        if self.l7 is not None:
            if self.l7.http is not None:
                h = self.l7.http
                if self.l7.type is L7Type.RESPONSE:
                    return (f"{h.protocol} {h.code} {self.l7.latency_ns // 1_000_000}ms "
                            f"({h.method} {h.url})").strip()
                return f"{h.protocol} {h.method} {h.url}".strip()
            if self.l7.kafka is not None:
                k = self.l7.kafka
                s = f"Kafka {k.api_key} v{k.api_version} topic {k.topic or '-'}"
                return s + (f" error {k.error_code}" if k.error_code else "")
        if self.protocol == "TCP":
            return f"TCP Flags: {', '.join(self.tcp_flags)}" if self.tcp_flags else "TCP"
        if self.protocol == "ICMPv4" and self.icmp_type is not None:
            return f"ICMPv4 type {self.icmp_type}"
        return self.protocol

    def event_subtype(self) -> str:
        """Hubble's compact type column: to-endpoint, to-proxy, policy-verdict, http-request, ..."""
        if self.l7 is not None:
            kind = self.l7_protocol
            return f"{kind}-{self.l7.type.value.lower()}"
        if self.type is FlowType.DROP:
            return self.drop_reason_text
        if self.verdict is Verdict.REDIRECTED:
            return "to-proxy"
        return "to-endpoint" if self.traffic_direction is Direction.INGRESS else "to-stack"

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "time": iso_time(self.time),
            "uuid": self.uuid,
            "verdict": self.verdict.value,
        }
        if self.drop_reason and self.verdict in (Verdict.DROPPED, Verdict.ERROR):
            d["drop_reason"] = self.drop_reason
            d["drop_reason_desc"] = self.drop_reason_desc
        if self.source.ip or self.destination.ip:
            d["IP"] = {"source": self.source.ip, "destination": self.destination.ip,
                       "ipVersion": "IPv6" if ":" in (self.source.ip or self.destination.ip) else "IPv4"}
        l4 = self._l4_json()
        if l4:
            d["l4"] = l4
        d["source"] = self.source.to_json()
        d["destination"] = self.destination.to_json()
        d["Type"] = "L7" if self.l7 is not None else "L3_L4"
        d["node_name"] = self.node_name
        d["event_type"] = {"type": EVENT_TYPE_CODES[self.type], "sub_type": self.event_subtype()}
        d["flow_type"] = self.type.value
        if self.source_service is not None:
            d["source_service"] = self.source_service.to_json()
        if self.destination_service is not None:
            d["destination_service"] = self.destination_service.to_json()
        d["traffic_direction"] = self.traffic_direction.value
        d["is_reply"] = self.is_reply
        if self.l7 is not None:
            d["l7"] = self.l7.to_json()
        if self.proxy_port:
            d["proxy_port"] = self.proxy_port
        d["Summary"] = self.summary()
        return d

    def _l4_json(self) -> dict[str, Any]:
        ports = {"source_port": self.source.port, "destination_port": self.destination.port}
        if self.protocol == "TCP":
            return {"TCP": {**ports, "flags": {f: True for f in self.tcp_flags}}}
        if self.protocol == "UDP":
            return {"UDP": ports}
        if self.protocol == "ICMPv4":
            return {"ICMPv4": {"type": self.icmp_type or 0}}
        if self.protocol:
            return {self.protocol: ports}
        return {}


def iso_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


# ---- enrichment ---------------------------------------------------------------------------------

def _none(*_args: Any) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Enricher:
    """What the agent knows about addresses and identities, as callables (no agent import here).

    identity_labels(id) -> {k: v} | None             the identity allocator's labels of an identity
    endpoint_by_ip(ip) -> (namespace, pod, labels) | None   a local endpoint (pod) with this IP
    service_by_ip_port(ip, port) -> (namespace, name) | None   a service frontend or backend
    identity_by_ip(ip) -> id | None                   the ipcache (L7 records carry IPs only)
    """

    identity_labels: Callable[[int], Mapping[str, str] | None] = _none
    endpoint_by_ip: Callable[[str], "tuple[str, str, Mapping[str, str]] | None"] = _none
    service_by_ip_port: Callable[[str, int], "tuple[str, str] | None"] = _none
    identity_by_ip: Callable[[str], int | None] = _none
    node_name: str = ""

    def peer(self, ip: str, identity: int = 0) -> EndpointMeta:
        """Everything known about one side; pure of the callables (the observer caches results)."""
        if not identity:
            identity = self.identity_by_ip(ip) or 0
        ep = self.endpoint_by_ip(ip) if ip else None
        pod_labels: Mapping[str, str] = {}
        namespace = pod = ""
        if ep is not None:
            namespace, pod, pod_labels = ep[0], ep[1], ep[2] or {}
        # The identity's (security) labels as the allocator has them ("k8s:app": "x"), then the
        # pod's other labels (as k8s labels) that the identity does not already carry.
        labels: dict[str, str] = dict(self.identity_labels(identity) or {}) if identity else {}
        covered = {bare_key(k) for k in labels}
        for k, v in pod_labels.items():
            if bare_key(k) not in covered:
                labels[k if bare_key(k) != k else f"k8s:{k}"] = v
        if not labels and identity in RESERVED_IDENTITIES:
            labels = {f"reserved:{RESERVED_IDENTITIES[identity]}": ""}
        bare = {bare_key(k): v for k, v in labels.items()}
        if not namespace:
            namespace = bare.get("io.kubernetes.pod.namespace", "")
        return EndpointMeta(identity=identity, labels=label_list(labels), namespace=namespace,
                            pod_name=pod, workload=workload_name(pod, bare))

    def service(self, ip: str, port: int) -> Service | None:
        svc = self.service_by_ip_port(ip, port) if ip else None
        return Service(svc[0], svc[1]) if svc else None


def label_list(labels: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(sorted(f"{k}={v}" for k, v in labels.items()))


def workload_name(pod: str, labels: Mapping[str, str]) -> str:
    """The workload a pod belongs to: its app label, else the pod name without a replica suffix."""
    for key in ("app.kubernetes.io/name", "app", "k8s-app", "name"):
        if labels.get(key):
            return labels[key]
    if pod:
        parts = pod.rsplit("-", 2)
        # name-<rs hash>-<pod hash> or name-<n>: keep the stem
        if len(parts) == 3 and len(parts[2]) == 5:
            return parts[0]
        if len(parts) >= 2 and parts[-1].isdigit():
            return pod.rsplit("-", 1)[0]
        return pod
    for kv in labels:
        if kv.startswith("reserved:"):
            return kv
    return ""


def endpoint_of(meta: EndpointMeta | None, ip: str, port: int, endpoint_id: int = 0) -> Endpoint:
    if meta is None:
        return Endpoint(ip, port, 0, (), "", "", "", endpoint_id)
    return Endpoint(ip, port, meta.identity, meta.labels, meta.namespace, meta.pod_name, meta.workload,
                    endpoint_id or meta.endpoint_id)


# ---- converters ---------------------------------------------------------------------------------

def _get(rec: Any, *names: str, default: Any = None) -> Any:
    """The first present field among `names`, from an object's attributes or a mapping's keys."""
    # collections.abc, not typing.Mapping: typing's isinstance check costs microseconds per call.
    if isinstance(rec, _AbcMapping):
        for name in names:
            value = rec.get(name)
            if value is not None:
                return value
        return default
    for name in names:
        value = getattr(rec, name, None)
        if value is not None:
            return value
    return default


def _enum_name(value: Any) -> str:
    return value.name if isinstance(value, enum.Enum) else str(value)


_FLAG_TABLE = tuple(tuple(n for i, n in enumerate(TCP_FLAG_NAMES) if bits & (1 << i)) for bits in range(256))


def tcp_flag_names(bits: int) -> tuple[str, ...]:
    return _FLAG_TABLE[bits & 0xFF]


_DP_VERDICTS = {1: Verdict.FORWARDED, 2: Verdict.REDIRECTED, 3: Verdict.DROPPED}


def flow_from_datapath_event(ev: Any, enricher: Enricher | None = None, *, time: float | None = None,
                             mono_to_wall: float | None = None) -> Flow:
    """A datapath trace/drop event (bpf.maps.Event or anything with its fields) → Flow.

    `time`: the wall clock of the event if known; else `ts_ns` (CLOCK_MONOTONIC) + `mono_to_wall`
    (wall − monotonic seconds), else now.
    """
    import time as _time

    enricher = enricher or Enricher()
    ts_ns = int(_get(ev, "ts_ns", default=0))
    if time is None:
        offset = mono_to_wall if mono_to_wall is not None else _time.time() - _time.monotonic()
        time = ts_ns / 1e9 + offset if ts_ns else _time.time()
    ev_type = int(_get(ev, "type", default=1))
    verdict = _DP_VERDICTS.get(int(_get(ev, "verdict", default=1)), Verdict.ERROR)
    reason = int(_get(ev, "reason", default=0))
    proto = int(_get(ev, "proto", "protocol", default=0))
    flags = _get(ev, "tcp_flags", default=0)
    saddr, daddr = str(_get(ev, "saddr", "src_ip", default="")), str(_get(ev, "daddr", "dst_ip", default=""))
    sport, dport = int(_get(ev, "sport", "src_port", default=0)), int(_get(ev, "dport", "dst_port", default=0))
    src_meta = enricher.peer(saddr, int(_get(ev, "src_identity", default=0)))
    dst_meta = enricher.peer(daddr, int(_get(ev, "dst_identity", default=0)))
    direction = _get(ev, "direction", default=None)
    return Flow(
        time=time,
        verdict=verdict,
        type=FlowType.DROP if ev_type == 2 or verdict is Verdict.DROPPED else FlowType.TRACE,
        source=endpoint_of(src_meta, saddr, 0 if proto == 1 else sport),
        destination=endpoint_of(dst_meta, daddr, 0 if proto == 1 else dport),
        protocol=PROTO_NAMES.get(proto, str(proto)),
        tcp_flags=tcp_flag_names(flags) if proto == 6 and isinstance(flags, int) else tuple(flags or ()),
        icmp_type=dport if proto == 1 else None,
        drop_reason=reason if verdict is Verdict.DROPPED else 0,
        traffic_direction=_direction(direction),
        is_reply=reason == 2,
        source_service=enricher.service(saddr, sport),
        destination_service=enricher.service(daddr, dport),
        node_name=enricher.node_name,
        proxy_port=int(_get(ev, "proxy_port", default=0)),
    )


def _direction(value: Any) -> Direction:
    if value is None or value == "":
        return Direction.UNKNOWN
    if isinstance(value, int) and not isinstance(value, enum.Enum):
        return Direction.INGRESS if value == 0 else Direction.EGRESS
    if isinstance(value, enum.Enum):
        value = value.name
    v = str(value).upper()
    return Direction.INGRESS if v == "INGRESS" else Direction.EGRESS if v == "EGRESS" else Direction.UNKNOWN


def _split_hostport(value: Any) -> tuple[str, int]:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return str(value[0]), int(value[1])
    s = str(value or "")
    if s.startswith("["):
        host, _, port = s[1:].partition("]:")
        return host, int(port or 0)
    host, sep, port = s.rpartition(":")
    if not sep:
        return s, 0
    return host, int(port) if port.isdigit() else 0


def flow_from_http_record(rec: Any, enricher: Enricher | None = None, *,
                          metas: "tuple[EndpointMeta, EndpointMeta] | None" = None,
                          destination_service: "Service | None | bool" = False,
                          uuid: str | None = None) -> Flow:
    """An Envoy access-log record (xdsserver.als.L7Record, or an object or mapping with its fields) → L7 Flow.

    The observer passes what it has cached (both sides' enrichment, the destination's service, a
    sequence-based uuid) with an L7Record, which keeps the per-request cost of L7 flows small; anything
    else is first read into a record view (types normalised, defaults filled) and the enricher is asked."""
    enricher = enricher or Enricher()
    if metas is None or isinstance(rec, _AbcMapping):
        rec = _http_record_view(rec)
        if metas is None:
            metas = (enricher.peer(rec.source_ip), enricher.peer(rec.destination_ip))
    return _flow_from_l7_record(rec, enricher, metas, destination_service, uuid)


def _http_record_view(rec: Any) -> Any:
    """An L7Record-shaped view of any record with its fields (attributes or keys, `status` for
    `response_code`), each of the type L7Record has."""
    import time as _time
    from types import SimpleNamespace

    grpc = _get(rec, "grpc_status", default=None)
    tags = _get(rec, "tags", default={}) or {}
    return SimpleNamespace(
        source_ip=str(_get(rec, "source_ip", default="")), source_port=int(_get(rec, "source_port", default=0)),
        destination_ip=str(_get(rec, "destination_ip", default="")),
        destination_port=int(_get(rec, "destination_port", default=0)),
        response_code=int(_get(rec, "response_code", "status", default=0)),
        rbac_denied=bool(_get(rec, "rbac_denied", default=False)),
        authority=str(_get(rec, "authority", default="")), path=str(_get(rec, "path", default="")),
        content_type=str(_get(rec, "content_type", default="") or ""),
        grpc_status=int(grpc) if grpc is not None else None,
        method=str(_get(rec, "method", default="")), protocol=str(_get(rec, "protocol", default="")),
        duration_ms=float(_get(rec, "duration_ms", default=0.0)),
        tags={"ostium.direction": _direction(tags.get("ostium.direction")).name},
        time=float(_get(rec, "time", default=_time.time())), node_id=str(_get(rec, "node_id", default="")))


_TAG_DIRECTIONS = {"INGRESS": Direction.INGRESS, "EGRESS": Direction.EGRESS}


def _flow_from_l7_record(rec: Any, enricher: Enricher, metas: "tuple[EndpointMeta, EndpointMeta]",
                         destination_service: "Service | None | bool", uuid: str | None) -> Flow:
    """The L7 Flow of an L7Record (or a record view) with the enrichment at hand, built with plain
    attribute reads: this runs once per proxied request that somebody reads."""
    sip, dip, code = rec.source_ip, rec.destination_ip, rec.response_code or 0
    denied = bool(rec.rbac_denied)
    if denied:
        verdict, reason = Verdict.DROPPED, L7_DENIED
    elif code == 0:
        verdict, reason = Verdict.ERROR, L7_ERROR
    else:
        verdict, reason = Verdict.FORWARDED, 0
    authority, path = rec.authority or "", rec.path or ""
    ctype = getattr(rec, "content_type", "")
    grpc = rec.grpc_status
    http = HTTP(rec.method or "", f"http://{authority}{path}" if authority else path, rec.protocol or "", code,
                (("content-type", ctype),) if ctype else (), int(grpc) if grpc is not None else None)
    tags = rec.tags
    direction = tags.get("ostium.direction") if tags else None
    sm, dm = metas
    dport = rec.destination_port or 0
    if destination_service is False:
        destination_service = enricher.service(dip, dport)
    flow = Flow(
        rec.time, verdict, FlowType.L7,
        Endpoint(sip, rec.source_port or 0, sm.identity, sm.labels, sm.namespace, sm.pod_name, sm.workload,
                 sm.endpoint_id),
        Endpoint(dip, dport, dm.identity, dm.labels, dm.namespace, dm.pod_name, dm.workload, dm.endpoint_id),
        "TCP", (), None, reason,
        _TAG_DIRECTIONS.get(direction.upper(), Direction.UNKNOWN) if direction else Direction.UNKNOWN,
        False,
        L7(L7Type.REQUEST if denied or code == 0 else L7Type.RESPONSE, int((rec.duration_ms or 0.0) * 1e6), http),
        None, destination_service, enricher.node_name or rec.node_id or "", 0,
        *((uuid,) if uuid is not None else ()),
    )
    return flow


_KAFKA_DENIED = {"deny", "denied", "drop", "dropped", "reject", "rejected", "false"}
_KAFKA_ERROR = {"error", "failed"}


def flow_from_kafka_record(rec: Any, enricher: Enricher | None = None) -> Flow:
    """A Kafka proxy record (l7parsers.kafkaproxy.KafkaRecord, another object or a dict: api or
    api_key, api_version, topics, client_id, verdict, latency_s|latency_ms|latency_ns, src/dst or
    src_ip/src_port/dst_ip/dst_port, src_identity, correlation_id, error_code) → L7 Flow."""
    import time as _time

    enricher = enricher or Enricher()
    src = _get(rec, "src", "source", default=None)
    dst = _get(rec, "dst", "destination", default=None)
    sip, sport = _split_hostport(src) if src is not None else (
        str(_get(rec, "src_ip", "source_ip", default="")), int(_get(rec, "src_port", "source_port", default=0)))
    dip, dport = _split_hostport(dst) if dst is not None else (
        str(_get(rec, "dst_ip", "destination_ip", default="")),
        int(_get(rec, "dst_port", "destination_port", default=0)))
    verdict_raw = _get(rec, "verdict", "allowed", default="allowed")
    if isinstance(verdict_raw, bool):
        verdict = Verdict.FORWARDED if verdict_raw else Verdict.DROPPED
    else:
        v = _enum_name(verdict_raw).lower()
        verdict = Verdict.DROPPED if v in _KAFKA_DENIED else Verdict.ERROR if v in _KAFKA_ERROR \
            else Verdict.FORWARDED
    denied = verdict is Verdict.DROPPED
    error_code = int(_get(rec, "error_code", default=29 if denied else 0))
    topics = _get(rec, "topics", "topic", default=())
    if isinstance(topics, str):
        topics = (topics,) if topics else ()
    latency_ns = _get(rec, "latency_ns", default=None)
    if latency_ns is None:
        ms = _get(rec, "latency_ms", "duration_ms", default=None)
        latency_ns = ms * 1e6 if ms is not None else float(_get(rec, "latency_s", "latency", default=0.0)) * 1e9
    api = _get(rec, "api", "api_name", default=None)
    if not api:
        key = _get(rec, "api_key", default="")
        api = _enum_name(key) if not isinstance(key, int) or isinstance(key, enum.Enum) else f"api-{key}"
    kafka = Kafka(api_key=str(api).lower(),
                  api_version=int(_get(rec, "api_version", default=0)),
                  topics=tuple(str(t) for t in topics),
                  correlation_id=int(_get(rec, "correlation_id", default=0)),
                  error_code=error_code,
                  client_id=str(_get(rec, "client_id", default="") or ""))
    return Flow(
        time=float(_get(rec, "time", default=_time.time())),
        verdict=verdict, type=FlowType.L7,
        source=endpoint_of(enricher.peer(sip, int(_get(rec, "src_identity", default=0))), sip, sport),
        destination=endpoint_of(enricher.peer(dip), dip, dport),
        protocol="TCP",
        drop_reason=L7_DENIED if denied else L7_ERROR if verdict is Verdict.ERROR else 0,
        traffic_direction=_direction(_get(rec, "direction", default=None)),
        l7=L7(type=L7Type.REQUEST, latency_ns=int(latency_ns), kafka=kafka),
        destination_service=enricher.service(dip, dport),
        node_name=enricher.node_name,
    )
