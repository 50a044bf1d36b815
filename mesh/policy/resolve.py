"""The policy repository: endpoints + identities + policies → per-endpoint policy. Pure, no I/O.

Output per endpoint (`EndpointPolicy`): whether each direction is enforced, the L3/L4 map state
``PolicyKey(direction, identity, protocol, port_lo, port_hi) → PolicyEntry(verdict, l7_parser,
derived_from)`` and the L7 rule sets per (direction, protocol, port_lo, port_hi). In keys, identity 0
means any peer, protocol 0 any protocol (only with ports 0-0), ports 0-0 every port. Protocol ANY
on a given port is expanded to TCP, UDP and SCTP, as Cilium does.

Semantics (Cilium's):
- A direction is default-allow until a rule selecting the endpoint has an entry for it (or a KNP
  lists it in policyTypes); then only what a rule allows passes. A non-enforced direction gets an
  explicit allow-all key (identity 0, protocol 0, ports 0-0) with no `derived_from`.
- Deny wins: an allow key that a deny key covers (same or any identity, same or any protocol, a port
  range containing it) is left out of the map state. `lookup` also checks every matching key and
  returns a deny first, so partially overlapping ranges are safe for the datapath's exact lookups
  in this order too.
- A port with L7 rules is REDIRECT for every peer allowed on it. The L7 rules for that port are
  merged over all rules and policies: a request passes if any entry for its peer allows it. A peer
  allowed on that port without L7 rules (an L4-only rule, or a broader rule: L3-only or a range or
  protocol wildcard covering the port) gets an allow-all entry: its requests are all allowed,
  but they still go through the proxy (Cilium's "wildcard L7" behaviour).
- CIDR rules select CIDR identities only, never a managed endpoint's identity, even when the
  endpoint's IP is inside the CIDR (Cilium does the same: traffic from a pod carries the pod's
  identity). Every CIDR and except a policy names gets a local identity (>= LOCAL_IDENTITY_BASE)
  labelled ``cidr:<prefix>`` for itself and each shorter prefix, plus ``reserved:world``; /0 is
  the world identity itself. `cidr_identities()` gives them to the ipcache.
- Named ports: on ingress, the endpoint's own port names; on egress, the names of every endpoint
  known to the repository (a name may map to several ports).
- Two L7 parsers on one port (http from one rule, kafka from another) cannot both run: the first
  rule's parser (in policy key order) wins, the other's entries are dropped (fail closed) and the
  conflict is reported in `EndpointPolicy.conflicts`.

Incremental: selections live in a SelectorCache. An identity change re-tests each selector once
and patches only the map-state keys of that identity in the endpoints that use a changed selector;
a policy change recomputes only the endpoints its old or new rules select; an endpoint change
recomputes only that endpoint (endpoints with the same identity and named ports share one
computation). Every mutation bumps `revision`; `changed_endpoints_since(rev)` says which endpoints
to re-read.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, NamedTuple

from mesh.errors import NotFoundError
from mesh.identity.labels import LOCAL_IDENTITY_BASE, RESERVED_IDENTITIES, SOURCE_CIDR, SOURCE_RESERVED
from mesh.policy.l7 import L7Entry, L7Policy
from mesh.policy.model import (ALL, ANY_EXPANSION, CIDRSelector, Direction, Policy, PortProtocol, Protocol,
                               Rule, RuleRef, Selector, Verdict)
from mesh.policy.selector import SelectorCache

WORLD_IDENTITY = RESERVED_IDENTITIES["world"]


@dataclass(frozen=True, slots=True)
class EndpointInfo:
    """What the repository needs to know about an endpoint. `labels` are its security labels."""

    name: str
    namespace: str
    labels: Mapping[str, str]
    ip: str | None
    identity: int
    named_ports: Mapping[str, tuple[int, Protocol]] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


class PolicyKey(NamedTuple):
    direction: Direction
    identity: int  # 0: any
    protocol: int  # 0: any (then ports are 0-0)
    port_lo: int  # 0, 0: every port
    port_hi: int


@dataclass(frozen=True, slots=True)
class PolicyEntry:
    verdict: Verdict
    l7_parser: str | None = None  # "http" | "kafka" when verdict is REDIRECT
    derived_from: tuple[RuleRef, ...] = ()


L7Key = tuple[Direction, int, int, int]  # (direction, protocol, port_lo, port_hi)


@dataclass(frozen=True, slots=True)
class EndpointPolicy:
    endpoint: EndpointInfo
    revision: int  # repository revision at which this endpoint's policy last changed
    ingress_enforced: bool
    egress_enforced: bool
    map_state: Mapping[PolicyKey, PolicyEntry]
    l7: Mapping[L7Key, L7Policy]
    selected_by: tuple[RuleRef, ...] = ()  # the specs (rules) selecting the endpoint
    conflicts: tuple[str, ...] = ()

    def lookup(self, direction: Direction, identity: int, protocol: int, port: int) -> PolicyEntry | None:
        hit = lookup_key(self.map_state, direction, identity, protocol, port)
        return hit[1] if hit else None


def _specificity(key: PolicyKey) -> tuple:
    port_specific = key.port_lo != 0 or key.port_hi != 0
    width = (key.port_hi - key.port_lo) if port_specific else 1 << 17
    return (port_specific, -width, key.identity != 0, key.protocol != 0)


def lookup_key(map_state: Mapping[PolicyKey, PolicyEntry], direction: Direction, identity: int, protocol: int,
               port: int) -> tuple[PolicyKey, PolicyEntry] | None:
    """The datapath's decision: every key matching the packet; a deny first, else the most specific
    (port-specific, narrower range, identity-specific, protocol-specific). None: no key, dropped."""
    found: list[tuple[PolicyKey, PolicyEntry]] = []
    for ident in {identity, 0}:
        for proto in {protocol, 0}:
            for lo_hi in ((port, port), (0, 0)):
                k = PolicyKey(direction, ident, proto, lo_hi[0], lo_hi[1])
                e = map_state.get(k)
                if e is not None:
                    found.append((k, e))
    ranges = getattr(map_state, "ranges", None)
    candidates = ranges if ranges is not None else [k for k in map_state if k.port_lo != k.port_hi]
    for k in candidates:
        if (k.direction == direction and k.identity in (identity, 0) and k.protocol in (protocol, 0)
                and k.port_lo <= port <= k.port_hi and k.port_lo != k.port_hi):
            found.append((k, map_state[k]))
    if not found:
        return None
    denies = [f for f in found if f[1].verdict == Verdict.DENY]
    pool = denies or found
    return max(pool, key=lambda f: _specificity(f[0]))


class MapState(dict):
    """A dict of PolicyKey → PolicyEntry that also remembers its port-range keys for lookups."""

    __slots__ = ("ranges",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.ranges = [k for k in self if k.port_lo != k.port_hi]


# --- internal per-group state -------------------------------------------------------------------

FilterKey = tuple[Direction, int, int, int]  # direction, protocol, lo, hi


class _Filter:
    """What the rules say about one (direction, protocol, port range) of one group."""

    __slots__ = ("allow", "deny", "l7", "parser")

    def __init__(self) -> None:
        self.allow: dict[Selector, list[RuleRef]] = {}
        self.deny: dict[Selector, list[RuleRef]] = {}
        # selector → list of (http, kafka, ref); only L7-carrying contributions.
        self.l7: dict[Selector, list[tuple[Any, Any, RuleRef]]] = {}
        self.parser: str | None = None


class _Group:
    """Endpoints that share an identity and named ports share one computed policy."""

    __slots__ = ("identity", "named_ports", "endpoints", "filters", "enforce_in", "enforce_eg", "selected_by",
                 "map_state", "l7", "conflicts", "peers", "egress_names", "deny_any", "built", "contribs",
                 "l7_peers")

    def __init__(self, identity: int, named_ports: tuple) -> None:
        self.identity = identity
        self.named_ports = dict(named_ports)
        self.endpoints: set[tuple[str, str]] = set()
        self.filters: dict[FilterKey, _Filter] = {}
        self.enforce_in = False
        self.enforce_eg = False
        self.selected_by: tuple[RuleRef, ...] = ()
        self.map_state: MapState = MapState()
        self.l7: dict[L7Key, L7Policy] = {}
        self.conflicts: tuple[str, ...] = ()
        self.peers: set[Selector] = set()
        self.egress_names: set[str] = set()
        self.deny_any: list[PolicyKey] = []
        self.built = False
        # Flattened (filter key, peer, refs, deny, parser) for the peers that are selectors: what an
        # identity patch walks. l7_peers: selectors of filters with L7 rules.
        self.contribs: list[tuple] = []
        self.l7_peers: set[Selector] = set()


def _covers(d: PolicyKey, k: PolicyKey) -> bool:
    """Does deny key `d` cover every packet of key `k`?"""
    if d.direction != k.direction or (d.identity != 0 and d.identity != k.identity):
        return False
    if d.protocol != 0 and d.protocol != k.protocol:
        return False
    if d.port_lo == 0 and d.port_hi == 0:
        return True
    if k.port_lo == 0 and k.port_hi == 0:
        return False
    return d.port_lo <= k.port_lo and k.port_hi <= d.port_hi


def cidr_labels(prefix: str) -> dict[str, str]:
    """``cidr:<p>`` for the prefix and every shorter one, and ``reserved:world``."""
    net = ipaddress.ip_network(prefix)
    out = {f"{SOURCE_CIDR}:{net.supernet(new_prefix=n)}": "" for n in range(0, net.prefixlen)}
    out[f"{SOURCE_CIDR}:{net}"] = ""
    out[f"{SOURCE_RESERVED}:world"] = ""
    return out


class PolicyRepository:
    """Pure, incremental policy resolution. Not thread-safe: the agent calls it from one task."""

    def __init__(self, identities: Mapping[int, Mapping[str, str]] | None = None) -> None:
        self._sc = SelectorCache()
        self._revision = 0
        self._policies: dict[tuple[str, str, str], Policy] = {}
        self._rules: list[Rule] = []  # in policy-key order
        self._subjects: set = set()
        self._endpoints: dict[tuple[str, str], EndpointInfo] = {}
        self._ep_group: dict[tuple[str, str], tuple] = {}
        self._ep_rev: dict[tuple[str, str], int] = {}
        self._deleted: dict[tuple[str, str], int] = {}
        self._groups: dict[tuple, _Group] = {}
        self._groups_by_identity: dict[int, set[tuple]] = {}
        self._groups_by_peer: dict[Selector, set[tuple]] = {}
        self._groups_by_egress_name: dict[str, set[tuple]] = {}
        self._named_ports: dict[str, dict[tuple[int, int], int]] = {}  # name → {(port, proto): count}
        self._dirty: set[tuple] = set()
        self._cidr_refs: dict[str, int] = {}
        self._cidr_ids: dict[str, int] = {}
        self._next_local = LOCAL_IDENTITY_BASE
        self._entry_cache: dict[tuple, PolicyEntry] = {}
        # Identities added on behalf of endpoints (not by upsert_identity): endpoint count each,
        # removed with their last endpoint.
        self._auto_ids: dict[int, int] = {}
        for name, number in RESERVED_IDENTITIES.items():
            self._sc.upsert_identity(number, {f"{SOURCE_RESERVED}:{name}": ""})
        for ident, labels in (identities or {}).items():
            self._sc.upsert_identity(ident, labels)

    # --- reading ---------------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self._revision

    def policies(self) -> list[Policy]:
        return [self._policies[k] for k in sorted(self._policies)]

    def get_policy(self, kind: str, namespace: str, name: str) -> Policy | None:
        return self._policies.get((kind, namespace, name))

    def endpoints(self) -> list[EndpointInfo]:
        return [self._endpoints[k] for k in sorted(self._endpoints)]

    def get_endpoint(self, namespace: str, name: str) -> EndpointInfo | None:
        return self._endpoints.get((namespace, name))

    def identities(self) -> dict[int, dict[str, str]]:
        return {i: dict(l) for i, l in sorted(self._sc.index.labels.items())}

    def identity_labels(self, identity: int) -> dict[str, str] | None:
        return self._sc.labels_of(identity)

    def cidr_identities(self) -> dict[ipaddress.IPv4Network | ipaddress.IPv6Network, int]:
        return {ipaddress.ip_network(p): i for p, i in sorted(self._cidr_ids.items())}

    def identity_for_ip(self, ip: str) -> int:
        """An endpoint's identity for its IP, else the longest CIDR identity prefix, else world."""
        addr = ipaddress.ip_address(ip)
        for ep in self._endpoints.values():
            if ep.ip and ipaddress.ip_address(ep.ip) == addr:
                return ep.identity
        best: tuple[int, int] | None = None
        for p, ident in self._cidr_ids.items():
            net = ipaddress.ip_network(p)
            if addr.version == net.version and addr in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, ident)
        return best[1] if best else WORLD_IDENTITY

    def endpoint_policy(self, namespace: str, name: str) -> EndpointPolicy:
        key = (namespace, name)
        ep = self._endpoints.get(key)
        if ep is None:
            raise NotFoundError(f"endpoint {namespace}/{name} is not known to the policy repository")
        self._flush()
        g = self._groups[self._ep_group[key]]
        return EndpointPolicy(ep, self._ep_rev[key], g.enforce_in, g.enforce_eg, g.map_state, g.l7,
                              g.selected_by, g.conflicts)

    def resolve_all(self) -> dict[tuple[str, str], EndpointPolicy]:
        self._flush()
        return {k: self.endpoint_policy(*k) for k in sorted(self._endpoints)}

    def changed_endpoints_since(self, revision: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(endpoints whose policy changed after `revision`, endpoints deleted after it)."""
        changed = sorted(k for k, r in self._ep_rev.items() if r > revision)
        deleted = sorted(k for k, r in self._deleted.items() if r > revision)
        return changed, deleted

    def lookup(self, endpoint: tuple[str, str] | EndpointInfo, direction: Direction, remote_identity: int,
               protocol: int, dport: int) -> PolicyEntry | None:
        hit = self.lookup_key(endpoint, direction, remote_identity, protocol, dport)
        return hit[1] if hit else None

    def lookup_key(self, endpoint: tuple[str, str] | EndpointInfo, direction: Direction, remote_identity: int,
                   protocol: int, dport: int) -> tuple[PolicyKey, PolicyEntry] | None:
        key = endpoint.key if isinstance(endpoint, EndpointInfo) else endpoint
        if key not in self._endpoints:
            raise NotFoundError(f"endpoint {key[0]}/{key[1]} is not known to the policy repository")
        self._flush()
        g = self._groups[self._ep_group[key]]
        return lookup_key(g.map_state, direction, remote_identity, int(protocol), dport)

    # --- identities ------------------------------------------------------------------------------

    def upsert_identity(self, identity: int, labels: Mapping[str, str]) -> None:
        self._auto_ids.pop(identity, None)  # now owned by the caller
        changed = self._sc.upsert_identity(identity, labels)
        self._bump()
        self._identity_changed(identity, changed)

    def delete_identity(self, identity: int) -> None:
        self._auto_ids.pop(identity, None)
        changed = self._sc.remove_identity(identity)
        self._bump()
        self._identity_changed(identity, changed)

    def _identity_changed(self, identity: int, changed: set[Selector]) -> None:
        if not changed:
            return
        if not changed.isdisjoint(self._subjects):
            for gk in self._groups_by_identity.get(identity, ()):
                self._mark(gk)
        patch: set[tuple] = set()
        for sel in changed:
            patch |= self._groups_by_peer.get(sel, set())
        for gk in patch:
            if gk in self._dirty:
                continue
            g = self._groups[gk]
            self._patch_identity(g, identity, changed)
            self._touch(g)

    # --- endpoints -------------------------------------------------------------------------------

    def upsert_endpoint(self, ep: EndpointInfo) -> None:
        """Add or update an endpoint. An identity not yet in the table is added with the endpoint's
        labels, and removed again with the last endpoint that has it."""
        old = self._endpoints.get(ep.key)
        if old == ep:
            return
        if not self._sc.has_identity(ep.identity):
            self.upsert_identity(ep.identity, ep.labels)
            self._auto_ids[ep.identity] = 0
        if ep.identity in self._auto_ids and (old is None or old.identity != ep.identity):
            self._auto_ids[ep.identity] += 1
        self._bump()
        self._endpoints[ep.key] = ep
        self._deleted.pop(ep.key, None)
        gk = (ep.identity, tuple(sorted((n, (p, int(pr))) for n, (p, pr) in ep.named_ports.items())))
        old_gk = self._ep_group.get(ep.key)
        if old_gk != gk:
            if old_gk is not None:
                self._leave_group(ep.key, old_gk)
            g = self._groups.get(gk)
            if g is None:
                g = self._groups[gk] = _Group(ep.identity, gk[1])
                self._groups_by_identity.setdefault(ep.identity, set()).add(gk)
                self._dirty.add(gk)
            g.endpoints.add(ep.key)
            self._ep_group[ep.key] = gk
        self._ep_rev[ep.key] = self._revision
        old_ports = dict(old.named_ports) if old else {}
        if old_ports != dict(ep.named_ports):
            self._named_ports_changed(old_ports, dict(ep.named_ports))
        if old is not None and old.identity != ep.identity:
            self._release_auto(old.identity)

    def _release_auto(self, identity: int) -> None:
        n = self._auto_ids.get(identity)
        if n is None:
            return
        if n <= 1:
            self.delete_identity(identity)
        else:
            self._auto_ids[identity] = n - 1

    def delete_endpoint(self, namespace: str, name: str) -> bool:
        key = (namespace, name)
        old = self._endpoints.pop(key, None)
        if old is None:
            return False
        self._bump()
        self._leave_group(key, self._ep_group.pop(key))
        self._ep_rev.pop(key, None)
        self._deleted[key] = self._revision
        if old.named_ports:
            self._named_ports_changed(dict(old.named_ports), {})
        self._release_auto(old.identity)
        return True

    def _leave_group(self, epkey: tuple[str, str], gk: tuple) -> None:
        g = self._groups[gk]
        g.endpoints.discard(epkey)
        if not g.endpoints:
            self._drop_group(gk)

    def _drop_group(self, gk: tuple) -> None:
        g = self._groups.pop(gk)
        self._dirty.discard(gk)
        ids = self._groups_by_identity.get(g.identity)
        if ids is not None:
            ids.discard(gk)
            if not ids:
                del self._groups_by_identity[g.identity]
        self._unindex_group(gk, g)

    def _unindex_group(self, gk: tuple, g: _Group) -> None:
        for sel in g.peers:
            s = self._groups_by_peer.get(sel)
            if s is not None:
                s.discard(gk)
                if not s:
                    del self._groups_by_peer[sel]
        for name in g.egress_names:
            s = self._groups_by_egress_name.get(name)
            if s is not None:
                s.discard(gk)
                if not s:
                    del self._groups_by_egress_name[name]
        g.peers = set()
        g.egress_names = set()

    def _named_ports_changed(self, old: dict, new: dict) -> None:
        names = set()
        for name, (port, proto) in old.items():
            c = self._named_ports.get(name, {})
            pp = (port, int(proto))
            c[pp] = c.get(pp, 0) - 1
            if c[pp] <= 0:
                del c[pp]
                names.add(name)
            if not c:
                self._named_ports.pop(name, None)
        for name, (port, proto) in new.items():
            c = self._named_ports.setdefault(name, {})
            pp = (port, int(proto))
            if pp not in c:
                names.add(name)
            c[pp] = c.get(pp, 0) + 1
        for name in names:
            for gk in self._groups_by_egress_name.get(name, ()):
                self._mark(gk)

    # --- policies --------------------------------------------------------------------------------

    def upsert_policy(self, policy: Policy) -> None:
        old = self._policies.get(policy.key)
        if old is not None and old == policy:
            return
        self._bump()
        for prefix in policy.cidrs():
            self._cidr_ref(prefix)
        self._policies[policy.key] = policy
        self._rules_changed(old, policy)
        if old is not None:
            for prefix in old.cidrs():
                self._cidr_unref(prefix)

    def delete_policy(self, kind: str, namespace: str, name: str) -> bool:
        old = self._policies.pop((kind, namespace, name), None)
        if old is None:
            return False
        self._bump()
        self._rules_changed(old, None)
        for prefix in old.cidrs():
            self._cidr_unref(prefix)
        return True

    def replace_policies(self, policies: Iterable[Policy]) -> None:
        """Make the policy set exactly `policies` (what a full resync from a source does)."""
        new = {p.key: p for p in policies}
        for key in list(self._policies):
            if key not in new:
                self.delete_policy(*key)
        for p in new.values():
            self.upsert_policy(p)

    def _rules_changed(self, old: Policy | None, new: Policy | None) -> None:
        self._rules = [r for k in sorted(self._policies) for r in self._policies[k].rules]
        self._subjects = {r.subject for r in self._rules}
        affected: set[int] = set()
        for pol in (old, new):
            if pol is None:
                continue
            for rule in pol.rules:
                affected |= self._sc.ids(rule.subject) if pol is old else self._sc.add_selector(rule.subject)
                if pol is new:
                    for item in rule.items:
                        for peer in item.peers:
                            if peer != ALL:
                                self._sc.add_selector(peer)
        if old is not None:
            for rule in old.rules:
                self._sc.release_selector(rule.subject)
                for item in rule.items:
                    for peer in item.peers:
                        if peer != ALL:
                            self._sc.release_selector(peer)
        for ident in affected:
            for gk in self._groups_by_identity.get(ident, ()):
                self._mark(gk)

    def _cidr_ref(self, prefix: str) -> None:
        n = self._cidr_refs.get(prefix, 0)
        self._cidr_refs[prefix] = n + 1
        if n == 0 and ipaddress.ip_network(prefix).prefixlen > 0:
            ident = self._next_local
            self._next_local += 1
            self._cidr_ids[prefix] = ident
            self.upsert_identity(ident, cidr_labels(prefix))

    def _cidr_unref(self, prefix: str) -> None:
        n = self._cidr_refs.get(prefix, 0) - 1
        if n > 0:
            self._cidr_refs[prefix] = n
            return
        self._cidr_refs.pop(prefix, None)
        ident = self._cidr_ids.pop(prefix, None)
        if ident is not None:
            self.delete_identity(ident)

    # --- bookkeeping -----------------------------------------------------------------------------

    def _bump(self) -> None:
        self._revision += 1

    def _touch(self, g: _Group) -> None:
        for ek in g.endpoints:
            self._ep_rev[ek] = self._revision

    def _mark(self, gk: tuple) -> None:
        g = self._groups.get(gk)
        if g is None:
            return
        self._dirty.add(gk)
        self._touch(g)

    def _flush(self) -> None:
        if not self._dirty:
            return
        # The rules selecting each dirty identity, in rule order, in one pass over the rules.
        wanted = {self._groups[gk].identity for gk in self._dirty}
        by_ident: dict[int, list[Rule]] = {i: [] for i in wanted}
        for rule in self._rules:
            selected = self._sc.ids(rule.subject)
            if len(selected) < len(wanted):
                for i in selected:
                    if i in by_ident:
                        by_ident[i].append(rule)
            else:
                for i in wanted:
                    if i in selected:
                        by_ident[i].append(rule)
        for gk in sorted(self._dirty, key=repr):
            g = self._groups[gk]
            self._build(gk, g, by_ident[g.identity])
        self._dirty.clear()

    # --- computing a group -----------------------------------------------------------------------

    def _expand_port(self, p: PortProtocol, direction: Direction, g: _Group) -> list[tuple[int, int, int]]:
        if p.name is not None:
            if direction == Direction.INGRESS:
                found = g.named_ports.get(p.name)
                candidates = [found] if found else []
            else:
                g.egress_names.add(p.name)
                candidates = list(self._named_ports.get(p.name, {}))
            out = []
            for port, proto in candidates:
                if p.protocol == Protocol.ANY or int(p.protocol) == int(proto):
                    out.append((int(proto), port, port))
            return out
        if p.port == 0:
            return [(int(p.protocol), 0, 0)]
        hi = p.end_port or p.port
        if p.protocol == Protocol.ANY:
            return [(int(proto), p.port, hi) for proto in ANY_EXPANSION]
        return [(int(p.protocol), p.port, hi)]

    def _build(self, gk: tuple, g: _Group, rules: list[Rule]) -> None:
        """Stage 1: the rules that select this group's identity → filters. Stage 2: map state."""
        self._unindex_group(gk, g)
        filters: dict[FilterKey, _Filter] = {}
        enforce_in = enforce_eg = False
        selected_by: list[RuleRef] = []
        for rule in rules:
            selected_by.append(rule.ref)
            enforce_in = enforce_in or rule.enforce_ingress
            enforce_eg = enforce_eg or rule.enforce_egress
            for item in rule.items:
                port_rules = item.to_ports or (None,)
                for pr in port_rules:
                    if pr is None or not pr.ports:
                        triples = [(0, 0, 0)]
                    else:
                        triples = [t for p in pr.ports for t in self._expand_port(p, item.direction, g)]
                    for proto, lo, hi in triples:
                        fk = (item.direction, proto, lo, hi)
                        f = filters.get(fk)
                        if f is None:
                            f = filters[fk] = _Filter()
                        for peer in item.peers:
                            target = f.deny if item.deny else f.allow
                            target.setdefault(peer, []).append(item.ref)
                            if pr is not None and pr.has_l7 and not item.deny:
                                f.l7.setdefault(peer, []).append((pr.http, pr.kafka, item.ref))
        g.filters = filters
        g.enforce_in, g.enforce_eg = enforce_in, enforce_eg
        g.selected_by = tuple(selected_by)
        conflicts = self._settle_l7(filters)
        g.conflicts = tuple(conflicts)
        g.peers = {p for f in filters.values() for d in (f.allow, f.deny) for p in d if p != ALL}
        for sel in g.peers:
            self._groups_by_peer.setdefault(sel, set()).add(gk)
        for name in g.egress_names:
            self._groups_by_egress_name.setdefault(name, set()).add(gk)
        g.map_state = self._expand(g, filters)
        g.l7 = self._l7_policies(filters)
        g.contribs = [(fk, peer, tuple(refs), is_deny, f.parser)
                      for fk, f in filters.items()
                      for is_deny, src in ((True, f.deny), (False, f.allow))
                      for peer, refs in src.items() if peer != ALL]
        g.l7_peers = {p for f in filters.values() if f.parser for p in f.allow if p != ALL}
        g.built = True

    def _settle_l7(self, filters: dict[FilterKey, _Filter]) -> list[str]:
        """Pick each port's parser; add broader allows as allow-all L7 peers (see module doc)."""
        conflicts = []
        for fk, f in filters.items():
            if not f.l7:
                continue
            first = None
            for peer, contribs in f.l7.items():
                for http, kafka, ref in contribs:
                    parser = "http" if http is not None else "kafka"
                    if first is None or str(ref) < str(first[1]):
                        first = (parser, ref)
            f.parser = first[0] if first else None
            for peer in list(f.l7):
                kept = [c for c in f.l7[peer] if (c[0] is not None) == (f.parser == "http")]
                dropped = len(f.l7[peer]) - len(kept)
                if dropped:
                    conflicts.append(f"{fk[0].value} {Protocol(fk[1]).name}/{fk[2]}: "
                                     f"{'kafka' if f.parser == 'http' else 'http'} rules from "
                                     f"{', '.join(str(c[2]) for c in f.l7[peer] if c not in kept)} dropped: "
                                     f"the port's parser is {f.parser} ({first[1]})")
                f.l7[peer] = kept
        # Broader allows of the same direction cover the L7 port: their peers are allowed all requests.
        for fk, f in filters.items():
            if f.parser is None:
                continue
            d, proto, lo, hi = fk
            for ok, other in filters.items():
                if ok == fk or ok[0] != d or not other.allow:
                    continue
                if ok[1] != 0 and ok[1] != proto:
                    continue
                if not (ok[2] == 0 and ok[3] == 0) and not (ok[2] <= lo and hi <= ok[3]):
                    continue
                for peer, refs in other.allow.items():
                    f.allow.setdefault(peer, []).extend(refs)
        return conflicts

    def _entry(self, verdict: Verdict, parser: str | None, refs: tuple) -> PolicyEntry:
        k = (verdict, parser, refs)
        e = self._entry_cache.get(k)
        if e is None:
            if len(self._entry_cache) > 200_000:
                self._entry_cache.clear()
            e = self._entry_cache[k] = PolicyEntry(verdict, parser, refs)
        return e

    def _expand(self, g: _Group, filters: dict[FilterKey, _Filter]) -> MapState:
        ids_of = self._sc.ids
        allow: dict[PolicyKey, tuple] = {}
        deny: dict[PolicyKey, tuple] = {}
        meta: dict[PolicyKey, str | None] = {}
        for (d, proto, lo, hi), f in filters.items():
            for src, acc in ((f.deny, deny), (f.allow, allow)):
                for peer, refs in src.items():
                    rt = tuple(refs)
                    for i in ((0,) if peer == ALL else ids_of(peer)):
                        k = PolicyKey(d, i, proto, lo, hi)
                        prev = acc.get(k)
                        acc[k] = rt if prev is None else tuple(dict.fromkeys(prev + rt))
                        if acc is allow:
                            meta[k] = f.parser
        for d, enforced in ((Direction.INGRESS, g.enforce_in), (Direction.EGRESS, g.enforce_eg)):
            if not enforced:
                k = PolicyKey(d, 0, 0, 0, 0)
                allow.setdefault(k, ())
                meta.setdefault(k, None)
        out = MapState()
        for k, refs in deny.items():
            out[k] = self._entry(Verdict.DENY, None, refs)
        g.deny_any = [k for k in deny if k.identity == 0]
        by_ident: dict[int, list[PolicyKey]] = {}
        for k in deny:
            by_ident.setdefault(k.identity, []).append(k)
        any_denies = by_ident.get(0, [])
        for k, refs in allow.items():
            if k in deny:
                continue
            if deny and any(_covers(dk, k) for dk in any_denies + (by_ident.get(k.identity, []) if k.identity else [])):
                continue
            parser = meta.get(k)
            out[k] = self._entry(Verdict.REDIRECT if parser else Verdict.ALLOW, parser, refs)
        out.ranges = [k for k in out if k.port_lo != k.port_hi]
        return out

    def _l7_policies(self, filters: dict[FilterKey, _Filter]) -> dict[L7Key, L7Policy]:
        out: dict[L7Key, L7Policy] = {}
        for fk, f in filters.items():
            if f.parser is None:
                continue
            entries: list[L7Entry] = []
            for peer, refs in f.allow.items():
                idents = None if peer == ALL else frozenset(self._sc.ids(peer))
                contribs = f.l7.get(peer, [])
                l7_refs = {c[2] for c in contribs}
                plain = [r for r in refs if r not in l7_refs]
                if plain:  # allowed on this port without L7 rules: every request passes
                    entries.append(L7Entry(idents, None, None, tuple(dict.fromkeys(plain))))
                for http, kafka, ref in contribs:
                    entries.append(L7Entry(idents, http, kafka, (ref,)))
            out[fk] = L7Policy(f.parser, tuple(entries))
        return out

    def _patch_identity(self, g: _Group, identity: int, changed: set[Selector]) -> None:
        """Recompute only the keys of `identity` after its selections changed."""
        if not g.built:  # never built: it is in the dirty set and will be built whole
            return
        ids_of = self._sc.ids
        allow: dict[PolicyKey, tuple] = {}
        deny: dict[PolicyKey, tuple] = {}
        meta: dict[PolicyKey, str | None] = {}
        for fk, peer, refs, is_deny, parser in g.contribs:
            if identity not in ids_of(peer):
                continue
            k = PolicyKey(fk[0], identity, fk[1], fk[2], fk[3])
            acc = deny if is_deny else allow
            prev = acc.get(k)
            acc[k] = refs if prev is None else tuple(dict.fromkeys(prev + refs))
            if not is_deny:
                meta[k] = parser
        old = g.map_state
        stale = [k for k in (PolicyKey(d, identity, p, lo, hi) for (d, p, lo, hi) in g.filters) if k in old]
        if not stale and not allow and not deny:
            return
        new = MapState.__new__(MapState)
        dict.__init__(new, old)
        for k in stale:
            del new[k]
        for k, refs in deny.items():
            new[k] = self._entry(Verdict.DENY, None, refs)
        covering = g.deny_any + list(deny)
        for k, refs in allow.items():
            if k in deny or any(_covers(dk, k) for dk in covering):
                continue
            parser = meta.get(k)
            new[k] = self._entry(Verdict.REDIRECT if parser else Verdict.ALLOW, parser, refs)
        stale_set = set(stale)
        added = [k for k in dict.fromkeys([*deny, *allow]) if k in new and k.port_lo != k.port_hi]
        new.ranges = [k for k in old.ranges if k not in stale_set] + added
        g.map_state = new
        if g.l7_peers and not g.l7_peers.isdisjoint(changed):
            g.l7 = self._l7_policies(g.filters)
