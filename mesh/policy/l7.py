"""L7 rule matching: HTTP (as Envoy applies Cilium's rules) and Kafka (as Cilium's Kafka parser does).

HTTP: `method`, `path` and `host` are RE2 patterns matched against the whole value (a full match, as
Envoy's `safe_regex`); a rule without a field does not constrain it. `headers` entries are ``Name``
(the header must be present) or ``Name: value`` (some value of the header equals it exactly); header
names are case-insensitive. `headerMatches` without `mismatch` require the header to have that value
(or, with an empty value, to be present); with a `mismatch` action (LOG/ADD/DELETE/REPLACE) Cilium
acts on the header instead of denying, so such entries never decide a verdict here.

Kafka: a rule's API keys come from its role or apiKey (none = every key). `produce` also covers
InitProducerId, but only with a null transactional id (an idempotent producer; transactions need an
explicit apiKey). apiVersion and clientID must equal the request's when set. `topic` is exact; a
request naming several topics passes only if every topic is allowed by some rule that also matches
the request's key, version and client id; a request naming no topic passes on the other fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from mesh.policy import kafka as kafka_tables
from mesh.policy.model import HTTPRule, KafkaRule

_COMPILED: dict[str, object] = {}


def _compiled(pattern: str):
    rx = _COMPILED.get(pattern)
    if rx is None:
        import re2

        from mesh.policy.parse import re2_options

        rx = re2.compile(pattern, options=re2_options())
        if len(_COMPILED) > 4096:  # bounded: patterns come from policies, which can churn
            _COMPILED.clear()
        _COMPILED[pattern] = rx
    return rx


def full_match(pattern: str, value: str) -> bool:
    return _compiled(pattern).fullmatch(value) is not None  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class HTTPRequest:
    method: str = "GET"
    path: str = "/"
    host: str = ""
    headers: tuple[tuple[str, str], ...] = ()  # (name, value), names as sent

    @classmethod
    def build(cls, method: str = "GET", path: str = "/", host: str = "",
              headers: Mapping[str, str] | Iterable[tuple[str, str]] | Iterable[str] = ()) -> "HTTPRequest":
        pairs: list[tuple[str, str]] = []
        items = headers.items() if isinstance(headers, Mapping) else headers
        for h in items:
            if isinstance(h, str):
                name, _, value = h.partition(":")
                pairs.append((name.strip(), value.strip()))
            else:
                pairs.append((str(h[0]), str(h[1])))
        return cls(method, path, host, tuple(pairs))

    def header_values(self, name: str) -> list[str]:
        low = name.lower()
        return [v for (n, v) in self.headers if n.lower() == low]


def http_rule_matches(rule: HTTPRule, req: HTTPRequest) -> bool:
    if rule.method is not None and not full_match(rule.method, req.method):
        return False
    if rule.path is not None and not full_match(rule.path, req.path):
        return False
    if rule.host is not None and not full_match(rule.host, req.host):
        return False
    for h in rule.headers:
        name, sep, value = h.partition(":")
        have = req.header_values(name.strip())
        if not have:
            return False
        if sep and value.strip() not in [v.strip() for v in have]:
            return False
    for m in rule.header_matches:
        if m.mismatch is not None:
            continue
        have = req.header_values(m.name)
        if not have:
            return False
        if m.value and m.value not in have:
            return False
    return True


def http_allowed(rules: Sequence[HTTPRule], req: HTTPRequest) -> bool:
    """A request passes when any rule matches (an empty list allows nothing)."""
    return any(http_rule_matches(r, req) for r in rules)


@dataclass(frozen=True, slots=True)
class KafkaRequest:
    api_key: int
    api_version: int = 0
    client_id: str | None = None
    topics: tuple[str, ...] = ()
    transactional_id: str | None = None  # InitProducerId only

    @classmethod
    def build(cls, api_key: int | str, api_version: int = 0, client_id: str | None = None,
              topics: Iterable[str] = (), transactional_id: str | None = None) -> "KafkaRequest":
        if isinstance(api_key, str):
            number = int(api_key) if api_key.isdigit() else kafka_tables.api_key_number(api_key)
            if number is None:
                raise ValueError(f"unknown Kafka API key {api_key!r}")
            api_key = number
        return cls(int(api_key), int(api_version), client_id, tuple(topics), transactional_id)


def _kafka_fields_match(rule: KafkaRule, req: KafkaRequest) -> bool:
    if rule.api_keys and req.api_key not in rule.api_keys:
        return False
    if (req.api_key == kafka_tables.INIT_PRODUCER_ID and rule.role == kafka_tables.ROLE_PRODUCE
            and req.transactional_id is not None):
        return False  # transactions are not part of the produce role
    if rule.api_version is not None and rule.api_version != req.api_version:
        return False
    if rule.client_id is not None and rule.client_id != req.client_id:
        return False
    return True


def kafka_allowed(rules: Sequence[KafkaRule], req: KafkaRequest) -> bool:
    applicable = [r for r in rules if _kafka_fields_match(r, req)]
    if not applicable:
        return False
    if not req.topics:
        return True
    return all(any(r.topic is None or r.topic == t for r in applicable) for t in req.topics)


@dataclass(frozen=True, slots=True)
class L7Entry:
    """The L7 rules one peer selection brings to a port. `identities` None = any peer.
    `http` and `kafka` both None = every request is allowed (a peer allowed at L3/L4 on this port)."""

    identities: frozenset[int] | None
    http: tuple[HTTPRule, ...] | None
    kafka: tuple[KafkaRule, ...] | None
    derived_from: tuple = ()

    @property
    def allow_all(self) -> bool:
        return self.http is None and self.kafka is None

    def applies_to(self, identity: int) -> bool:
        return self.identities is None or identity in self.identities


@dataclass(frozen=True, slots=True)
class L7Policy:
    """Everything the proxy needs for one (direction, protocol, port range) of one endpoint."""

    parser: str  # "http" | "kafka"
    entries: tuple[L7Entry, ...] = field(default_factory=tuple)

    def check_http(self, identity: int, req: HTTPRequest) -> tuple[bool, tuple]:
        """(allowed, rule refs that allowed it)."""
        refs: list = []
        for e in self.entries:
            if not e.applies_to(identity):
                continue
            if e.allow_all or (e.http is not None and http_allowed(e.http, req)):
                refs.extend(e.derived_from)
        return bool(refs), tuple(dict.fromkeys(refs))

    def check_kafka(self, identity: int, req: KafkaRequest) -> tuple[bool, tuple]:
        applicable = [e for e in self.entries if e.applies_to(identity)]
        allow_all = [e for e in applicable if e.allow_all]
        if allow_all:
            return True, tuple(dict.fromkeys(r for e in allow_all for r in e.derived_from))
        rules: list[KafkaRule] = []
        owners: dict[int, tuple] = {}
        for e in applicable:
            for r in e.kafka or ():
                owners[len(rules)] = e.derived_from
                rules.append(r)
        if not kafka_allowed(rules, req):
            return False, ()
        refs = [ref for i, r in enumerate(rules) if _kafka_fields_match(r, req) for ref in owners[i]]
        return True, tuple(dict.fromkeys(refs))
