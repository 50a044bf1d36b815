"""The parsed policy: plain, frozen, hashable data.

A policy document (CNP, CCNP, KNP, or the ostium.io kinds) becomes a `Policy` holding one `Rule` per
Cilium spec (a CNP's `spec` and each of its `specs[i]`; a KNP is one rule). A `Rule` has a subject
selector (already scoped to the policy's namespace), the directions it enforces, and `RuleItem`s: one
per entry of ingress / ingressDeny / egress / egressDeny, each with its peers and its ports.

Peers are selectors: `LabelSelector` (endpoints, over security labels), `CIDRSelector` (CIDR with
excepts) or `EntitySelector` (world, cluster, host, ... and `all`, which is the wildcard). An item with
no peers allows nothing (Cilium's `ingress: [{}]`); parse puts `ALL` where the user's rule means
"any peer" (a CNP rule with only toPorts, a KNP rule without `from`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Union


# StrEnum: C-level hashing (these are parts of map-state keys) and JSON-friendly values.
class Verdict(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    REDIRECT = "redirect"  # allowed at L3/L4, sent to the L7 proxy which checks each request


class Direction(enum.StrEnum):
    INGRESS = "ingress"
    EGRESS = "egress"


class Protocol(enum.IntEnum):
    ANY = 0
    ICMP = 1
    TCP = 6
    UDP = 17
    ICMPV6 = 58
    SCTP = 132


# Protocols a `toPorts` entry may name (Cilium's ParseL4Proto subset Ostium enforces).
PORT_PROTOCOLS = {"TCP": Protocol.TCP, "UDP": Protocol.UDP, "SCTP": Protocol.SCTP, "ANY": Protocol.ANY}
# What protocol ANY stands for when a port is given: Cilium expands it the same way.
ANY_EXPANSION = (Protocol.TCP, Protocol.UDP, Protocol.SCTP)

OP_IN = "In"
OP_NOT_IN = "NotIn"
OP_EXISTS = "Exists"
OP_DOES_NOT_EXIST = "DoesNotExist"
OPERATORS = (OP_IN, OP_NOT_IN, OP_EXISTS, OP_DOES_NOT_EXIST)


@dataclass(frozen=True, slots=True, order=True)
class Requirement:
    """One selector term. `source` is ``any`` when the user's key named no source."""

    source: str
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def __str__(self) -> str:
        full = self.key if self.source == "any" else f"{self.source}:{self.key}"
        if self.operator == OP_IN and len(self.values) == 1:
            return f"{full}={self.values[0]}"
        if self.operator in (OP_IN, OP_NOT_IN):
            return f"{full} {self.operator} ({','.join(self.values)})"
        return f"{full} {self.operator}"


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A conjunction of requirements; empty matches every identity (callers scope it)."""

    requirements: tuple[Requirement, ...] = ()
    # Selectors are dict keys on every hot path of the repository: hash once.
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash(("label", self.requirements)))

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return "{" + ", ".join(str(r) for r in self.requirements) + "}"


@dataclass(frozen=True, slots=True)
class CIDRSelector:
    """Identities of CIDR prefixes inside `cidr` and outside every `excepts` prefix (normalised text)."""

    cidr: str
    excepts: tuple[str, ...] = ()
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash(("cidr", self.cidr, self.excepts)))

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return self.cidr + (f" except {','.join(self.excepts)}" if self.excepts else "")


@dataclass(frozen=True, slots=True)
class EntitySelector:
    entity: str

    def __str__(self) -> str:
        return f"entity:{self.entity}"


Selector = Union[LabelSelector, CIDRSelector, EntitySelector]
ALL = EntitySelector("all")  # the wildcard peer: any identity, map key identity 0


@dataclass(frozen=True, slots=True)
class PortProtocol:
    """A port or range. `port` 0 = every port; `name` set = a named port resolved per endpoint."""

    port: int = 0
    end_port: int = 0  # 0: just `port`
    protocol: Protocol = Protocol.ANY
    name: str | None = None


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    name: str
    value: str = ""
    mismatch: str | None = None  # LOG | ADD | DELETE | REPLACE: an action, not a deny


@dataclass(frozen=True, slots=True)
class HTTPRule:
    """Cilium's PortRuleHTTP. method/path/host are RE2 full-match patterns (None = any)."""

    method: str | None = None
    path: str | None = None
    host: str | None = None
    headers: tuple[str, ...] = ()
    header_matches: tuple[HeaderMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class KafkaRule:
    """Cilium's Kafka PortRule. `api_keys` is the expansion of role/apiKey (empty = every key)."""

    role: str | None = None
    api_key: str | None = None
    api_version: int | None = None
    client_id: str | None = None
    topic: str | None = None
    api_keys: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class PortRule:
    """One `toPorts` entry: ports (empty = all ports) and optional L7 rules (at most one kind)."""

    ports: tuple[PortProtocol, ...] = ()
    http: tuple[HTTPRule, ...] | None = None
    kafka: tuple[KafkaRule, ...] | None = None

    @property
    def has_l7(self) -> bool:
        return self.http is not None or self.kafka is not None


@dataclass(frozen=True, slots=True)
class RuleRef:
    """Where a rule comes from: `CiliumNetworkPolicy default/web spec.ingress[0]`."""

    kind: str
    namespace: str
    name: str
    path: str

    def __str__(self) -> str:
        who = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.kind} {who} {self.path}"

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name, "rule": self.path}


@dataclass(frozen=True, slots=True)
class RuleItem:
    """One ingress/ingressDeny/egress/egressDeny entry."""

    direction: Direction
    deny: bool
    peers: tuple[Selector, ...]
    to_ports: tuple[PortRule, ...]  # empty: every port and protocol (L3-only)
    ref: RuleRef


@dataclass(frozen=True, slots=True)
class Rule:
    """One spec: who it selects, which directions it puts in default deny, and its items."""

    subject: LabelSelector
    enforce_ingress: bool
    enforce_egress: bool
    items: tuple[RuleItem, ...]
    ref: RuleRef


@dataclass(frozen=True, slots=True)
class Policy:
    kind: str
    namespace: str  # "" for cluster-wide kinds
    name: str
    rules: tuple[Rule, ...]
    api_version: str = ""
    body: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    def summary(self) -> dict:
        """What GET /v1/policies lists per policy (the CLI's `policy get` columns)."""
        return {"kind": self.kind, "apiVersion": self.api_version, "namespace": self.namespace or None,
                "name": self.name, "rules": len(self.rules),
                "selects": [str(r.subject) for r in self.rules]}

    def selectors(self) -> set[Selector]:
        out: set[Selector] = set()
        for rule in self.rules:
            out.add(rule.subject)
            for item in rule.items:
                out.update(item.peers)
        return out

    def cidrs(self) -> set[str]:
        """Every prefix the policy names (CIDRs and excepts): each needs a CIDR identity."""
        out: set[str] = set()
        for sel in self.selectors():
            if isinstance(sel, CIDRSelector):
                out.add(sel.cidr)
                out.update(sel.excepts)
        return out
