"""`ostium policy trace`: explain the verdict for one flow, offline or against a live repository.

Both ends are checked: the source endpoint's egress (when the source is an endpoint) and the
destination endpoint's ingress (when the destination is one). A port under L7 rules is evaluated
with the request given (HTTP or Kafka); without one, the flow is reported as allowed-and-redirected
with the L7 verdict "not-evaluated".

Offline, endpoints come from `Endpoint` manifests (ostium.io/v1alpha1; metadata name/namespace/labels,
spec.ip, spec.ports [{name, port, protocol}], spec.serviceAccount) and optional `v1 Namespace`
manifests for namespace labels; every namespace gets ``kubernetes.io/metadata.name``. Identities are
numbered from 256 in the order of their sorted label sets (stable for a given input).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from mesh.errors import NotFoundError, ValidationError
from mesh.identity.labels import MIN_ALLOCATED_IDENTITY, RESERVED_IDENTITIES, labels_key, security_labels
from mesh.labels import name_error, validate_labels
from mesh.manifests import Document, load_documents
from mesh.policy.l7 import HTTPRequest, KafkaRequest
from mesh.policy.model import Direction, Protocol, Verdict
from mesh.policy.resolve import EndpointInfo, PolicyRepository

_PROTOS = {"TCP": Protocol.TCP, "UDP": Protocol.UDP, "SCTP": Protocol.SCTP, "ICMP": Protocol.ICMP,
           "ICMPV6": Protocol.ICMPV6}


@dataclass(frozen=True, slots=True)
class Peer:
    endpoint: EndpointInfo | None
    ip: str | None
    identity: int

    def to_json(self, repo: PolicyRepository) -> dict[str, Any]:
        return {"endpoint": f"{self.endpoint.namespace}/{self.endpoint.name}" if self.endpoint else None,
                "ip": self.ip, "identity": self.identity,
                "labels": repo.identity_labels(self.identity) or {}}


# --- endpoints manifests -----------------------------------------------------------------------

def parse_endpoint_documents(docs: Sequence[Document]) -> list[EndpointInfo]:
    """Endpoint (+ Namespace) manifests → EndpointInfo with offline identities."""
    ns_labels: dict[str, dict[str, str]] = {}
    raw: list[tuple[str, str, dict, str | None, dict, str | None]] = []
    for doc in docs:
        body = doc.body
        try:
            if not isinstance(body, dict):
                raise ValidationError("a manifest must be a mapping")
            kind = body.get("kind")
            meta = body.get("metadata")
            if not isinstance(meta, dict):
                raise ValidationError("must be a mapping with a name", path="metadata")
            if kind == "Namespace":
                err = name_error(meta.get("name"), "namespace")
                if err:
                    raise ValidationError(err, path="metadata.name")
                ns_labels[meta["name"]] = validate_labels(meta.get("labels"))
                continue
            if kind != "Endpoint":
                raise ValidationError(f"expected kind Endpoint or Namespace, got {kind!r}", path="kind")
            name, ns = meta.get("name"), meta.get("namespace", "default")
            for value, what, path in ((name, "name", "metadata.name"), (ns, "namespace", "metadata.namespace")):
                err = name_error(value, what)
                if err:
                    raise ValidationError(err, path=path)
            labels = validate_labels(meta.get("labels"))
            spec = body.get("spec") or {}
            if not isinstance(spec, dict):
                raise ValidationError("must be a mapping", path="spec")
            ip = spec.get("ip")
            if ip is not None:
                try:
                    ip = str(ipaddress.ip_address(ip))
                except ValueError:
                    raise ValidationError(f"{ip!r} is not an IP address", path="spec.ip") from None
            ports: dict[str, tuple[int, Protocol]] = {}
            for i, p in enumerate(spec.get("ports") or []):
                if not isinstance(p, dict) or not isinstance(p.get("name"), str) or \
                        not isinstance(p.get("port", p.get("containerPort")), int):
                    raise ValidationError("must have a name and a port number", path=f"spec.ports[{i}]")
                proto = _PROTOS.get(str(p.get("protocol", "TCP")).upper())
                if proto is None:
                    raise ValidationError(f"unknown protocol {p.get('protocol')!r}", path=f"spec.ports[{i}].protocol")
                ports[p["name"]] = (int(p.get("port", p.get("containerPort"))), proto)
            sa = spec.get("serviceAccount", spec.get("serviceAccountName"))
            raw.append((name, ns, labels, ip, ports, sa))
        except ValidationError as exc:
            raise exc.with_document(doc.ref) from None
    seen: set[tuple[str, str]] = set()
    staged = []
    for name, ns, labels, ip, ports, sa in raw:
        if (ns, name) in seen:
            raise ValidationError(f"endpoint {ns}/{name} is defined twice")
        seen.add((ns, name))
        sec = security_labels(labels, ns, ns_labels.get(ns), sa)
        staged.append((name, ns, sec, ip, ports))
    numbers = {k: MIN_ALLOCATED_IDENTITY + i
               for i, k in enumerate(sorted({labels_key(s[2]) for s in staged}))}
    return [EndpointInfo(name, ns, sec, ip, numbers[labels_key(sec)], ports) for name, ns, sec, ip, ports in staged]


def offline_repository(policy_paths: Sequence[str], endpoint_paths: Sequence[str]) -> PolicyRepository:
    """A repository loaded from files: the policies (validated all or nothing) and the endpoints."""
    from mesh.manifests import parse_documents

    parsed = parse_documents(load_documents(policy_paths)) if policy_paths else []
    repo = PolicyRepository()
    for ep in parse_endpoint_documents(load_documents(endpoint_paths)):
        repo.upsert_endpoint(ep)
    from mesh.policy.model import Policy

    for p in parsed:
        if not isinstance(p.obj, Policy):
            raise ValidationError(f"{p.kind} is not a policy kind", document=p.doc.ref)
        repo.upsert_policy(p.obj)
    return repo


# --- the query -----------------------------------------------------------------------------------

def resolve_peer(repo: PolicyRepository, endpoints: Iterable[EndpointInfo], text: str, what: str) -> Peer:
    eps = list(endpoints)
    if text.startswith("reserved:"):  # a reserved identity (host, remote-node, ...), not an address
        number = RESERVED_IDENTITIES.get(text.partition(":")[2])
        if number is None:
            raise ValidationError(f"{text!r}: unknown reserved identity (one of "
                                  f"{', '.join(sorted(RESERVED_IDENTITIES))})", path=f"--{what}")
        return Peer(None, None, number)
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        addr = None
    if addr is not None:
        for ep in eps:
            if ep.ip and ipaddress.ip_address(ep.ip) == addr:
                return Peer(ep, ep.ip, ep.identity)
        return Peer(None, str(addr), repo.identity_for_ip(str(addr)))
    if "/" in text:
        ns, _, name = text.partition("/")
        hits = [e for e in eps if e.namespace == ns and e.name == name]
    else:
        hits = [e for e in eps if e.name == text]
    if not hits:
        raise NotFoundError(f"{what} {text!r}: no such endpoint (give NAME, NAMESPACE/NAME or an IP)")
    if len(hits) > 1:
        raise ValidationError(f"{what} {text!r} names several endpoints: "
                              f"{', '.join(f'{e.namespace}/{e.name}' for e in hits)}; write NAMESPACE/NAME",
                              path=f"--{what}")
    ep = hits[0]
    return Peer(ep, ep.ip, ep.identity)


def parse_dport(text: str) -> tuple[int, Protocol]:
    port_s, _, proto_s = str(text).partition("/")
    proto = _PROTOS.get((proto_s or "TCP").upper())
    if proto is None:
        raise ValidationError(f"unknown protocol {proto_s!r} (TCP, UDP, SCTP, ICMP)", path="--dport")
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValidationError(f"{text!r} is not PORT/PROTO (e.g. 80/TCP)", path="--dport")
    return int(port_s), proto


def _refs(refs) -> list[str]:
    return [str(r) for r in refs]


def _check_direction(repo: PolicyRepository, ep: EndpointInfo, direction: Direction, remote: int,
                     proto: Protocol, port: int) -> dict[str, Any]:
    pol = repo.endpoint_policy(ep.namespace, ep.name)
    enforced = pol.ingress_enforced if direction == Direction.INGRESS else pol.egress_enforced
    hit = repo.lookup_key(ep, direction, remote, int(proto), port)
    out: dict[str, Any] = {"endpoint": f"{ep.namespace}/{ep.name}", "enforced": enforced}
    if hit is None:
        selecting = [str(r) for r in pol.selected_by]
        out.update(verdict="denied", rules=[], key=None,
                   reason=f"default deny: {ep.namespace}/{ep.name} is selected for {direction.value} "
                          f"(by {', '.join(selecting) or 'a policy'}) and no rule allows identity {remote} "
                          f"on {port}/{proto.name}")
        return out
    key, entry = hit
    out["key"] = {"identity": key.identity, "protocol": key.protocol, "port_lo": key.port_lo,
                  "port_hi": key.port_hi}
    out["rules"] = _refs(entry.derived_from)
    if entry.verdict == Verdict.DENY:
        out.update(verdict="denied", reason="a deny rule matches (deny wins over allows)")
    elif entry.verdict == Verdict.REDIRECT:
        out.update(verdict="redirected", parser=entry.l7_parser,
                   reason=f"allowed at L3/L4, requests are checked by the {entry.l7_parser} proxy")
        out["_l7"] = pol.l7.get((direction, key.protocol, key.port_lo, key.port_hi))
    elif not enforced:
        out.update(verdict="allowed", reason=f"{direction.value} is not enforced: no policy selects "
                                             f"{ep.namespace}/{ep.name} for {direction.value}")
    else:
        out.update(verdict="allowed", reason="an allow rule matches")
    return out


def trace(repo: PolicyRepository, endpoints: Iterable[EndpointInfo] | None, src: str, dst: str, dport: str,
          http: dict[str, Any] | None = None, kafka: dict[str, Any] | None = None) -> dict[str, Any]:
    eps = list(endpoints) if endpoints is not None else repo.endpoints()
    s = resolve_peer(repo, eps, src, "src")
    d = resolve_peer(repo, eps, dst, "dst")
    port, proto = parse_dport(dport)
    result: dict[str, Any] = {"src": s.to_json(repo), "dst": d.to_json(repo), "dport": port,
                              "protocol": proto.name, "revision": repo.revision}
    checks: list[tuple[str, dict[str, Any], int]] = []
    if s.endpoint is not None and repo.get_endpoint(s.endpoint.namespace, s.endpoint.name):
        checks.append(("egress", _check_direction(repo, s.endpoint, Direction.EGRESS, d.identity, proto, port),
                       d.identity))
    else:
        result["egress"] = {"verdict": "not-applicable", "reason": "the source is not an endpoint"}
    if d.endpoint is not None and repo.get_endpoint(d.endpoint.namespace, d.endpoint.name):
        checks.append(("ingress", _check_direction(repo, d.endpoint, Direction.INGRESS, s.identity, proto, port),
                       s.identity))
    else:
        result["ingress"] = {"verdict": "not-applicable", "reason": "the destination is not an endpoint"}
    verdict = "allowed"
    rules: list[str] = []
    l7_out: dict[str, Any] | None = None
    for name, check, remote in checks:
        l7pol = check.pop("_l7", None)
        result[name] = check
        if check["verdict"] == "denied":
            verdict = "denied"
    if verdict == "denied":
        for name, check, _ in checks:
            if check["verdict"] == "denied":
                rules += check["rules"]
    else:
        for name, check, _ in checks:
            rules += check.get("rules", [])
        redirects = [(n, c, r) for (n, c, r) in checks if c["verdict"] == "redirected"]
        if redirects:
            l7_out = {"parser": redirects[0][1].get("parser"), "directions": [n for n, _, _ in redirects]}
            if http is None and kafka is None:
                l7_out.update(verdict="not-evaluated", reason="give --http-* or --kafka-* to evaluate a request")
            else:
                l7_rules: list[str] = []
                l7_ok = True
                reasons = []
                for name, check, remote in redirects:
                    ep = s.endpoint if name == "egress" else d.endpoint
                    assert ep is not None
                    pol = repo.endpoint_policy(ep.namespace, ep.name)
                    key = check["key"]
                    l7pol = pol.l7.get((Direction(name), key["protocol"], key["port_lo"], key["port_hi"]))
                    ok, refs = _eval_l7(l7pol, remote, http, kafka, reasons, name)
                    l7_ok = l7_ok and ok
                    l7_rules += _refs(refs)
                l7_out["verdict"] = "allowed" if l7_ok else "denied"
                l7_out["rules"] = list(dict.fromkeys(l7_rules))
                if reasons:
                    l7_out["reason"] = "; ".join(reasons)
                if not l7_ok:
                    verdict = "denied"
                    rules = []
                else:
                    rules += l7_rules
    result["verdict"] = verdict
    result["l7"] = l7_out
    result["rules"] = list(dict.fromkeys(rules))
    result["redirected"] = bool(l7_out)
    return {"verdict": result.pop("verdict"), "l7": result.pop("l7"), "rules": result.pop("rules"), **result}


def _eval_l7(l7pol, remote: int, http, kafka, reasons: list[str], direction: str) -> tuple[bool, tuple]:
    if l7pol is None:
        reasons.append(f"{direction}: no L7 rules found for the port")
        return False, ()
    if l7pol.parser == "http":
        if http is None:
            reasons.append(f"{direction}: the port is handled by the HTTP proxy; a Kafka request is not HTTP")
            return False, ()
        req = HTTPRequest.build(http.get("method") or "GET", http.get("path") or "/", http.get("host") or "",
                                http.get("headers") or [])
        ok, refs = l7pol.check_http(remote, req)
    else:
        if kafka is None:
            reasons.append(f"{direction}: the port is handled by the Kafka proxy; an HTTP request is not Kafka")
            return False, ()
        try:
            req = KafkaRequest.build(kafka.get("apiKey") or kafka.get("api_key") or "produce",
                                     int(kafka.get("apiVersion", kafka.get("api_version", 0)) or 0),
                                     kafka.get("clientID", kafka.get("client_id")),
                                     kafka.get("topics") or [], kafka.get("transactionalID"))
        except ValueError as exc:
            raise ValidationError(str(exc), path="--kafka-api-key") from None
        ok, refs = l7pol.check_kafka(remote, req)
    if not ok:
        reasons.append(f"{direction}: no L7 rule allows the request")
    return ok, refs


def trace_query(repo: PolicyRepository, endpoints: Iterable[EndpointInfo] | None, query: dict[str, Any]) -> dict:
    """The agent's POST /v1/policy/trace body → the same result the offline CLI prints.

    query: {"src": str, "dst": str, "dport": "80/TCP", "http": {"method", "path", "host", "headers": [..]}?,
            "kafka": {"apiKey", "apiVersion", "topics": [..], "clientID"}?}
    """
    if not isinstance(query, dict):
        raise ValidationError("the trace query must be a JSON object")
    for key in ("src", "dst", "dport"):
        if not isinstance(query.get(key), (str, int)) or query.get(key) in ("", None):
            raise ValidationError("required", path=key)
    return trace(repo, endpoints, str(query["src"]), str(query["dst"]), str(query["dport"]),
                 query.get("http"), query.get("kafka"))
