"""`v1 Service` manifests (type ClusterIP; selector, ports, sessionAffinity)."""

from __future__ import annotations

import ipaddress

from mesh.errors import ConflictError, ValidationError
from mesh.labels import name_error, validate_labels
from mesh.manifests import Document, check_fields, expect_type, parse_metadata, register_kind
from mesh.services.model import (DEFAULT_AFFINITY_TIMEOUT, PROTOCOL_NUMBERS, Service, ServicePort,
                                 SessionAffinity)

_SPEC_FIELDS = ("clusterIP", "clusterIPs", "type", "selector", "ports", "sessionAffinity",
                "sessionAffinityConfig", "ipFamilies", "ipFamilyPolicy", "internalTrafficPolicy",
                "publishNotReadyAddresses")
_LB_PROTOCOLS = ("TCP", "UDP")


def _int_port(value: object, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ValidationError(f"must be an integer from 1 to 65535, got {value!r}", path=path)
    return value


def parse_service_spec(name: str, namespace: str, labels: dict, spec: object) -> Service:
    if not isinstance(spec, dict):
        raise ValidationError("must be a mapping", path="spec")
    check_fields(spec, "spec", _SPEC_FIELDS, required=("ports",))
    stype = spec.get("type", "ClusterIP")
    if stype != "ClusterIP":
        raise ValidationError(f"only type ClusterIP is supported, got {stype!r}", path="spec.type")
    vip = spec.get("clusterIP")
    if vip is None:
        raise ValidationError("is required: standalone Ostium does not allocate service addresses",
                              path="spec.clusterIP")
    if vip == "None":
        raise ValidationError("headless services (clusterIP: None) are not load-balanced; omit the Service",
                              path="spec.clusterIP")
    expect_type(vip, str, "spec.clusterIP", "an IPv4 address string")
    try:
        addr = ipaddress.ip_address(vip)
    except ValueError:
        raise ValidationError(f"{vip!r} is not an IP address", path="spec.clusterIP") from None
    if addr.version != 4:
        raise ValidationError(f"{vip} is IPv6; only IPv4 services are supported", path="spec.clusterIP")
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback:
        raise ValidationError(f"{vip} cannot be a service address", path="spec.clusterIP")

    selector = spec.get("selector") or {}
    selector = validate_labels(selector, "spec.selector")

    raw_ports = expect_type(spec.get("ports"), list, "spec.ports", "a list")
    if not raw_ports:
        raise ValidationError("must list at least one port", path="spec.ports")
    ports: list[ServicePort] = []
    seen: dict[tuple[int, str], int] = {}
    names: set[str] = set()
    for i, p in enumerate(raw_ports):
        pp = f"spec.ports[{i}]"
        check_fields(p, pp, ("name", "port", "targetPort", "protocol", "appProtocol", "nodePort"),
                     required=("port",))
        port = _int_port(p.get("port"), f"{pp}.port")
        proto = p.get("protocol", "TCP")
        if proto not in PROTOCOL_NUMBERS:
            raise ValidationError(f"must be one of TCP, UDP, SCTP, got {proto!r}", path=f"{pp}.protocol")
        if proto not in _LB_PROTOCOLS:
            raise ValidationError(f"{proto} services are not load-balanced yet (TCP and UDP are)",
                                  path=f"{pp}.protocol")
        pname = p.get("name", "")
        if len(raw_ports) > 1 and not pname:
            raise ValidationError("is required when a service has more than one port", path=f"{pp}.name")
        if pname:
            err = name_error(pname, "port name")
            if err:
                raise ValidationError(err, path=f"{pp}.name")
            if pname in names:
                raise ValidationError(f"port name {pname!r} is used twice", path=f"{pp}.name")
            names.add(pname)
        if (port, proto) in seen:
            raise ValidationError(f"port {port}/{proto} is already listed at spec.ports[{seen[(port, proto)]}]",
                                  path=f"{pp}.port")
        seen[(port, proto)] = i
        target = p.get("targetPort", port)
        if isinstance(target, str):
            if target.isdigit():
                target = _int_port(int(target), f"{pp}.targetPort")
            else:
                err = name_error(target, "target port name")
                if err or len(target) > 15:
                    raise ValidationError(err or f"port name {target!r} is longer than 15 characters",
                                          path=f"{pp}.targetPort")
        else:
            target = _int_port(target, f"{pp}.targetPort")
        ports.append(ServicePort(port=port, protocol=proto, target_port=target, name=pname))

    aff_raw = spec.get("sessionAffinity", "None")
    try:
        affinity = SessionAffinity(aff_raw)
    except ValueError:
        raise ValidationError(f"must be None or ClientIP, got {aff_raw!r}", path="spec.sessionAffinity") from None
    timeout = DEFAULT_AFFINITY_TIMEOUT
    cfg = spec.get("sessionAffinityConfig")
    if cfg is not None:
        check_fields(cfg, "spec.sessionAffinityConfig", ("clientIP",))
        cip = cfg.get("clientIP") or {}
        check_fields(cip, "spec.sessionAffinityConfig.clientIP", ("timeoutSeconds",))
        t = cip.get("timeoutSeconds", DEFAULT_AFFINITY_TIMEOUT)
        if not isinstance(t, int) or isinstance(t, bool) or not 1 <= t <= 86400:
            raise ValidationError(f"must be an integer from 1 to 86400, got {t!r}",
                                  path="spec.sessionAffinityConfig.clientIP.timeoutSeconds")
        timeout = t
    return Service(name=name, namespace=namespace, cluster_ip=str(addr), ports=tuple(ports),
                   selector=selector, session_affinity=affinity, affinity_timeout=timeout,
                   labels=dict(labels))


def parse_service(doc: Document) -> Service:
    body = doc.body
    check_fields(body, "", ("apiVersion", "kind", "metadata", "spec", "status"))
    meta = parse_metadata(body, name_check=lambda n: name_error(n, "service name"))
    return parse_service_spec(meta.name, meta.namespace, meta.labels, body.get("spec"))


def check_vip_conflicts(services: list[Service]) -> None:
    """Two services may share a clusterIP only on different ports/protocols; Kubernetes allows
    none at all, so neither does Ostium. Raises ConflictError naming both services."""
    owner: dict[str, Service] = {}
    for s in services:
        other = owner.get(s.cluster_ip)
        if other is not None and other.key != s.key:
            raise ConflictError(
                f"service {s.namespace}/{s.name}: clusterIP {s.cluster_ip} is already used by "
                f"service {other.namespace}/{other.name}")
        owner[s.cluster_ip] = s


register_kind(["v1"], "Service", parse_service)
