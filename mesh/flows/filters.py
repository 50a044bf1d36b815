"""Hubble-style flow filters: parse flag values into predicates, apply them to flows (pure).

The same names serve the CLI (`--from-label app=x`), the API (`?from-label=app%3Dx`) and the UI.
Values of one flag are alternatives (OR); different flags must all match (AND). Flags without a
from-/to- prefix match either side of the flow.

  pod / from-pod / to-pod                [namespace/]pod-name-prefix (no namespace: any namespace)
  label / from-label / to-label          k=v, k!=v, k (exists), !k (absent); comma = all of them;
                                         a key without a source (app) matches any (k8s:app)
  identity / from-identity / to-identity number or reserved name (world, host, ...)
  namespace / from-namespace / to-namespace
  ip / from-ip / to-ip                   exact address
  port / from-port / to-port             1-65535
  verdict                                FORWARDED DROPPED REDIRECTED AUDIT ERROR
  drop-reason                            a reason name (POLICY_DENIED, ...) or code
  protocol                               tcp udp icmp sctp http kafka
  type                                   trace drop l7
  traffic-direction                      ingress egress
  http-method                            GET, POST, ... (case-insensitive)
  http-path                              a regular expression, searched in the path (as Hubble)
  http-status                            200, or a prefix with + (4+, 5+, 40+)
  kafka-topic                            a topic name
  since / until                          RFC 3339 time or a duration ago (30s, 5m, 1h30m, 2d)
  last                                   the newest N matching flows
"""

from __future__ import annotations

import re
import time as _time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable, Mapping

from mesh.errors import ValidationError
from mesh.flows.model import DROP_REASON_CODES, DROP_REASONS, Endpoint, Flow, RESERVED_IDS, Verdict

Pred = Callable[[Flow], bool]

SIDED = ("pod", "label", "identity", "namespace", "ip", "port")
FILTER_FLAGS = tuple(f"{p}{s}" for s in SIDED for p in ("", "from-", "to-")) + (
    "verdict", "drop-reason", "protocol", "type", "traffic-direction", "http-method", "http-path",
    "http-status", "kafka-topic", "since", "until", "last")

_PROTOCOLS = {"tcp": "TCP", "udp": "UDP", "icmp": "ICMPv4", "icmpv4": "ICMPv4", "sctp": "SCTP",
              "http": "http", "kafka": "kafka"}
_TYPES = ("trace", "drop", "l7")
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h|d))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_LABEL_KEY = re.compile(r"^[A-Za-z0-9_.:/-]+$")
_METHOD = re.compile(r"^[A-Za-z]+$")
_META_KINDS = ("pod", "label", "identity", "namespace")   # answerable from enrichment alone


@dataclass(frozen=True, slots=True)
class FlowFilter:
    """Compiled filters. `match(flow)` is the AND of every flag's predicate."""

    predicates: tuple[Pred, ...] = ()
    # Necessary conditions on the two sides' enrichment (EndpointMeta, which has the identity,
    # labels, namespace and pod of an Endpoint): the observer checks them on stored slots before
    # building a Flow, so a selective query over a full ring stays cheap.
    side_predicates: tuple[Callable[[object, object], bool], ...] = ()
    # Necessary conditions on datapath record fields, declaratively (the observer compiles them
    # against its raw record layout): (field, allowed values) per flag; fields: verdict, type,
    # drop_reason, protocol, direction, src_port, dst_port, any_port, src_ip, dst_ip, any_ip.
    record_criteria: tuple[tuple[str, frozenset], ...] = ()
    since: float | None = None
    until: float | None = None
    last: int | None = None
    flags: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())   # what was asked, for humans

    def match(self, flow: Flow) -> bool:
        if self.since is not None and flow.time < self.since:
            return False
        if self.until is not None and flow.time > self.until:
            return False
        for p in self.predicates:
            if not p(flow):
                return False
        return True

    def __call__(self, flow: Flow) -> bool:
        return self.match(flow)

    def sides_may_match(self, src_meta: object, dst_meta: object) -> bool:
        for p in self.side_predicates:
            if not p(src_meta, dst_meta):
                return False
        return True


def _err(flag: str, message: str) -> ValidationError:
    return ValidationError(message, path=f"--{flag}")


# ---- value parsers (each raises ValidationError naming the flag) ----

def parse_time(flag: str, value: str, now: float | None = None) -> float:
    """RFC 3339 (2026-11-26T05:00:00Z) or a duration before now (5m, 1h30m)."""
    v = value.strip()
    if _DURATION.match(v):
        secs = sum(float(n) * _UNIT[u] for n, u in _DURATION_PART.findall(v))
        return (now if now is not None else _time.time()) - secs
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise _err(flag, f"{value!r} is neither an RFC 3339 time (2026-11-26T05:00:00Z) nor a duration "
                         "(30s, 5m, 1h30m)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _int(flag: str, value: str, lo: int, hi: int, what: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise _err(flag, f"{value!r} is not a {what}") from None
    if not lo <= n <= hi:
        raise _err(flag, f"{value!r} is out of range for a {what} ({lo}-{hi})")
    return n


def _label_pred(flag: str, value: str) -> Callable[[Endpoint], bool]:
    terms: list[tuple[str, str, str]] = []   # (op, key, value)
    for raw in value.split(","):
        t = raw.strip()
        if not t:
            raise _err(flag, f"{value!r}: empty label term")
        if "!=" in t:
            k, v = t.split("!=", 1)
            op = "!="
        elif "=" in t:
            k, v = t.split("=", 1)
            k = k.rstrip("=")   # k==v as kubectl allows
            v = v.lstrip("=")
            op = "="
        elif t.startswith("!"):
            k, v, op = t[1:], "", "!"
        else:
            k, v, op = t, "", "exists"
        k = k.strip()
        if not k or not _LABEL_KEY.match(k) or " " in v:
            raise _err(flag, f"{value!r} is not a label selector (k=v, k!=v, k, !k; comma-separated)")
        if k.startswith("any:"):
            k = k[4:]      # any source: the bare key (label maps carry bare keys too)
        terms.append((op, k, v.strip()))

    def pred(ep: Endpoint) -> bool:
        labels = ep.label_map()
        for op, k, v in terms:
            if op == "=" and labels.get(k) != v:
                return False
            if op == "!=" and labels.get(k) == v:
                return False
            if op == "exists" and k not in labels:
                return False
            if op == "!" and k in labels:
                return False
        return True

    return pred


def _pod_pred(flag: str, value: str) -> Callable[[Endpoint], bool]:
    ns, sep, prefix = value.partition("/")
    if not sep:
        ns, prefix = "", value
    if not prefix or "/" in prefix:
        raise _err(flag, f"{value!r} is not a pod ([namespace/]pod-name-prefix)")
    if ns:
        return lambda ep: ep.namespace == ns and ep.pod_name.startswith(prefix)
    return lambda ep: bool(ep.pod_name) and ep.pod_name.startswith(prefix)


def _identity_pred(flag: str, value: str) -> Callable[[Endpoint], bool]:
    v = value.strip().removeprefix("reserved:")
    if v in RESERVED_IDS:
        n = RESERVED_IDS[v]
    else:
        n = _int(flag, v, 0, 2**32 - 1, "security identity (a number or world, host, ...)")
    return lambda ep: ep.identity == n


def _side_pred(kind: str, flag: str, value: str) -> Callable[[Endpoint], bool]:
    if kind == "pod":
        return _pod_pred(flag, value)
    if kind == "label":
        return _label_pred(flag, value)
    if kind == "identity":
        return _identity_pred(flag, value)
    if kind == "namespace":
        if not value:
            raise _err(flag, "empty namespace")
        return lambda ep: ep.namespace == value
    if kind == "ip":
        import ipaddress
        try:
            ip = str(ipaddress.ip_address(value))
        except ValueError:
            raise _err(flag, f"{value!r} is not an IP address") from None
        return lambda ep: ep.ip == ip
    if kind == "port":
        port = _int(flag, value, 1, 65535, "port")
        return lambda ep: ep.port == port
    raise AssertionError(kind)


def _any(preds: list[Pred]) -> Pred:
    if len(preds) == 1:
        return preds[0]
    return lambda f: any(p(f) for p in preds)


def _status_pred(flag: str, value: str) -> Callable[[int], bool]:
    v = value.strip()
    if v.endswith("+") and v[:-1].isdigit() and 1 <= len(v) - 1 <= 2:
        prefix = v[:-1]
        return lambda code: code > 0 and str(code).startswith(prefix)
    if v.isdigit() and len(v) == 3 and 100 <= int(v) <= 599:
        n = int(v)
        return lambda code: code == n
    raise _err(flag, f"{value!r} is not an HTTP status (200) or a prefix (4+, 5+, 40+)")


def _global_pred(flag: str, value: str) -> Pred:
    if flag == "verdict":
        v = value.strip().upper()
        if v not in Verdict.__members__:
            raise _err(flag, f"{value!r} is not a verdict ({', '.join(Verdict.__members__)})")
        verdict = Verdict(v)
        return lambda f: f.verdict is verdict
    if flag == "drop-reason":
        v = value.strip().upper()
        if v.isdigit():
            code = int(v)
        elif v in DROP_REASON_CODES:
            code = DROP_REASON_CODES[v]
        else:
            names = ", ".join(n for c, (n, _) in DROP_REASONS.items() if c >= 10)
            raise _err(flag, f"{value!r} is not a drop reason ({names}, or a number)")
        return lambda f: f.drop_reason == code
    if flag == "protocol":
        p = _PROTOCOLS.get(value.strip().lower())
        if p is None:
            raise _err(flag, f"{value!r} is not a protocol ({', '.join(sorted(set(_PROTOCOLS)))})")
        if p in ("http", "kafka"):
            return lambda f: f.l7_protocol == p
        return lambda f: f.protocol == p and f.l7 is None
    if flag == "type":
        t = value.strip().lower()
        if t not in _TYPES:
            raise _err(flag, f"{value!r} is not a flow type ({', '.join(_TYPES)})")
        return lambda f: f.type.value == t
    if flag == "traffic-direction":
        d = value.strip().upper()
        if d not in ("INGRESS", "EGRESS"):
            raise _err(flag, f"{value!r} is not a traffic direction (ingress, egress)")
        return lambda f: f.traffic_direction.value == d
    if flag == "http-method":
        m = value.strip().upper()
        if not _METHOD.match(m):
            raise _err(flag, f"{value!r} is not an HTTP method")
        return lambda f: f.l7 is not None and f.l7.http is not None and f.l7.http.method.upper() == m
    if flag == "http-path":
        try:
            rx = re.compile(value)
        except re.error as exc:
            raise _err(flag, f"{value!r} is not a valid regular expression: {exc}") from None
        return lambda f: f.l7 is not None and f.l7.http is not None and rx.search(f.l7.http.path) is not None
    if flag == "http-status":
        ok = _status_pred(flag, value)
        return lambda f: f.l7 is not None and f.l7.http is not None and ok(f.l7.http.code)
    if flag == "kafka-topic":
        topic = value.strip()
        if not topic:
            raise _err(flag, "empty topic")
        return lambda f: f.l7 is not None and f.l7.kafka is not None and topic in f.l7.kafka.topics
    raise AssertionError(flag)


def _record_criterion(flag: str, values: list[str]) -> tuple[str, frozenset] | None:
    """The datapath-record form of an (already validated) global flag, or None."""
    if flag == "verdict":
        return ("verdict", frozenset(v.strip().upper() for v in values))
    if flag == "type":
        return ("type", frozenset(v.strip().lower() for v in values))
    if flag == "drop-reason":
        return ("drop_reason", frozenset(int(v) if v.strip().isdigit() else DROP_REASON_CODES[v.strip().upper()]
                                         for v in values))
    if flag == "protocol":
        return ("protocol", frozenset(_PROTOCOLS[v.strip().lower()] for v in values))
    if flag == "traffic-direction":
        return ("direction", frozenset(v.strip().upper() for v in values))
    if flag.startswith(("http-", "kafka-")):
        return ("type", frozenset({"l7"}))   # datapath records never match an L7 filter
    return None


def parse_filters(params: Mapping[str, Iterable[str] | str], now: float | None = None,
                  ignore: Iterable[str] = ()) -> FlowFilter:
    """Flag name → values (a str or a list) → FlowFilter. Unknown names are errors."""
    ignored = set(ignore)
    preds: list[Pred] = []
    side_preds: list[Callable[[object, object], bool]] = []
    criteria: list[tuple[str, frozenset]] = []
    since = until = None
    last: int | None = None
    asked: list[tuple[str, tuple[str, ...]]] = []
    for raw_flag, raw_values in params.items():
        flag = raw_flag.removeprefix("--").replace("_", "-")
        if flag in ignored:
            continue
        values = [raw_values] if isinstance(raw_values, str) else [str(v) for v in raw_values]
        values = [v for v in values if v is not None]
        if not values:
            continue
        if flag not in FILTER_FLAGS:
            raise _err(flag, f"unknown filter (known: {', '.join(FILTER_FLAGS)})")
        asked.append((flag, tuple(values)))
        if flag in ("since", "until"):
            t = parse_time(flag, values[-1], now)
            if flag == "since":
                since = t
            else:
                until = t
            continue
        if flag == "last":
            last = _int(flag, values[-1], 0, 10**9, "count")
            continue
        side, _, kind = flag.rpartition("-") if flag.startswith(("from-", "to-")) else ("", "", flag)
        if kind in SIDED:
            sps = [_side_pred(kind, flag, v) for v in values]
            one = (lambda ps: (lambda ep: any(p(ep) for p in ps)))(sps) if len(sps) > 1 else sps[0]
            if side == "from":
                preds.append((lambda p: lambda f: p(f.source))(one))
                side_pred = (lambda p: lambda s, d: p(s))(one)
            elif side == "to":
                preds.append((lambda p: lambda f: p(f.destination))(one))
                side_pred = (lambda p: lambda s, d: p(d))(one)
            else:
                preds.append((lambda p: lambda f: p(f.source) or p(f.destination))(one))
                side_pred = (lambda p: lambda s, d: p(s) or p(d))(one)
            if kind in _META_KINDS:
                side_preds.append(side_pred)
            elif kind in ("port", "ip"):
                field = {"from": "src_", "to": "dst_"}.get(side, "any_") + kind
                norm = (lambda v: int(v)) if kind == "port" else (lambda v: str(__import__("ipaddress").ip_address(v)))
                criteria.append((field, frozenset(norm(v) for v in values)))
            continue
        preds.append(_any([_global_pred(flag, v) for v in values]))
        crit = _record_criterion(flag, values)
        if crit is not None:
            criteria.append(crit)
    if since is not None and until is not None and since > until:
        raise _err("since", "--since is later than --until")
    return FlowFilter(predicates=tuple(preds), side_predicates=tuple(side_preds),
                      record_criteria=tuple(criteria), since=since, until=until, last=last, flags=tuple(asked))
