"""From the policy engine's output (mesh.policy) to the translation's input. Pure.

`EndpointPolicy.l7` maps (direction, protocol, port_lo, port_hi) → L7Policy(parser, entries); each
L7Entry is (identities or None for any peer, http rules or None). Only HTTP entries are Envoy's
(Kafka goes to the Kafka proxy). Semantics kept from mesh.policy.l7:
- an entry with neither http nor kafka rules allows every request from its peers;
- an entry with an empty http tuple allows nothing (no PeerRule is produced for it);
- `headers` "Name" = present, "Name: value" = exact; `headerMatches` without `mismatch` = exact
  (or present when the value is empty); with a `mismatch` action it never decides a verdict.
"""

from __future__ import annotations

from typing import Any, Mapping

from mesh.errors import ValidationError
from xdsserver.translate.model import Direction, HeaderMatch, HTTPRule, PeerRule, PortPolicy

MAX_PORT_RANGE = 256   # Envoy matches one destination port per filter chain: ranges expand
_TCP, _ANY = 6, 0

# mesh.policy HTTPRule → HTTPRule. Both are immutable and the conversion pure: a 1,000-rule policy that is
# re-applied (or seen on a second port) converts only its new rules. Bounded: rules churn with policies.
_CONVERTED: dict[Any, HTTPRule] = {}
_CONVERTED_MAX = 65536


def http_rules_from_policy(rules: Any) -> tuple[HTTPRule, ...]:
    """http_rule_from_policy over `rules`, memoized per rule."""
    out = []
    converted = _CONVERTED
    for r in rules:
        c = converted.get(r)
        if c is None:
            c = http_rule_from_policy(r)
            if len(converted) >= _CONVERTED_MAX:
                converted.clear()
            converted[r] = c
        out.append(c)
    return tuple(out)


def http_rule_from_policy(rule: Any) -> HTTPRule:
    """mesh.policy.model.HTTPRule → HTTPRule."""
    headers: list[HeaderMatch] = []
    for h in rule.headers:
        name, sep, value = h.partition(":")
        headers.append(HeaderMatch(name.strip(), value.strip() if sep else None))
    for m in rule.header_matches:
        if m.mismatch is not None:
            continue  # an action on the header (LOG/ADD/...), not a condition
        headers.append(HeaderMatch(m.name, m.value or None))
    return HTTPRule(method=rule.method or "", path=rule.path or "", host=rule.host or "",
                    headers=tuple(headers))


def port_policies_from_endpoint(ep_policy: Any, proxy_ports: Mapping[str, int]) -> list[PortPolicy]:
    """mesh.policy.resolve.EndpointPolicy → PortPolicy per redirected HTTP (direction, port).

    `proxy_ports` maps "ingress"/"egress" to the Envoy listener port the datapath redirects to.
    """
    ep = ep_policy.endpoint
    if not ep.ip:
        return []
    out: list[PortPolicy] = []
    converted: dict[int, tuple[HTTPRule, ...]] = {}  # the ports of one port rule share its rule tuple
    label = f"{ep.namespace}/{ep.name}" if ep.namespace else ep.name
    for (direction, protocol, lo, hi), l7 in sorted(ep_policy.l7.items(), key=lambda kv: tuple(
            str(x) for x in kv[0])):
        if l7.parser != "http" or int(protocol) not in (_TCP, _ANY):
            continue
        d = Direction(str(direction))
        rules: list[PeerRule] = []
        for e in l7.entries:
            if e.http is None and e.kafka is None:
                rules.append(PeerRule(e.identities, ()))
            elif e.http:
                http = converted.get(id(e.http))
                if http is None:
                    http = converted[id(e.http)] = http_rules_from_policy(e.http)
                rules.append(PeerRule(e.identities, http))
        hi = hi or lo
        if hi - lo + 1 > MAX_PORT_RANGE:
            raise ValidationError(
                f"L7 rules on a port range of {hi - lo + 1} ports ({lo}-{hi}); at most "
                f"{MAX_PORT_RANGE} are supported", path=f"{label}.{d.value}.ports")
        try:
            proxy_port = proxy_ports[d.value]
        except KeyError:
            raise ValidationError(f"no proxy port configured for {d.value}",
                                  path="proxy_ports") from None
        for port in range(lo, hi + 1):
            out.append(PortPolicy(ep.ip, d, port, proxy_port, tuple(rules), endpoint=label))
    return out
