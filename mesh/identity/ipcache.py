"""The ipcache: IP prefix → security identity, with longest-prefix match, IPv4 and IPv6.

What the datapath and Envoy's RBAC principals see: the identity of a packet's peer is the identity of
the longest prefix that contains its address; an address no prefix contains is `world` (2).

Several sources may claim the same prefix. Each source's entry is kept; the one with the highest
precedence is effective, and removing it uncovers the next:

    reserved (the agent's own: host addresses)  >  endpoint (a workload's IP)
      >  node (another node's address: remote-node)  >  cidr-policy (a prefix a policy named)

so a policy naming 10.0.1.5/32 never overrides the identity of the endpoint that has that address.

Lookups keep one dict per prefix length (network address as an int → entry) and try the lengths
that are in use, longest first: at most 33 (IPv4) or 129 (IPv6) dict probes, usually a handful,
whatever the number of prefixes. Listeners get an `IPCacheChange` for every change of an effective
entry, in order; the datapath mirrors them into its BPF LPM trie.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping

from mesh.errors import ValidationError
from mesh.identity.labels import RESERVED_IDENTITIES

WORLD = RESERVED_IDENTITIES["world"]
MAX_IDENTITY = (1 << 32) - 1  # the datapath carries identities as u32

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Source(str, enum.Enum):
    """Who put an entry in the ipcache. Higher precedence wins for the same prefix."""

    CIDR_POLICY = "cidr-policy"
    NODE = "node"
    ENDPOINT = "endpoint"
    RESERVED = "reserved"

    @property
    def precedence(self) -> int:
        return _PRECEDENCE[self]


_PRECEDENCE = {Source.CIDR_POLICY: 1, Source.NODE: 2, Source.ENDPOINT: 3, Source.RESERVED: 4}


@dataclass(frozen=True, slots=True)
class IPCacheEntry:
    prefix: IPNetwork
    identity: int
    source: Source
    # The node hosting the address, for tunnelling to remote endpoints (None: local or not needed).
    tunnel_endpoint: str | None = None

    def to_api(self) -> dict:
        return {"prefix": str(self.prefix), "identity": self.identity, "source": self.source.value,
                "tunnelEndpoint": self.tunnel_endpoint}


@dataclass(frozen=True, slots=True)
class IPCacheChange:
    """The effective entry of `prefix` went from `old` to `new` (None: absent)."""

    prefix: IPNetwork
    old: IPCacheEntry | None
    new: IPCacheEntry | None


Listener = Callable[[IPCacheChange], None]


def parse_prefix(value: str | IPNetwork | IPAddress, path: str = "prefix") -> IPNetwork:
    """``"10.0.0.0/8"``, ``"10.0.0.1"`` (a /32) or ``"fd00::/64"``; host bits set is an error."""
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return ipaddress.ip_network(value)
    if not isinstance(value, str):
        raise ValidationError(f"must be an IP address or CIDR string, got {type(value).__name__}", path=path)
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            net = ipaddress.ip_network(value.strip(), strict=False)
            raise ValidationError(f"{value!r} has host bits set (the network is {net})", path=path) from None
        raise ValidationError(f"{value!r} is not an IP address or CIDR", path=path) from None


def parse_ip(value: str | IPAddress, path: str = "ip") -> IPAddress:
    """An address; IPv4-mapped IPv6 (``::ffff:10.0.0.1``, as dual-stack sockets report) → IPv4."""
    if isinstance(value, str):
        try:
            addr: IPAddress = ipaddress.ip_address(value.strip())
        except ValueError:
            raise ValidationError(f"{value!r} is not an IP address", path=path) from None
    elif isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        addr = value
    else:
        raise ValidationError(f"must be an IP address, got {type(value).__name__}", path=path)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class _LPMTable:
    """Effective entries of one address family: a dict per prefix length, probed longest first."""

    __slots__ = ("bits", "by_len", "lengths", "masks")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.by_len: dict[int, dict[int, IPCacheEntry]] = {}
        self.lengths: tuple[int, ...] = ()  # lengths in use, longest first
        full = (1 << bits) - 1
        self.masks = [full ^ ((1 << (bits - n)) - 1) for n in range(bits + 1)]

    def set(self, net: IPNetwork, entry: IPCacheEntry | None) -> None:
        plen, key = net.prefixlen, int(net.network_address)
        table = self.by_len.get(plen)
        if entry is None:
            if table is not None:
                table.pop(key, None)
                if not table:
                    del self.by_len[plen]
                    self.lengths = tuple(sorted(self.by_len, reverse=True))
            return
        if table is None:
            table = self.by_len[plen] = {}
            self.lengths = tuple(sorted(self.by_len, reverse=True))
        table[key] = entry

    def match(self, addr: int) -> IPCacheEntry | None:
        by_len, masks = self.by_len, self.masks
        for plen in self.lengths:
            hit = by_len[plen].get(addr & masks[plen])
            if hit is not None:
                return hit
        return None

    def __len__(self) -> int:
        return sum(len(t) for t in self.by_len.values())


class IPCache:
    """IP/CIDR → identity. Not thread-safe: use it from the agent's event loop."""

    def __init__(self) -> None:
        self._claims: dict[IPNetwork, dict[Source, IPCacheEntry]] = {}
        self._tables = {4: _LPMTable(32), 6: _LPMTable(128)}
        self._listeners: list[Listener] = []
        self.revision = 0  # bumped on every change of an effective entry

    # -- changes --

    def upsert(self, prefix: str | IPNetwork | IPAddress, identity: int, source: Source | str,
               tunnel_endpoint: str | None = None) -> IPCacheChange | None:
        """Set `source`'s claim on `prefix`. Returns the change of the effective entry, if any."""
        net = parse_prefix(prefix)
        src = _parse_source(source)
        if isinstance(identity, bool) or not isinstance(identity, int) or not 0 < identity <= MAX_IDENTITY:
            raise ValidationError(f"must be an identity number in 1..{MAX_IDENTITY}, got {identity!r}",
                                  path="identity")
        if tunnel_endpoint is not None:
            parse_ip(tunnel_endpoint, path="tunnelEndpoint")
        claims = self._claims.setdefault(net, {})
        old = _winner(claims)
        claims[src] = IPCacheEntry(net, identity, src, tunnel_endpoint)
        return self._settle(net, old, _winner(claims))

    def delete(self, prefix: str | IPNetwork | IPAddress, source: Source | str) -> IPCacheChange | None:
        """Drop `source`'s claim on `prefix` (a no-op when it has none)."""
        net = parse_prefix(prefix)
        src = _parse_source(source)
        claims = self._claims.get(net)
        if not claims or src not in claims:
            return None
        old = _winner(claims)
        del claims[src]
        if not claims:
            del self._claims[net]
        return self._settle(net, old, _winner(claims) if claims else None)

    def sync_source(self, source: Source | str,
                    wanted: Mapping[str | IPNetwork, int]) -> list[IPCacheChange]:
        """Make `source`'s claims exactly `wanted` (prefix → identity): for recomputed sets such as
        the CIDRs all policies name. Validates everything first: bad input changes nothing."""
        src = _parse_source(source)
        parsed: dict[IPNetwork, int] = {}
        for i, (prefix, ident) in enumerate(wanted.items()):
            net = parse_prefix(prefix, path=f"[{i}].prefix")
            if isinstance(ident, bool) or not isinstance(ident, int) or not 0 < ident <= MAX_IDENTITY:
                raise ValidationError(f"must be an identity number in 1..{MAX_IDENTITY}, got {ident!r}",
                                      path=f"[{i}].identity")
            parsed[net] = ident
        changes = []
        for net in [n for n, c in self._claims.items() if src in c and n not in parsed]:
            ch = self.delete(net, src)
            if ch:
                changes.append(ch)
        for net, ident in parsed.items():
            cur = self._claims.get(net, {}).get(src)
            if cur is None or cur.identity != ident:
                ch = self.upsert(net, ident, src)
                if ch:
                    changes.append(ch)
        return changes

    def _settle(self, net: IPNetwork, old: IPCacheEntry | None,
                new: IPCacheEntry | None) -> IPCacheChange | None:
        if old == new:
            return None
        self._tables[net.version].set(net, new)
        self.revision += 1
        change = IPCacheChange(net, old, new)
        for listener in list(self._listeners):
            listener(change)
        return change

    def subscribe(self, listener: Listener, replay: bool = True) -> Callable[[], None]:
        """Call `listener` for every change (after replaying the current entries as additions when
        `replay`). Returns a function that unsubscribes."""
        if replay:
            for entry in self.entries():
                listener(IPCacheChange(entry.prefix, None, entry))
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    # -- queries --

    def lookup(self, ip: str | IPAddress) -> int:
        """The identity of the longest prefix containing `ip`; world (2) when none does."""
        entry = self.lookup_entry(ip)
        return WORLD if entry is None else entry.identity

    def lookup_entry(self, ip: str | IPAddress) -> IPCacheEntry | None:
        addr = parse_ip(ip)
        return self._tables[addr.version].match(int(addr))

    def get(self, prefix: str | IPNetwork | IPAddress) -> IPCacheEntry | None:
        """The effective entry for exactly `prefix` (no prefix matching)."""
        claims = self._claims.get(parse_prefix(prefix))
        return _winner(claims) if claims else None

    def claims(self, prefix: str | IPNetwork | IPAddress) -> list[IPCacheEntry]:
        """Every source's entry for exactly `prefix`, effective first."""
        claims = self._claims.get(parse_prefix(prefix), {})
        return sorted(claims.values(), key=lambda e: -e.source.precedence)

    def entries(self) -> Iterator[IPCacheEntry]:
        """Effective entries, IPv4 then IPv6, by address then prefix length."""
        for version in (4, 6):
            table = self._tables[version]
            rows = [e for t in table.by_len.values() for e in t.values()]
            rows.sort(key=lambda e: (int(e.prefix.network_address), e.prefix.prefixlen))
            yield from rows

    __iter__ = entries

    def __len__(self) -> int:
        return len(self._tables[4]) + len(self._tables[6])

    def __contains__(self, prefix: object) -> bool:
        try:
            return self.get(prefix) is not None  # type: ignore[arg-type]
        except ValidationError:
            return False

    def dump(self) -> list[dict]:
        """The API's shape: ``[{"prefix", "identity", "source", "tunnelEndpoint"}]``."""
        return [e.to_api() for e in self.entries()]

    def identities(self, identities: Iterable[int] | None = None) -> dict[int, list[IPNetwork]]:
        """Identity → its prefixes (all identities, or the given ones): e.g. RBAC principals."""
        wanted = None if identities is None else set(identities)
        out: dict[int, list[IPNetwork]] = {}
        for e in self.entries():
            if wanted is None or e.identity in wanted:
                out.setdefault(e.identity, []).append(e.prefix)
        return out


def _winner(claims: dict[Source, IPCacheEntry]) -> IPCacheEntry | None:
    if not claims:
        return None
    return max(claims.values(), key=lambda e: e.source.precedence)


def _parse_source(source: Source | str) -> Source:
    if isinstance(source, Source):
        return source
    try:
        return Source(source)
    except ValueError:
        raise ValidationError(f"unknown ipcache source {source!r}; one of "
                              f"{', '.join(s.value for s in Source)}", path="source") from None
