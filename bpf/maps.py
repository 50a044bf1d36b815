"""One codec per map layout of bpf/lib/maps.h and bpf/lib/events.h.

Each codec packs a frozen dataclass to the exact bytes the C struct has and back, and renders
entries for `ostium bpf map dump`. tests/unit/test_bpf_codecs.py checks the sizes against the
BTF of the compiled objects, so a C change without a codec change fails CI.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
import struct
from dataclasses import asdict, dataclass
from typing import Any, ClassVar


def ip_bytes(ip: str) -> bytes:
    return socket.inet_aton(ip)


def ip_str(raw: bytes) -> str:
    return socket.inet_ntoa(raw)


def port_bytes(port: int) -> bytes:
    return struct.pack("!H", port)


def port_int(raw: bytes) -> int:
    return struct.unpack("!H", raw)[0]


PROTO_NAMES = {0: "ANY", 1: "ICMP", 6: "TCP", 17: "UDP", 132: "SCTP"}
PROTO_NUMBERS = {v: k for k, v in PROTO_NAMES.items()}


class Direction(enum.IntEnum):
    INGRESS = 0
    EGRESS = 1


class PolicyVerdict(enum.IntEnum):
    ALLOW = 1
    DENY = 2
    REDIRECT = 3


class EventType(enum.IntEnum):
    TRACE = 1
    DROP = 2


class Verdict(enum.IntEnum):
    FORWARDED = 1
    REDIRECTED = 2
    DROPPED = 3


class Reason(enum.IntEnum):
    NONE = 0
    NEW_FLOW = 1
    REPLY = 2
    POLICY_DENY = 10
    POLICY_DEFAULT_DENY = 11
    UNSUPPORTED_L3 = 12
    INVALID_PACKET = 13
    PROXY_UNAVAILABLE = 14
    PROXY_BYPASS = 15
    PROXY_BOTH_ENDS = 16
    EVENTS_LOST = 63


REASON_TEXT = {
    Reason.POLICY_DENY: "Policy denied (deny rule)",
    Reason.POLICY_DEFAULT_DENY: "Policy denied (no rule allows)",
    Reason.UNSUPPORTED_L3: "Unsupported L3 protocol (IPv6 on an enforced endpoint)",
    Reason.INVALID_PACKET: "Invalid packet (truncated header)",
    Reason.NEW_FLOW: "New flow",
    Reason.PROXY_UNAVAILABLE: "L7 proxy unavailable (flow refused: fail closed)",
    Reason.PROXY_BYPASS: "L7 rule applies and the flow did not come through the proxy",
    Reason.PROXY_BOTH_ENDS: "L7 rules at both ends of a node-local flow (one proxy pass cannot enforce both)",
}


class Codec:
    """Base: subclasses set FMT (struct format) and implement pack/unpack."""

    FMT: ClassVar[str]

    @classmethod
    def size(cls) -> int:
        return struct.calcsize(cls.FMT)


# ---- socket LB ----

@dataclass(frozen=True, slots=True)
class Lb4Key(Codec):
    FMT: ClassVar[str] = "<4s2sBBHH"
    address: str
    port: int
    proto: int
    slot: int = 0

    def pack(self) -> bytes:
        return struct.pack(self.FMT, ip_bytes(self.address), port_bytes(self.port), self.proto, 0, self.slot, 0)

    @classmethod
    def unpack(cls, raw: bytes) -> "Lb4Key":
        a, p, proto, _, slot, _ = struct.unpack(cls.FMT, raw[: cls.size()])
        return cls(ip_str(a), port_int(p), proto, slot)


SVC_FLAG_AFFINITY = 0x1


@dataclass(frozen=True, slots=True)
class Lb4Service(Codec):
    FMT: ClassVar[str] = "<IHHII"
    backend_id: int = 0
    count: int = 0
    flags: int = 0
    rev_nat_id: int = 0
    affinity_timeout: int = 0

    def pack(self) -> bytes:
        return struct.pack(self.FMT, self.backend_id, self.count, self.flags, self.rev_nat_id,
                           self.affinity_timeout)

    @classmethod
    def unpack(cls, raw: bytes) -> "Lb4Service":
        return cls(*struct.unpack(cls.FMT, raw[: cls.size()]))


@dataclass(frozen=True, slots=True)
class BackendId(Codec):
    FMT: ClassVar[str] = "<I"
    id: int

    def pack(self) -> bytes:
        return struct.pack(self.FMT, self.id)

    @classmethod
    def unpack(cls, raw: bytes) -> "BackendId":
        return cls(struct.unpack(cls.FMT, raw[:4])[0])


@dataclass(frozen=True, slots=True)
class Lb4Backend(Codec):
    FMT: ClassVar[str] = "<4s2sBB"
    address: str
    port: int
    proto: int
    flags: int = 0

    def pack(self) -> bytes:
        return struct.pack(self.FMT, ip_bytes(self.address), port_bytes(self.port), self.proto, self.flags)

    @classmethod
    def unpack(cls, raw: bytes) -> "Lb4Backend":
        a, p, proto, flags = struct.unpack(cls.FMT, raw[: cls.size()])
        return cls(ip_str(a), port_int(p), proto, flags)


@dataclass(frozen=True, slots=True)
class AffinityKey(Codec):
    FMT: ClassVar[str] = "<QII"
    netns_cookie: int
    rev_nat_id: int

    def pack(self) -> bytes:
        return struct.pack(self.FMT, self.netns_cookie, self.rev_nat_id, 0)

    @classmethod
    def unpack(cls, raw: bytes) -> "AffinityKey":
        c, r, _ = struct.unpack(cls.FMT, raw[: cls.size()])
        return cls(c, r)


@dataclass(frozen=True, slots=True)
class AffinityValue(Codec):
    FMT: ClassVar[str] = "<QII"
    last_used_ns: int
    backend_id: int

    def pack(self) -> bytes:
        return struct.pack(self.FMT, self.last_used_ns, self.backend_id, 0)

    @classmethod
    def unpack(cls, raw: bytes) -> "AffinityValue":
        t, b, _ = struct.unpack(cls.FMT, raw[: cls.size()])
        return cls(t, b)


@dataclass(frozen=True, slots=True)
class RevNatKey(Codec):
    FMT: ClassVar[str] = "<Q4s2sH"
    cookie: int
    address: str
    port: int

    def pack(self) -> bytes:
        return struct.pack(self.FMT, self.cookie, ip_bytes(self.address), port_bytes(self.port), 0)

    @classmethod
    def unpack(cls, raw: bytes) -> "RevNatKey":
        c, a, p, _ = struct.unpack(cls.FMT, raw[: cls.size()])
        return cls(c, ip_str(a), port_int(p))


@dataclass(frozen=True, slots=True)
class RevNatValue(Codec):
    FMT: ClassVar[str] = "<4s2sH"
    address: str
    port: int
    rev_nat_id: int

    def pack(self) -> bytes:
        return struct.pack(self.FMT, ip_bytes(self.address), port_bytes(self.port), self.rev_nat_id)

    @classmethod
    def unpack(cls, raw: bytes) -> "RevNatValue":
        a, p, r = struct.unpack(cls.FMT, raw[: cls.size()])
        return cls(ip_str(a), port_int(p), r)


# ---- identity, endpoints, policy ----

@dataclass(frozen=True, slots=True)
class IpcacheKey(Codec):
    FMT: ClassVar[str] = "<I4s"
    prefixlen: int
    address: str

    def pack(self) -> bytes:
        return struct.pack(self.FMT, self.prefixlen, ip_bytes(self.address))

    @classmethod
    def unpack(cls, raw: bytes) -> "IpcacheKey":
        p, a = struct.unpack(cls.FMT, raw[: cls.size()])
        return cls(p, ip_str(a))

    @classmethod
    def from_cidr(cls, cidr: str) -> "IpcacheKey":
        net = ipaddress.IPv4Network(cidr, strict=False)
        return cls(net.prefixlen, str(net.network_address))

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"


@dataclass(frozen=True, slots=True)
class IpKey(Codec):
    """A bare IPv4 address key (ost_ipcache_host: the /32 entries)."""

    FMT: ClassVar[str] = "<4s"
    address: str

    def pack(self) -> bytes:
        return ip_bytes(self.address)

    @classmethod
    def unpack(cls, raw: bytes) -> "IpKey":
        return cls(ip_str(raw[:4]))


@dataclass(frozen=True, slots=True)
class IpcacheValue(Codec):
    FMT: ClassVar[str] = "<II"
    identity: int
    flags: int = 0

    def pack(self) -> bytes:
        return struct.pack(self.FMT, self.identity, self.flags)

    @classmethod
    def unpack(cls, raw: bytes) -> "IpcacheValue":
        return cls(*struct.unpack(cls.FMT, raw[: cls.size()]))


@dataclass(frozen=True, slots=True)
class EgressGwKey(Codec):
    """ost_egress_gw: (source endpoint /32, destination prefix); prefixlen = 32 + destination's."""
    FMT: ClassVar[str] = "<I4s4s"
    prefixlen: int
    source: str
    dest: str

    def pack(self) -> bytes:
        return struct.pack(self.FMT, self.prefixlen, ip_bytes(self.source), ip_bytes(self.dest))

    @classmethod
    def unpack(cls, raw: bytes) -> "EgressGwKey":
        p, s, d = struct.unpack(cls.FMT, raw[: cls.size()])
        return cls(p, ip_str(s), ip_str(d))

    @classmethod
    def of(cls, source: str, dest_cidr: str) -> "EgressGwKey":
        net = ipaddress.IPv4Network(dest_cidr, strict=False)
        return cls(32 + net.prefixlen, source, str(net.network_address))


@dataclass(frozen=True, slots=True)
class EgressGwValue(Codec):
    FMT: ClassVar[str] = "<HH"
    proxy_port: int   # 0: excluded (bypasses the gateway)

    def pack(self) -> bytes:
        return struct.pack(self.FMT, self.proxy_port, 0)

    @classmethod
    def unpack(cls, raw: bytes) -> "EgressGwValue":
        return cls(struct.unpack(cls.FMT, raw[: cls.size()])[0])


@dataclass(frozen=True, slots=True)
class IfindexKey(Codec):
    FMT: ClassVar[str] = "<I"
    ifindex: int

    def pack(self) -> bytes:
        return struct.pack(self.FMT, self.ifindex)

    @classmethod
    def unpack(cls, raw: bytes) -> "IfindexKey":
        return cls(struct.unpack(cls.FMT, raw[:4])[0])


EP_F_INGRESS_ENFORCED = 0x1
EP_F_EGRESS_ENFORCED = 0x2


@dataclass(frozen=True, slots=True)
class EndpointInfo(Codec):
    FMT: ClassVar[str] = "<II4sI4I"
    ep_id: int
    identity: int
    address: str
    flags: int = 0
    # bit i: policy keys of prefix class i (see policy_class) exist, per direction, for a
    # specific identity / for any identity
    plens_ingress: int = 0
    plens_ingress_any: int = 0
    plens_egress: int = 0
    plens_egress_any: int = 0

    @property
    def plens(self) -> tuple[int, int, int, int]:
        return (self.plens_ingress, self.plens_ingress_any, self.plens_egress, self.plens_egress_any)

    def pack(self) -> bytes:
        return struct.pack(self.FMT, self.ep_id, self.identity, ip_bytes(self.address), self.flags, *self.plens)

    @classmethod
    def unpack(cls, raw: bytes) -> "EndpointInfo":
        e, i, a, f, *pl = struct.unpack(cls.FMT, raw[: cls.size()])
        return cls(e, i, ip_str(a), f, *pl)


POLICY_FIXED_PREFIX = 64  # ep_id, direction, pad, identity


def policy_class(prefixlen: int) -> int:
    """Prefix class index (bit in endpoint_info.plens) of a policy key's prefixlen (64..88)."""
    plen = prefixlen - POLICY_FIXED_PREFIX
    return 0 if plen == 0 else plen - 7


@dataclass(frozen=True, slots=True)
class PolicyMapKey(Codec):
    """prefixlen 64: any protocol; 72: one protocol, any port; 72+n: the first n bits of the port.
    Stored as (ep, direction, plen = prefixlen - 64, identity, proto, port masked), a hash key."""

    FMT: ClassVar[str] = "<HBBIBB2s"
    ep_id: int
    direction: int
    identity: int
    proto: int
    port: int
    prefixlen: int

    def pack(self) -> bytes:
        return struct.pack(self.FMT, self.ep_id, self.direction, self.prefixlen - POLICY_FIXED_PREFIX,
                           self.identity, self.proto, 0, port_bytes(self.port))

    @classmethod
    def unpack(cls, raw: bytes) -> "PolicyMapKey":
        ep, d, plen, ident, proto, _, port = struct.unpack(cls.FMT, raw[: cls.size()])
        return cls(ep, d, ident, proto, port_int(port), plen + POLICY_FIXED_PREFIX)

    @property
    def port_range(self) -> tuple[int, int]:
        """(lo, hi) of ports this key covers; (0, 65535) for any."""
        bits = max(0, min(16, self.prefixlen - POLICY_FIXED_PREFIX - 8))
        if bits == 0:
            return (0, 65535)
        span = 1 << (16 - bits)
        return (self.port, self.port + span - 1)


@dataclass(frozen=True, slots=True)
class PolicyMapEntry(Codec):
    FMT: ClassVar[str] = "<BBHIQ"
    verdict: int
    prefixlen: int
    proxy_port: int = 0
    packets: int = 0

    def pack(self) -> bytes:
        return struct.pack(self.FMT, self.verdict, self.prefixlen, self.proxy_port, 0, self.packets)

    @classmethod
    def unpack(cls, raw: bytes) -> "PolicyMapEntry":
        v, pl, pp, _, pk = struct.unpack(cls.FMT, raw[: cls.size()])
        return cls(v, pl, pp, pk)


# ---- conntrack ----

@dataclass(frozen=True, slots=True)
class CtKey(Codec):
    FMT: ClassVar[str] = "<4s4s2s2sBBH"
    saddr: str
    daddr: str
    sport: int
    dport: int
    proto: int
    direction: int
    ep_id: int

    def pack(self) -> bytes:
        return struct.pack(self.FMT, ip_bytes(self.saddr), ip_bytes(self.daddr), port_bytes(self.sport),
                           port_bytes(self.dport), self.proto, self.direction, self.ep_id)

    @classmethod
    def unpack(cls, raw: bytes) -> "CtKey":
        s, d, sp, dp, pr, di, ep = struct.unpack(cls.FMT, raw[: cls.size()])
        return cls(ip_str(s), ip_str(d), port_int(sp), port_int(dp), pr, di, ep)


@dataclass(frozen=True, slots=True)
class CtEntry(Codec):
    FMT: ClassVar[str] = "<QQIHH"
    expires_ns: int
    packets: int
    src_identity: int
    proxy_port: int
    flags: int

    def pack(self) -> bytes:
        return struct.pack(self.FMT, self.expires_ns, self.packets, self.src_identity, self.proxy_port,
                           self.flags)

    @classmethod
    def unpack(cls, raw: bytes) -> "CtEntry":
        return cls(*struct.unpack(cls.FMT, raw[: cls.size()]))


@dataclass(frozen=True, slots=True)
class MetricKey(Codec):
    FMT: ClassVar[str] = "<I"
    reason: int

    def pack(self) -> bytes:
        return struct.pack(self.FMT, self.reason)

    @classmethod
    def unpack(cls, raw: bytes) -> "MetricKey":
        return cls(struct.unpack(cls.FMT, raw[:4])[0])


@dataclass(frozen=True, slots=True)
class MetricValue(Codec):
    """Per-CPU u64 counters, summed."""

    FMT: ClassVar[str] = "<Q"
    count: int

    def pack(self) -> bytes:
        return struct.pack(self.FMT, self.count)

    @classmethod
    def unpack(cls, raw: bytes) -> "MetricValue":
        n = len(raw) // 8
        return cls(sum(struct.unpack(f"<{n}Q", raw[: n * 8])))


# ---- events ----

TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")


@dataclass(frozen=True, slots=True)
class Event(Codec):
    """struct trace_event (bpf/lib/events.h), 48 bytes."""

    FMT: ClassVar[str] = "<QBBBBHHII4s4s2s2sIBBHI"
    ts_ns: int
    type: EventType
    reason: Reason | int
    direction: Direction
    proto: int
    ep_id: int
    proxy_port: int
    src_identity: int
    dst_identity: int
    saddr: str
    daddr: str
    sport: int
    dport: int
    ifindex: int
    verdict: Verdict
    tcp_flags: int
    length: int

    def pack(self) -> bytes:
        return struct.pack(self.FMT, self.ts_ns, self.type, self.reason, self.direction, self.proto,
                           self.ep_id, self.proxy_port, self.src_identity, self.dst_identity,
                           ip_bytes(self.saddr), ip_bytes(self.daddr), port_bytes(self.sport),
                           port_bytes(self.dport), self.ifindex, self.verdict, self.tcp_flags, 0,
                           self.length)

    @classmethod
    def unpack(cls, raw: bytes) -> "Event":
        (ts, ty, reason, d, proto, ep, pp, si, di, sa, da, sp, dp, ifi, verdict, flags, _,
         ln) = struct.unpack(cls.FMT, raw[: cls.size()])
        try:
            r: Reason | int = Reason(reason)
        except ValueError:
            r = reason
        return cls(ts, EventType(ty), r, Direction(d), proto, ep, pp, si, di, ip_str(sa), ip_str(da),
                   port_int(sp), port_int(dp), ifi, Verdict(verdict), flags, ln)

    def to_json(self) -> dict[str, Any]:
        reason = self.reason.name if isinstance(self.reason, Reason) else str(self.reason)
        rec: dict[str, Any] = {
            "type": self.type.name.lower(),
            "verdict": self.verdict.name,
            "reason": reason,
            "reason_text": REASON_TEXT.get(self.reason, reason) if isinstance(self.reason, Reason) else reason,
            "direction": self.direction.name.lower(),
            "endpoint": self.ep_id,
            "ifindex": self.ifindex,
            "protocol": PROTO_NAMES.get(self.proto, str(self.proto)),
            "src": {"ip": self.saddr, "port": self.sport, "identity": self.src_identity},
            "dst": {"ip": self.daddr, "port": self.dport, "identity": self.dst_identity},
            "length": self.length,
            "ktime_ns": self.ts_ns,
        }
        if self.proto == 6:
            rec["tcp_flags"] = [n for i, n in enumerate(TCP_FLAG_NAMES) if self.tcp_flags & (1 << i)]
        if self.proto == 1:
            rec["icmp_type"] = self.dport
            rec["src"].pop("port")
            rec["dst"].pop("port")
        if self.proxy_port:
            rec["proxy_port"] = self.proxy_port
        return rec


@dataclass(frozen=True, slots=True)
class MapLayout:
    key: type
    value: type


# The single table: map name -> (key codec, value codec).
LAYOUTS: dict[str, MapLayout] = {
    "ost_lb4_svc": MapLayout(Lb4Key, Lb4Service),
    "ost_lb4_backend": MapLayout(BackendId, Lb4Backend),
    "ost_lb4_affinity": MapLayout(AffinityKey, AffinityValue),
    "ost_lb4_revnat": MapLayout(RevNatKey, RevNatValue),
    "ost_ipcache": MapLayout(IpcacheKey, IpcacheValue),
    "ost_ipcache_host": MapLayout(IpKey, IpcacheValue),
    "ost_endpoints": MapLayout(IfindexKey, EndpointInfo),
    "ost_ep_by_ip": MapLayout(IpKey, EndpointInfo),
    "ost_policy": MapLayout(PolicyMapKey, PolicyMapEntry),
    "ost_ct4": MapLayout(CtKey, CtEntry),
    "ost_metrics": MapLayout(MetricKey, MetricValue),
    "ost_egress_gw": MapLayout(EgressGwKey, EgressGwValue),
}


def decode_entry(map_name: str, key: bytes, value: bytes) -> dict[str, Any]:
    layout = LAYOUTS[map_name]
    k = layout.key.unpack(key)
    v = layout.value.unpack(value)
    return {"key": _plain(asdict(k)), "value": _plain(asdict(v))}


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.name if isinstance(v, enum.Enum) else v) for k, v in d.items()}
