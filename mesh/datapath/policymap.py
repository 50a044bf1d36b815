"""The policy engine's map state -> policy map entries (pure).

The engine emits, per endpoint, `{PolicyKey(direction, identity, protocol, port_lo, port_hi):
PolicyEntry(verdict, l7_parser, ...)}` with 0 = any for identity, protocol and ports. The BPF map
holds prefix blocks of (protocol, port) per (endpoint, direction, identity), probed longest first
(bpf/lib/policy.h): ranges become aligned prefix blocks, "any protocol with a port" becomes
TCP+UDP+SCTP, and an allow that a less specific deny of the same identity covers is dropped here,
because the program stops at the longest match (its any-identity probe handles denies there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from bpf.maps import POLICY_FIXED_PREFIX, PolicyMapEntry, PolicyMapKey, PolicyVerdict
from mesh.errors import DatapathError

ANY_PROTO_EXPANSION = (6, 17, 132)
_VERDICT_RANK = {PolicyVerdict.ALLOW: 0, PolicyVerdict.REDIRECT: 1, PolicyVerdict.DENY: 2}


def port_prefixes(lo: int, hi: int) -> list[tuple[int, int]]:
    """Cover [lo, hi] with aligned blocks: [(start, prefix bits of 16)], fewest blocks."""
    if not 0 <= lo <= hi <= 65535:
        raise DatapathError(f"bad port range {lo}-{hi}")
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, 16 - size.bit_length() + 1))
        lo += size
    return out


def _name(v: Any) -> str:
    return getattr(v, "name", str(v)).upper()


@dataclass(frozen=True, slots=True)
class EndpointPolicyFlags:
    ingress_enforced: bool
    egress_enforced: bool


def proxy_port_for(proxy_ports: Mapping[str, int], parser: str, direction: str) -> int:
    """The proxy listener for `parser` in `direction` ("http-ingress", ...), else the parser's
    single port ("http"); 0 when none is configured: the datapath then refuses such flows."""
    return int(proxy_ports.get(f"{parser}-{direction}") or proxy_ports.get(parser) or 0)


def entries_for(ep_id: int, map_state: Mapping[Any, Any], proxy_ports: Mapping[str, int] | None = None
                ) -> dict[PolicyMapKey, PolicyMapEntry]:
    proxy_ports = proxy_ports or {}
    raw: dict[PolicyMapKey, tuple[PolicyVerdict, int]] = {}
    for key, entry in map_state.items():
        direction = 0 if _name(key.direction) == "INGRESS" else 1
        verdict = PolicyVerdict[_name(entry.verdict)]
        proxy_port = int(getattr(entry, "proxy_port", 0) or 0)
        if verdict is PolicyVerdict.REDIRECT and not proxy_port:
            proxy_port = proxy_port_for(proxy_ports, str(getattr(entry, "l7_parser", "") or ""),
                                        "ingress" if direction == 0 else "egress")
        lo, hi = int(key.port_lo or 0), int(key.port_hi or 0)
        if lo and not hi:
            hi = lo
        proto = int(key.protocol or 0)
        any_port = lo == 0 and hi in (0, 65535)
        protos: Iterable[int] = (proto,) if proto or any_port else ANY_PROTO_EXPANSION
        for p in protos:
            if p == 0:
                blocks = [(0, -8)]   # prefix 64: protocol and port wildcarded
            elif any_port:
                blocks = [(0, 0)]
            else:
                blocks = port_prefixes(lo, hi)
            for start, bits in blocks:
                plen = POLICY_FIXED_PREFIX + 8 + bits
                k = PolicyMapKey(ep_id, direction, int(key.identity or 0), p, start, plen)
                prev = raw.get(k)
                if prev is None or _VERDICT_RANK[verdict] > _VERDICT_RANK[prev[0]]:
                    raw[k] = (verdict, proxy_port)
    # Deny wins: drop allows covered by a shorter deny of the same (direction, identity).
    denies: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for k, (v, _) in raw.items():
        if v is PolicyVerdict.DENY:
            denies.setdefault((k.direction, k.identity), []).append(_var(k))
    out: dict[PolicyMapKey, PolicyMapEntry] = {}
    for k, (v, pp) in raw.items():
        if v is not PolicyVerdict.DENY:
            val, plen = _var(k)
            if any(dl <= plen and (val >> (24 - dl)) == (dv >> (24 - dl)) if dl else True
                   for dv, dl in denies.get((k.direction, k.identity), ())):
                continue
        out[k] = PolicyMapEntry(int(v), k.prefixlen, pp if v is PolicyVerdict.REDIRECT else 0)
    return out


def _var(k: PolicyMapKey) -> tuple[int, int]:
    """The variable part of a key as (24-bit value proto|port, its prefix length)."""
    return ((k.proto << 16) | k.port, k.prefixlen - POLICY_FIXED_PREFIX)


def flags_of(endpoint_policy: Any) -> EndpointPolicyFlags:
    return EndpointPolicyFlags(bool(getattr(endpoint_policy, "ingress_enforced", False)),
                               bool(getattr(endpoint_policy, "egress_enforced", False)))
