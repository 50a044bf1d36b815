"""`ostium.io/v1alpha1 Endpoint` and `v1 Namespace` manifests."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from mesh.endpoints.model import EndpointSpec, NamedPort
from mesh.errors import ValidationError
from mesh.labels import is_dns_subdomain, name_error, validate_labels
from mesh.manifests import Document, check_fields, expect_type, parse_metadata, register_kind

PROTOCOLS = ("TCP", "UDP", "SCTP")


def _port_name_error(name: object) -> str | None:
    # Kubernetes IANA_SVC_NAME: at most 15 lowercase alphanumerics or '-', at least one letter, no '--'.
    if not isinstance(name, str) or not name:
        return "port name must be a non-empty string"
    if len(name) > 15 or not all(c.islower() or c.isdigit() or c == "-" for c in name) \
            or not any(c.isalpha() for c in name) or "--" in name or name[0] == "-" or name[-1] == "-":
        return (f"port name {name!r} must be at most 15 lowercase alphanumerics or '-', with at least one "
                "letter, not starting or ending with '-'")
    return None


def parse_endpoint_spec(name: str, namespace: str, labels: dict, spec: object, path: str = "spec") -> EndpointSpec:
    err = name_error(name, "endpoint name")
    if err:
        raise ValidationError(err, path="metadata.name")
    spec = spec if spec is not None else {}
    check_fields(spec, path, ("ip", "command", "ports", "serviceAccount", "serviceAccountName"))
    ip = spec.get("ip")
    if ip is not None:
        expect_type(ip, str, f"{path}.ip", "an IPv4 address string")
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise ValidationError(f"{ip!r} is not an IP address", path=f"{path}.ip") from None
        if addr.version != 4:
            raise ValidationError(f"{ip} is IPv6; endpoints get IPv4 addresses", path=f"{path}.ip")
        ip = str(addr)
    command = spec.get("command")
    cmd: tuple[str, ...] = ()
    if command is not None:
        if isinstance(command, str):
            if not command.strip():
                raise ValidationError("must not be empty", path=f"{path}.command")
            cmd = ("/bin/sh", "-c", command)
        elif isinstance(command, list) and command and all(isinstance(c, str) for c in command):
            cmd = tuple(command)
        else:
            raise ValidationError("must be a string or a non-empty list of strings", path=f"{path}.command")
    ports: list[NamedPort] = []
    raw_ports = spec.get("ports")
    if raw_ports is not None:
        expect_type(raw_ports, list, f"{path}.ports", "a list")
        seen: set[str] = set()
        for i, p in enumerate(raw_ports):
            pp = f"{path}.ports[{i}]"
            check_fields(p, pp, ("name", "port", "containerPort", "protocol"))
            pname = p.get("name")
            err = _port_name_error(pname)
            if err:
                raise ValidationError(err, path=f"{pp}.name")
            if pname in seen:
                raise ValidationError(f"port name {pname!r} is used twice", path=f"{pp}.name")
            seen.add(pname)
            number = p.get("port", p.get("containerPort"))
            if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
                raise ValidationError(f"must be an integer from 1 to 65535, got {number!r}", path=f"{pp}.port")
            proto = p.get("protocol", "TCP")
            if proto not in PROTOCOLS:
                raise ValidationError(f"must be one of {', '.join(PROTOCOLS)}, got {proto!r}", path=f"{pp}.protocol")
            ports.append(NamedPort(pname, number, proto))
    sa = spec.get("serviceAccount", spec.get("serviceAccountName"))
    if sa is not None and (not isinstance(sa, str) or not is_dns_subdomain(sa)):
        raise ValidationError(f"service account {sa!r} must be a DNS subdomain", path=f"{path}.serviceAccount")
    return EndpointSpec(name=name, namespace=namespace, labels=dict(labels), ip=ip, command=cmd,
                        ports=tuple(ports), service_account=sa)


def _parse_endpoint(doc: Document) -> EndpointSpec:
    body = doc.body
    check_fields(body, "", ("apiVersion", "kind", "metadata", "spec", "status"))
    meta = parse_metadata(body, name_check=lambda n: name_error(n, "endpoint name"))
    return parse_endpoint_spec(meta.name, meta.namespace, meta.labels, body.get("spec"))


@dataclass(frozen=True, slots=True)
class NamespaceSpec:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    namespace: str = ""


def _parse_namespace(doc: Document) -> NamespaceSpec:
    body = doc.body
    check_fields(body, "", ("apiVersion", "kind", "metadata", "spec", "status"))
    meta = parse_metadata(body, namespaced=False, name_check=lambda n: name_error(n, "namespace name"))
    labels = dict(meta.labels)
    labels["kubernetes.io/metadata.name"] = meta.name  # Kubernetes sets it and it cannot be changed
    return NamespaceSpec(name=meta.name, labels=labels)


register_kind(["ostium.io/v1alpha1"], "Endpoint", _parse_endpoint)
register_kind(["v1"], "Namespace", _parse_namespace, namespaced=False)
