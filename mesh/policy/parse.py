"""Parse and validate policy documents into `mesh.policy.model.Policy`.

Kinds: `cilium.io/v2` CiliumNetworkPolicy (spec and/or specs) and CiliumClusterwideNetworkPolicy,
`networking.k8s.io/v1` NetworkPolicy, and `ostium.io/v1alpha1` NetworkPolicy /
ClusterwideNetworkPolicy with the Cilium schema. Every error is a `PolicyError` whose path names the
field exactly (``specs[1].ingress[0].toPorts[0].rules.http[1].path``).

Cilium's rules followed here (pkg/policy/api, rule_validation.go): L7 rules only on TCP ports, never
with port 0, never in deny rules (their toPorts have no `rules`), one L7 kind per port rule; `icmps`
and `toPorts` not in the same rule; Kafka role and apiKey not together; except inside its CIDR.
Selectors in a CNP are scoped to the policy's namespace unless they name the namespace label or a
reserved label; in a CCNP endpoint selectors select managed endpoints cluster-wide (a reserved
identity is only reached by naming it, or by an entity).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any

from mesh.errors import PolicyError, ValidationError
from mesh.identity.labels import (NAMESPACE_KEY, NAMESPACE_LABELS_PREFIX, SOURCE_ANY, SOURCE_CIDR, SOURCE_K8S,
                                  SOURCE_RESERVED, split_label_key)
from mesh.labels import label_key_error, label_value_error, name_error
from mesh.manifests import Document
from mesh.policy import kafka as kafka_tables
from mesh.policy.model import (ALL, OP_DOES_NOT_EXIST, OP_EXISTS, OP_IN, OP_NOT_IN, OPERATORS, PORT_PROTOCOLS,
                               CIDRSelector, Direction, EntitySelector, HeaderMatch, HTTPRule, KafkaRule,
                               LabelSelector, Policy, PortProtocol, PortRule, Protocol, Requirement, Rule,
                               RuleItem, RuleRef, Selector)

CILIUM_API = "cilium.io/v2"
K8S_API = "networking.k8s.io/v1"
OSTIUM_API = "ostium.io/v1alpha1"

KIND_CNP = "CiliumNetworkPolicy"
KIND_CCNP = "CiliumClusterwideNetworkPolicy"
KIND_KNP = "NetworkPolicy"
KIND_OSTIUM_CCNP = "ClusterwideNetworkPolicy"

ENTITIES = frozenset({"all", "world", "world-ipv4", "world-ipv6", "cluster", "host", "init", "ingress",
                      "unmanaged", "remote-node", "health", "none", "kube-apiserver"})

# Real Cilium fields Ostium does not implement yet: a clear "not supported" beats "unknown field".
_UNSUPPORTED = {
    "fromRequires": "fromRequires is deprecated in Cilium and not supported",
    "toRequires": "toRequires is deprecated in Cilium and not supported",
    "fromGroups": "fromGroups (cloud groups) is not supported",
    "toGroups": "toGroups (cloud groups) is not supported",
    "fromNodes": "fromNodes is not supported",
    "toNodes": "toNodes is not supported",
    "toServices": "toServices is not supported yet (select the backends with toEndpoints)",
    "toFQDNs": "toFQDNs is not supported yet",
    "authentication": "mutual authentication is not supported",
    "nodeSelector": "host policies (nodeSelector) are not supported",
    "serverNames": "serverNames (TLS SNI) is not supported",
    "terminatingTLS": "TLS termination is not supported",
    "originatingTLS": "TLS origination is not supported",
    "listener": "custom Envoy listeners are not supported",
    "dns": "DNS rules are not supported yet",
    "l7proto": "generic L7 (l7proto) rules are not supported",
    "l7": "generic L7 (l7proto) rules are not supported",
    "cidrGroupRef": "cidrGroupRef is not supported",
    "cidrGroupSelector": "cidrGroupSelector is not supported",
    "secret": "header values from secrets are not supported",
}

_INGRESS_FIELDS = ("fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities", "toPorts", "icmps",
                   "fromRequires", "fromGroups", "fromNodes", "authentication")
_EGRESS_FIELDS = ("toEndpoints", "toCIDR", "toCIDRSet", "toEntities", "toPorts", "icmps", "toRequires",
                  "toServices", "toFQDNs", "toGroups", "toNodes", "authentication")
_SPEC_FIELDS = ("endpointSelector", "nodeSelector", "ingress", "ingressDeny", "egress", "egressDeny", "labels",
                "description", "enableDefaultDeny", "log")

# IANA service names (RFC 6335): what Cilium and Kubernetes accept as a named port.
_SVC_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]*[a-z0-9])?$")

_ICMP_TYPES_V4 = {"EchoReply": 0, "DestinationUnreachable": 3, "Redirect": 5, "Echo": 8, "EchoRequest": 8,
                  "RouterAdvertisement": 9, "RouterSelection": 10, "TimeExceeded": 11, "ParameterProblem": 12,
                  "Timestamp": 13, "TimestampReply": 14}
_ICMP_TYPES_V6 = {"DestinationUnreachable": 1, "PacketTooBig": 2, "TimeExceeded": 3, "ParameterProblem": 4,
                  "EchoRequest": 128, "EchoReply": 129, "NeighborSolicitation": 135, "NeighborAdvertisement": 136}


def _err(message: str, path: str) -> PolicyError:
    return PolicyError(message, path=path)


def _fields(obj: Any, path: str, allowed: tuple[str, ...] | list[str], what: str = "") -> dict:
    if not isinstance(obj, dict):
        raise _err(f"must be a mapping{what}, got {_tname(obj)}", path)
    for key in obj:
        if key in _UNSUPPORTED and key in allowed:
            raise _err(_UNSUPPORTED[key], _join(path, key))
        if key not in allowed:
            shown = sorted(k for k in allowed if k not in _UNSUPPORTED)
            raise _err(f"unknown field {key!r} (allowed: {', '.join(shown)})", _join(path, str(key)))
    return obj


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _tname(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number"}.get(type(value), type(value).__name__)


def _list(value: Any, path: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _err(f"must be a list, got {_tname(value)}", path)
    return value


def _str(value: Any, path: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise _err(f"must be a string, got {_tname(value)}", path)
    if not value and not allow_empty:
        raise _err("must not be empty", path)
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _err(f"must be true or false, got {_tname(value)}", path)
    return value


# --- selectors ----------------------------------------------------------------------------------

def _parse_key(key: Any, path: str, *, default_source: str = SOURCE_ANY, prefix: str = "") -> tuple[str, str]:
    if not isinstance(key, str) or not key:
        raise _err(f"label key must be a non-empty string, got {_tname(key)}", path)
    if default_source == SOURCE_ANY:
        source, bare = split_label_key(key)
    else:  # Kubernetes selectors: plain label keys, no Cilium source prefix
        source, bare = default_source, key
    if source in (SOURCE_RESERVED, SOURCE_CIDR):
        if not bare:
            raise _err(f"label key {key!r}: missing name after the source", path)
        return source, bare
    err = label_key_error(bare)
    if err:
        raise _err(err, path)
    return source, prefix + bare


def parse_label_selector(obj: Any, path: str, *, default_source: str = SOURCE_ANY,
                         key_prefix: str = "") -> list[Requirement]:
    """matchLabels + matchExpressions → requirements (not yet scoped)."""
    if obj is None:
        obj = {}
    _fields(obj, path, ("matchLabels", "matchExpressions"), " (a label selector)")
    reqs: list[Requirement] = []
    ml = obj.get("matchLabels")
    if ml is not None:
        if not isinstance(ml, dict):
            raise _err(f"must be a mapping of label keys to values, got {_tname(ml)}", _join(path, "matchLabels"))
        for key, value in ml.items():
            kpath = f"{path}.matchLabels.{key}"
            source, bare = _parse_key(key, kpath, default_source=default_source, prefix=key_prefix)
            if value is None:
                value = ""  # Cilium writes reserved labels as `reserved:host: ""`, YAML may drop the quotes
            if not isinstance(value, str):
                raise _err(f"label value must be a string (quote it in YAML), got {value!r}", kpath)
            err = label_value_error(value)
            if err:
                raise _err(err, kpath)
            reqs.append(Requirement(source, bare, OP_IN, (value,)))
    for i, expr in enumerate(_list(obj.get("matchExpressions"), _join(path, "matchExpressions"))):
        epath = f"{path}.matchExpressions[{i}]"
        _fields(expr, epath, ("key", "operator", "values"))
        if "key" not in expr:
            raise _err("required field is missing", _join(epath, "key"))
        if "operator" not in expr:
            raise _err("required field is missing", _join(epath, "operator"))
        source, bare = _parse_key(expr["key"], _join(epath, "key"), default_source=default_source, prefix=key_prefix)
        op = expr["operator"]
        if op not in OPERATORS:
            raise _err(f"unknown operator {op!r} (one of {', '.join(OPERATORS)})", _join(epath, "operator"))
        values = _list(expr.get("values"), _join(epath, "values"))
        if op in (OP_IN, OP_NOT_IN) and not values:
            raise _err(f"operator {op} needs at least one value", _join(epath, "values"))
        if op in (OP_EXISTS, OP_DOES_NOT_EXIST) and values:
            raise _err(f"operator {op} takes no values", _join(epath, "values"))
        for j, v in enumerate(values):
            vpath = f"{epath}.values[{j}]"
            if not isinstance(v, str):
                raise _err(f"label value must be a string (quote it in YAML), got {v!r}", vpath)
            err = label_value_error(v)
            if err:
                raise _err(err, vpath)
        reqs.append(Requirement(source, bare, op, tuple(sorted(set(values)))))
    return reqs


def _names_namespace(reqs: list[Requirement]) -> bool:
    return any(r.key == NAMESPACE_KEY and r.source in (SOURCE_K8S, SOURCE_ANY) for r in reqs)


def _names_reserved(reqs: list[Requirement]) -> bool:
    return any(r.source == SOURCE_RESERVED for r in reqs)


def _managed(reqs: list[Requirement]) -> list[Requirement]:
    """Restrict to managed endpoints (identities that carry a namespace label)."""
    return reqs + [Requirement(SOURCE_K8S, NAMESPACE_KEY, OP_EXISTS)]


def scope_selector(reqs: list[Requirement], namespace: str | None) -> LabelSelector:
    """Cilium's implicit scoping: a CNP selector (namespace given) selects in its namespace unless it
    names the namespace itself; a CCNP selector (namespace None) selects managed endpoints anywhere.
    A selector naming a reserved label is left alone (it selects that reserved identity)."""
    if _names_reserved(reqs):
        out = reqs
    elif namespace is not None and not _names_namespace(reqs):
        out = reqs + [Requirement(SOURCE_K8S, NAMESPACE_KEY, OP_IN, (namespace,))]
    elif not _names_namespace(reqs):
        out = _managed(reqs)
    else:
        out = reqs
    return LabelSelector(tuple(sorted(set(out))))


# --- CIDRs, entities, ports -----------------------------------------------------------------------

def _parse_cidr(value: Any, path: str, *, allow_ip: bool) -> str:
    text = _str(value, path)
    try:
        if "/" not in text:
            if not allow_ip:
                raise ValueError("a prefix length is required (address/length)")
            return str(ipaddress.ip_network(text))
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError as exc:
        raise _err(f"invalid CIDR {text!r}: {exc}", path) from None


def _cidr_rule(obj: Any, path: str, *, cidr_key: str = "cidr") -> CIDRSelector:
    allowed = ("cidr", "except") if cidr_key == "cidr" and "cidrGroupRef" not in (obj or {}) else \
        ("cidr", "except", "cidrGroupRef", "cidrGroupSelector")
    _fields(obj, path, allowed)
    if "cidr" not in obj:
        raise _err("required field is missing", _join(path, "cidr"))
    cidr = _parse_cidr(obj["cidr"], _join(path, "cidr"), allow_ip=False)
    net = ipaddress.ip_network(cidr)
    excepts = []
    for i, ex in enumerate(_list(obj.get("except"), _join(path, "except"))):
        epath = f"{path}.except[{i}]"
        ex_cidr = _parse_cidr(ex, epath, allow_ip=False)
        ex_net = ipaddress.ip_network(ex_cidr)
        if ex_net.version != net.version or not ex_net.subnet_of(net):  # type: ignore[arg-type]
            raise _err(f"except {ex_cidr} is not inside cidr {cidr}", epath)
        excepts.append(ex_cidr)
    return CIDRSelector(cidr, tuple(sorted(set(excepts))))


def _parse_port_value(value: Any, path: str, *, allow_zero: bool) -> tuple[int, str | None]:
    if isinstance(value, bool) or value is None:
        raise _err(f"must be a port number or a port name, got {_tname(value)}", path)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        if value.isdigit():
            number = int(value)
        elif _SVC_NAME.match(value.lower()) and len(value) <= 15 and "--" not in value:
            return 0, value.lower()
        else:
            raise _err(f"invalid port {value!r}: a number 1-65535 or a port name (at most 15 lowercase "
                       "alphanumerics and '-', with a letter, no leading, trailing or double '-')", path)
    else:
        raise _err(f"must be a port number or a port name, got {_tname(value)}", path)
    if number == 0 and allow_zero:
        return 0, None
    if not 1 <= number <= 65535:
        lo = 0 if allow_zero else 1
        raise _err(f"port {number} is out of range ({lo}-65535)", path)
    return number, None


def _parse_end_port(obj: dict, path: str, port: int, name: str | None) -> int:
    if "endPort" not in obj or obj["endPort"] in (None, 0):
        return 0
    ep = obj["endPort"]
    epath = _join(path, "endPort")
    if isinstance(ep, bool) or not isinstance(ep, int):
        raise _err(f"must be an integer, got {_tname(ep)}", epath)
    if name is not None:
        raise _err("endPort cannot be used with a named port", epath)
    if port == 0:
        raise _err("endPort needs a numeric port", epath)
    if not 1 <= ep <= 65535:
        raise _err(f"endPort {ep} is out of range (1-65535)", epath)
    if ep < port:
        raise _err(f"endPort {ep} must not be less than port {port}", epath)
    return 0 if ep == port else ep


def _cilium_port(obj: Any, path: str) -> PortProtocol:
    _fields(obj, path, ("port", "endPort", "protocol"))
    port, name = 0, None
    if "port" in obj:  # absent or "0": every port (Cilium's wildcard port)
        port, name = _parse_port_value(obj["port"], _join(path, "port"), allow_zero=True)
    proto = Protocol.ANY
    if obj.get("protocol") is not None:
        text = _str(obj["protocol"], _join(path, "protocol"))
        proto_opt = PORT_PROTOCOLS.get(text.upper())
        if proto_opt is None:
            raise _err(f"unknown protocol {text!r} (one of TCP, UDP, SCTP, ANY)", _join(path, "protocol"))
        proto = proto_opt
    end = _parse_end_port(obj, path, port, name)
    return PortProtocol(port=port, end_port=end, protocol=proto, name=name)


@functools.cache
def re2_options():
    """One shared, never modified RE2 options object: errors are reported to the user with the field path,
    not logged to stderr."""
    import re2  # google-re2: the same engine Envoy uses, so what passes here passes there

    opts = re2.Options()
    opts.log_errors = False
    return opts


def _re2_program(text: str) -> tuple[int, str | None]:
    """(RE2 program size, error) of `text` compiled as Envoy compiles it. The `re2` module's compile()
    rebuilds an Options object attribute by attribute on every call (~25 us, more than the compile
    itself): compile through its extension type directly when it has one (~10 us)."""
    import re2

    raw = getattr(re2, "_re2", None)
    if raw is not None and hasattr(raw, "RE2"):
        compiled = raw.RE2(text.encode("utf-8"), re2_options())
        if not compiled.ok():
            return 0, _reason(compiled.error())
        return int(compiled.ProgramSize()), None
    try:
        return int(getattr(re2.compile(text, options=re2_options()), "programsize", 0)), None
    except Exception as exc:  # re2.error carries bytes
        return 0, _reason(exc.args[0] if exc.args else exc)


def _reason(reason: Any) -> str:
    return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)


@functools.lru_cache(maxsize=16384)
def _regex_problem(text: str) -> str | None:
    """Why Envoy would refuse `text` as an RE2 rule pattern, or None. Pure, so memoized: a policy
    of 1,000 rules is re-applied with mostly the same patterns."""
    size, error = _re2_program(text)
    if error is not None:
        return f"invalid RE2 regex {text!r}: {error}"
    # Envoy refuses regexes whose RE2 program is larger than 100: reject them here, with the path,
    # instead of a NACK later (literals are sent as exact matches and never compiled by Envoy).
    if size > 100:
        from xdsserver.translate.validate import MAX_REGEX_PROGRAM_SIZE, is_literal
        if size > MAX_REGEX_PROGRAM_SIZE and not is_literal(text):
            return (f"regex {text!r} is too complex for Envoy (RE2 program size {size} > "
                    f"{MAX_REGEX_PROGRAM_SIZE}): simplify it or split it into several rules")
    return None


def _check_regex(value: Any, path: str) -> str:
    text = _str(value, path, allow_empty=True)
    problem = _regex_problem(text)
    if problem is not None:
        raise _err(problem, path)
    return text


_SIMPLE_HTTP_FIELDS = frozenset(("method", "path", "host"))
_SIMPLE_HTTP_RULES: dict[tuple[str | None, str | None, str | None], HTTPRule] = {}


def _http_rule(obj: Any, path: str) -> HTTPRule:
    """A rule of method/path/host strings only (nearly all of them) is validated once per distinct rule:
    large policies are re-applied with mostly the same rules, and HTTPRule is immutable."""
    if type(obj) is dict and obj.keys() <= _SIMPLE_HTTP_FIELDS:
        key = (obj.get("method"), obj.get("path"), obj.get("host"))
        if all(v is None or type(v) is str for v in key):
            rule = _SIMPLE_HTTP_RULES.get(key)  # type: ignore[arg-type]
            if rule is None:
                rule = _http_rule_checked(obj, path)
                if len(_SIMPLE_HTTP_RULES) >= 16384:  # bounded: rules come from policies, which churn
                    _SIMPLE_HTTP_RULES.clear()
                _SIMPLE_HTTP_RULES[key] = rule  # type: ignore[index]
            return rule
    return _http_rule_checked(obj, path)


def _http_rule_checked(obj: Any, path: str) -> HTTPRule:
    _fields(obj, path, ("method", "path", "host", "headers", "headerMatches"))
    method = _check_regex(obj["method"], _join(path, "method")) if obj.get("method") is not None else None
    hpath = _check_regex(obj["path"], _join(path, "path")) if obj.get("path") is not None else None
    host = _check_regex(obj["host"], _join(path, "host")) if obj.get("host") is not None else None
    headers = []
    for i, h in enumerate(_list(obj.get("headers"), _join(path, "headers"))):
        hp = f"{path}.headers[{i}]"
        text = _str(h, hp)
        name = text.partition(":")[0].strip()
        if not name or any(c.isspace() for c in name):
            raise _err(f"header {text!r} must be 'Name' or 'Name: value'", hp)
        headers.append(text)
    matches = []
    for i, m in enumerate(_list(obj.get("headerMatches"), _join(path, "headerMatches"))):
        mp = f"{path}.headerMatches[{i}]"
        _fields(m, mp, ("name", "value", "mismatch", "secret"))
        if "name" not in m:
            raise _err("required field is missing", _join(mp, "name"))
        name = _str(m["name"], _join(mp, "name"))
        value = _str(m.get("value", ""), _join(mp, "value"), allow_empty=True)
        mismatch = m.get("mismatch")
        if mismatch is not None and mismatch not in ("LOG", "ADD", "DELETE", "REPLACE"):
            raise _err(f"unknown mismatch action {mismatch!r} (one of LOG, ADD, DELETE, REPLACE)",
                       _join(mp, "mismatch"))
        matches.append(HeaderMatch(name, value, mismatch))
    return HTTPRule(method, hpath, host, tuple(headers), tuple(matches))


def _kafka_rule(obj: Any, path: str) -> KafkaRule:
    _fields(obj, path, ("role", "apiKey", "apiVersion", "clientID", "topic"))
    role = obj.get("role") or None
    api_key = obj.get("apiKey") or None
    if role is not None and api_key is not None:
        raise _err(f"role {role!r} and apiKey {api_key!r} cannot both be set", _join(path, "apiKey"))
    keys: frozenset[int] = frozenset()
    if role is not None:
        role = _str(role, _join(path, "role")).lower()
        if role not in kafka_tables.KAFKA_ROLE_API_KEYS:
            raise _err(f"invalid Kafka role {obj['role']!r} (produce or consume)", _join(path, "role"))
        keys = kafka_tables.KAFKA_ROLE_API_KEYS[role]
    if api_key is not None:
        api_key = _str(api_key, _join(path, "apiKey")).lower()
        number = kafka_tables.api_key_number(api_key)
        if number is None:
            raise _err(f"unknown Kafka apiKey {obj['apiKey']!r} (Cilium's names: produce, fetch, offsets, "
                       "metadata, offsetcommit, ...; see mesh/policy/kafka.py)", _join(path, "apiKey"))
        keys = frozenset({number})
    version = None
    if obj.get("apiVersion") not in (None, ""):
        raw = obj["apiVersion"]
        vpath = _join(path, "apiVersion")
        if isinstance(raw, bool) or not isinstance(raw, (int, str)) or (isinstance(raw, str) and not raw.isdigit()):
            raise _err(f"invalid Kafka apiVersion {raw!r} (a number 0-32767)", vpath)
        version = int(raw)
        if version > 32767:
            raise _err(f"invalid Kafka apiVersion {raw!r} (a number 0-32767)", vpath)
    client_id = None
    if obj.get("clientID") not in (None, ""):
        client_id = _str(obj["clientID"], _join(path, "clientID"))
    topic = None
    if obj.get("topic") not in (None, ""):
        topic = _str(obj["topic"], _join(path, "topic"))
        if len(topic) > kafka_tables.MAX_TOPIC_LEN:
            raise _err(f"Kafka topic is longer than {kafka_tables.MAX_TOPIC_LEN} characters", _join(path, "topic"))
        if not set(topic) <= kafka_tables.TOPIC_CHARS:
            raise _err(f"invalid Kafka topic {topic!r} (letters, digits, '.', '_' and '-')", _join(path, "topic"))
    return KafkaRule(role, api_key, version, client_id, topic, keys)


def _cilium_port_rule(obj: Any, path: str, *, deny: bool, ingress: bool) -> PortRule:
    if deny:
        if isinstance(obj, dict) and "rules" in obj:
            raise _err("L7 rules are not allowed in deny rules (Cilium's deny toPorts take ports only)",
                       _join(path, "rules"))
        _fields(obj, path, ("ports",))
    else:
        _fields(obj, path, ("ports", "rules", "serverNames", "terminatingTLS", "originatingTLS", "listener"))
    ports = tuple(_cilium_port(p, f"{path}.ports[{i}]") for i, p in enumerate(_list(obj.get("ports"),
                                                                                     _join(path, "ports"))))
    http = kafka = None
    rules = obj.get("rules")
    if rules is not None:
        rpath = _join(path, "rules")
        _fields(rules, rpath, ("http", "kafka", "dns", "l7proto", "l7"))
        if "http" in rules and "kafka" in rules:
            raise _err("http and kafka rules cannot be combined in one port rule (one L7 protocol per port)",
                       rpath)
        if "http" in rules:
            http = tuple(_http_rule(r, f"{rpath}.http[{i}]") for i, r in enumerate(_list(rules["http"],
                                                                                           _join(rpath, "http"))))
        if "kafka" in rules:
            kafka = tuple(_kafka_rule(r, f"{rpath}.kafka[{i}]") for i, r in enumerate(_list(rules["kafka"],
                                                                                              _join(rpath, "kafka"))))
        if http is not None or kafka is not None:
            if not ports:
                raise _err("L7 rules need at least one port", _join(path, "ports"))
            for i, p in enumerate(ports):
                ppath = f"{path}.ports[{i}]"
                if p.port == 0 and p.name is None:
                    raise _err("L7 rules cannot be used when a port is 0 (every port)", _join(ppath, "port"))
                if p.protocol != Protocol.TCP:
                    raise _err(f"L7 rules apply to TCP only, not {p.protocol.name} (set protocol: TCP)",
                               _join(ppath, "protocol"))
    return PortRule(ports, http, kafka)


def _icmps(value: Any, path: str) -> list[PortRule]:
    out = []
    for i, entry in enumerate(_list(value, path)):
        epath = f"{path}[{i}]"
        _fields(entry, epath, ("fields",))
        ports = []
        for j, f in enumerate(_list(entry.get("fields"), _join(epath, "fields"))):
            fpath = f"{epath}.fields[{j}]"
            _fields(f, fpath, ("type", "family"))
            family = f.get("family") or "IPv4"
            if family not in ("IPv4", "IPv6"):
                raise _err(f"unknown family {family!r} (IPv4 or IPv6)", _join(fpath, "family"))
            names = _ICMP_TYPES_V4 if family == "IPv4" else _ICMP_TYPES_V6
            t = f.get("type")
            if isinstance(t, str) and not t.isdigit():
                if t not in names:
                    raise _err(f"unknown {family} ICMP type {t!r} (one of {', '.join(sorted(names))})",
                               _join(fpath, "type"))
                number = names[t]
            elif isinstance(t, (int, str)) and not isinstance(t, bool):
                number = int(t)
                if not 0 <= number <= 255:
                    raise _err(f"ICMP type {number} is out of range (0-255)", _join(fpath, "type"))
            else:
                raise _err(f"must be an ICMP type number or name, got {_tname(t)}", _join(fpath, "type"))
            proto = Protocol.ICMP if family == "IPv4" else Protocol.ICMPV6
            ports.append(PortProtocol(port=number, protocol=proto))
        if ports:
            out.append(PortRule(tuple(ports)))
    return out


# --- Cilium rules ---------------------------------------------------------------------------------

def _cilium_item(obj: Any, path: str, *, direction: Direction, deny: bool, namespace: str | None,
                 ref: RuleRef) -> RuleItem:
    ingress = direction == Direction.INGRESS
    allowed = _INGRESS_FIELDS if ingress else _EGRESS_FIELDS
    _fields(obj, path, allowed)
    ep_key, cidr_key, set_key, ent_key = (("fromEndpoints", "fromCIDR", "fromCIDRSet", "fromEntities") if ingress
                                          else ("toEndpoints", "toCIDR", "toCIDRSet", "toEntities"))
    peers: list[Selector] = []
    for i, sel in enumerate(_list(obj.get(ep_key), _join(path, ep_key))):
        reqs = parse_label_selector(sel, f"{path}.{ep_key}[{i}]")
        peers.append(scope_selector(reqs, namespace))
    for i, c in enumerate(_list(obj.get(cidr_key), _join(path, cidr_key))):
        peers.append(CIDRSelector(_parse_cidr(c, f"{path}.{cidr_key}[{i}]", allow_ip=True)))
    for i, c in enumerate(_list(obj.get(set_key), _join(path, set_key))):
        peers.append(_cidr_rule(c, f"{path}.{set_key}[{i}]"))
    for i, e in enumerate(_list(obj.get(ent_key), _join(path, ent_key))):
        epath = f"{path}.{ent_key}[{i}]"
        if not isinstance(e, str) or e not in ENTITIES:
            raise _err(f"unknown entity {e!r} (one of {', '.join(sorted(ENTITIES))})", epath)
        peers.append(ALL if e == "all" else EntitySelector(e))
    to_ports = [_cilium_port_rule(p, f"{path}.toPorts[{i}]", deny=deny, ingress=ingress)
                for i, p in enumerate(_list(obj.get("toPorts"), _join(path, "toPorts")))]
    if obj.get("icmps"):
        if to_ports:
            raise _err("icmps and toPorts cannot be in the same rule: write two rules", _join(path, "icmps"))
        to_ports = _icmps(obj["icmps"], _join(path, "icmps"))
    if not peers and to_ports:
        peers = [ALL]  # an L4-only rule: any peer on these ports
    # Dedupe peers, keep order (it shows in traces).
    seen: dict[Selector, None] = dict.fromkeys(peers)
    return RuleItem(direction, deny, tuple(seen), tuple(to_ports), ref)


def _cilium_spec(spec: Any, path: str, *, kind: str, namespace: str, name: str, clusterwide: bool) -> Rule:
    _fields(spec, path, _SPEC_FIELDS)
    if "endpointSelector" not in spec:
        if "nodeSelector" in spec:
            raise _err(_UNSUPPORTED["nodeSelector"], _join(path, "nodeSelector"))
        raise _err("required field is missing", _join(path, "endpointSelector"))
    scope_ns = None if clusterwide else namespace
    subject = scope_selector(parse_label_selector(spec["endpointSelector"], _join(path, "endpointSelector")),
                             scope_ns)
    if spec.get("labels") is not None:
        _list(spec["labels"], _join(path, "labels"))
    if spec.get("description") is not None:
        _str(spec["description"], _join(path, "description"), allow_empty=True)
    items: list[RuleItem] = []
    counts = {}
    for section, direction, deny in (("ingress", Direction.INGRESS, False), ("ingressDeny", Direction.INGRESS, True),
                                     ("egress", Direction.EGRESS, False), ("egressDeny", Direction.EGRESS, True)):
        entries = _list(spec.get(section), _join(path, section))
        counts[section] = len(entries)
        for i, entry in enumerate(entries):
            ipath = f"{path}.{section}[{i}]"
            items.append(_cilium_item(entry, ipath, direction=direction, deny=deny, namespace=scope_ns,
                                      ref=RuleRef(kind, namespace, name, ipath)))
    # Cilium: a rule with any ingress (or ingressDeny) entry puts its endpoints in ingress default deny,
    # unless enableDefaultDeny says otherwise.
    enforce_in = counts["ingress"] > 0 or counts["ingressDeny"] > 0
    enforce_eg = counts["egress"] > 0 or counts["egressDeny"] > 0
    edd = spec.get("enableDefaultDeny")
    if edd is not None:
        epath = _join(path, "enableDefaultDeny")
        _fields(edd, epath, ("ingress", "egress"))
        # An explicit value wins both ways (Cilium only defaults the fields left unset).
        if edd.get("ingress") is not None:
            enforce_in = _bool(edd["ingress"], _join(epath, "ingress"))
        if edd.get("egress") is not None:
            enforce_eg = _bool(edd["egress"], _join(epath, "egress"))
    return Rule(subject, enforce_in, enforce_eg, tuple(items), RuleRef(kind, namespace, name, path))


def parse_cilium_policy(doc: Document, *, clusterwide: bool) -> Policy:
    body = doc.body
    kind = doc.kind
    _fields(body, "", ("apiVersion", "kind", "metadata", "spec", "specs", "status"))
    namespace, name = _metadata(body, namespaced=not clusterwide)
    if body.get("spec") is None and body.get("specs") is None:
        raise _err("a policy needs spec or specs", "spec")
    rules: list[Rule] = []
    if body.get("spec") is not None:
        rules.append(_cilium_spec(body["spec"], "spec", kind=kind, namespace=namespace, name=name,
                                  clusterwide=clusterwide))
    for i, spec in enumerate(_list(body.get("specs"), "specs")):
        rules.append(_cilium_spec(spec, f"specs[{i}]", kind=kind, namespace=namespace, name=name,
                                  clusterwide=clusterwide))
    return Policy(kind, namespace, name, tuple(rules), doc.api_version, body)


def _metadata(body: dict, *, namespaced: bool) -> tuple[str, str]:
    meta = body.get("metadata")
    if not isinstance(meta, dict):
        raise _err("must be a mapping with a name", "metadata")
    name = meta.get("name")
    err = name_error(name, "name") if not (isinstance(name, str) and 0 < len(name) <= 253 and
                                           re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", name)) else None
    if err or not isinstance(name, str):
        raise _err(err or "name must be a non-empty string", "metadata.name")
    if not namespaced:
        if meta.get("namespace"):
            raise _err("a cluster-wide policy has no namespace", "metadata.namespace")
        return "", name
    ns = meta.get("namespace", "default")
    err = name_error(ns, "namespace")
    if err:
        raise _err(err, "metadata.namespace")
    return ns, name


# --- Kubernetes NetworkPolicy ---------------------------------------------------------------------

def _knp_peer(obj: Any, path: str, namespace: str) -> Selector:
    _fields(obj, path, ("podSelector", "namespaceSelector", "ipBlock"))
    if not obj:
        raise _err("a peer needs podSelector, namespaceSelector or ipBlock", path)
    if "ipBlock" in obj:
        if len(obj) > 1:
            raise _err("ipBlock cannot be combined with podSelector or namespaceSelector in one peer",
                       _join(path, "ipBlock"))
        return _cidr_rule(obj["ipBlock"], _join(path, "ipBlock"))
    reqs: list[Requirement] = []
    if "podSelector" in obj:
        reqs += parse_label_selector(obj["podSelector"], _join(path, "podSelector"), default_source=SOURCE_K8S)
    if "namespaceSelector" in obj:
        ns_reqs = parse_label_selector(obj["namespaceSelector"], _join(path, "namespaceSelector"),
                                       default_source=SOURCE_K8S, key_prefix=NAMESPACE_LABELS_PREFIX)
        # An empty namespaceSelector means every namespace: every managed endpoint.
        reqs += ns_reqs + [Requirement(SOURCE_K8S, NAMESPACE_KEY, OP_EXISTS)]
        return LabelSelector(tuple(sorted(set(reqs))))
    return LabelSelector(tuple(sorted(set(reqs + [Requirement(SOURCE_K8S, NAMESPACE_KEY, OP_IN, (namespace,))]))))


def _knp_port(obj: Any, path: str) -> PortProtocol:
    _fields(obj, path, ("protocol", "port", "endPort"))
    proto = Protocol.TCP
    if obj.get("protocol") is not None:
        text = obj["protocol"]
        if text not in ("TCP", "UDP", "SCTP"):
            raise _err(f"unknown protocol {text!r} (one of TCP, UDP, SCTP)", _join(path, "protocol"))
        proto = PORT_PROTOCOLS[text]
    port, name = 0, None
    if obj.get("port") is not None:
        port, name = _parse_port_value(obj["port"], _join(path, "port"), allow_zero=False)
    elif obj.get("endPort") is not None:
        raise _err("endPort needs port", _join(path, "endPort"))
    end = _parse_end_port(obj, path, port, name)
    return PortProtocol(port=port, end_port=end, protocol=proto, name=name)


def parse_k8s_network_policy(doc: Document) -> Policy:
    body = doc.body
    _fields(body, "", ("apiVersion", "kind", "metadata", "spec", "status"))
    namespace, name = _metadata(body, namespaced=True)
    kind = doc.kind
    spec = body.get("spec")
    if spec is None:
        raise _err("required field is missing", "spec")
    _fields(spec, "spec", ("podSelector", "policyTypes", "ingress", "egress"))
    if "podSelector" not in spec:
        raise _err("required field is missing (use {} to select every pod of the namespace)", "spec.podSelector")
    subject_reqs = parse_label_selector(spec["podSelector"], "spec.podSelector", default_source=SOURCE_K8S)
    subject = LabelSelector(tuple(sorted(set(subject_reqs + [Requirement(SOURCE_K8S, NAMESPACE_KEY, OP_IN,
                                                                          (namespace,))]))))
    types_raw = spec.get("policyTypes")
    if types_raw is None:
        # Kubernetes' default: Ingress always, Egress when the policy has an egress section.
        types = {"Ingress"} | ({"Egress"} if spec.get("egress") else set())
    else:
        types = set()
        for i, t in enumerate(_list(types_raw, "spec.policyTypes")):
            if t not in ("Ingress", "Egress"):
                raise _err(f"unknown policy type {t!r} (Ingress or Egress)", f"spec.policyTypes[{i}]")
            if t in types:
                raise _err(f"policy type {t} is listed twice", f"spec.policyTypes[{i}]")
            types.add(t)
    items: list[RuleItem] = []
    for section, peer_key, direction in (("ingress", "from", Direction.INGRESS), ("egress", "to", Direction.EGRESS)):
        entries = _list(spec.get(section), f"spec.{section}")
        for i, entry in enumerate(entries):
            ipath = f"spec.{section}[{i}]"
            if entry is None:
                entry = {}
            _fields(entry, ipath, (peer_key, "ports"))
            peers_raw = _list(entry.get(peer_key), _join(ipath, peer_key))
            peers = [_knp_peer(p, f"{ipath}.{peer_key}[{j}]", namespace) for j, p in enumerate(peers_raw)] or [ALL]
            ports = [_knp_port(p, f"{ipath}.ports[{j}]") for j, p in enumerate(_list(entry.get("ports"),
                                                                                    _join(ipath, "ports")))]
            to_ports = (PortRule(tuple(ports)),) if ports else ()
            cap = section.capitalize()
            if cap not in types:
                # Kubernetes ignores rules of a direction the policy does not list in policyTypes.
                continue
            items.append(RuleItem(direction, False, tuple(dict.fromkeys(peers)), to_ports,
                                  RuleRef(kind, namespace, name, ipath)))
    rule = Rule(subject, "Ingress" in types, "Egress" in types, tuple(items), RuleRef(kind, namespace, name, "spec"))
    return Policy(kind, namespace, name, (rule,), doc.api_version, body)


def parse_policy(doc: Document) -> Policy:
    """Dispatch on apiVersion/kind; errors name the document."""
    try:
        api, kind = doc.api_version, doc.kind
        if api == K8S_API and kind == KIND_KNP:
            return parse_k8s_network_policy(doc)
        if (api, kind) in ((CILIUM_API, KIND_CNP), (OSTIUM_API, KIND_KNP)):
            return parse_cilium_policy(doc, clusterwide=False)
        if (api, kind) in ((CILIUM_API, KIND_CCNP), (OSTIUM_API, KIND_OSTIUM_CCNP)):
            return parse_cilium_policy(doc, clusterwide=True)
        raise _err(f"not a policy kind: {api}/{kind}", "kind")
    except ValidationError as exc:
        if exc.document:
            raise
        raise exc.with_document(doc.ref) from None


POLICY_KINDS: tuple[tuple[str, str, bool], ...] = (
    (CILIUM_API, KIND_CNP, True),
    (CILIUM_API, KIND_CCNP, False),
    (K8S_API, KIND_KNP, True),
    (OSTIUM_API, KIND_KNP, True),
    (OSTIUM_API, KIND_OSTIUM_CCNP, False),
)
CLUSTERWIDE_KINDS = frozenset({KIND_CCNP, KIND_OSTIUM_CCNP})
