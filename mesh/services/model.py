"""Service model: what a `v1 Service` asks for, and the frontends the datapath programs.

A Service (clusterIP, ports, selector, sessionAffinity) resolves against endpoints into one
Frontend per port: VIP:port/protocol -> weighted backends. Resolution is pure (no I/O); the
datapath turns frontends into map entries.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132}
DEFAULT_AFFINITY_TIMEOUT = 10800  # Kubernetes' default sessionAffinityConfig.clientIP.timeoutSeconds


class SessionAffinity(enum.Enum):
    NONE = "None"
    CLIENT_IP = "ClientIP"


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int
    protocol: str = "TCP"
    target_port: int | str = 0   # a number, or the name of an endpoint port; 0 = same as port
    name: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "port": self.port, "protocol": self.protocol,
                "targetPort": self.target_port or self.port}


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    namespace: str
    cluster_ip: str
    ports: tuple[ServicePort, ...]
    selector: dict[str, str] = field(default_factory=dict)
    session_affinity: SessionAffinity = SessionAffinity.NONE
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "namespace": self.namespace, "clusterIP": self.cluster_ip,
            "ports": [p.to_json() for p in self.ports], "selector": dict(self.selector),
            "sessionAffinity": self.session_affinity.value,
            "affinityTimeoutSeconds": self.affinity_timeout, "labels": dict(self.labels),
        }


@dataclass(frozen=True, slots=True, order=True)
class Backend:
    ip: str
    port: int
    weight: int = 1
    endpoint: str = ""   # "namespace/name" of the endpoint, for display


@dataclass(frozen=True, slots=True)
class Frontend:
    """One VIP:port/protocol with its backends: the unit the datapath programs."""

    vip: str
    port: int
    protocol: str
    backends: tuple[Backend, ...] = ()
    affinity_timeout: int = 0     # seconds; 0 = no session affinity
    service: str = ""             # "namespace/name" for display

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.vip, self.port, self.protocol)

    def to_json(self) -> dict[str, Any]:
        return {
            "frontend": f"{self.vip}:{self.port}/{self.protocol}", "service": self.service,
            "affinityTimeoutSeconds": self.affinity_timeout,
            "backends": [{"ip": b.ip, "port": b.port, "weight": b.weight, "endpoint": b.endpoint}
                         for b in self.backends],
        }


@dataclass(frozen=True, slots=True)
class EndpointPort:
    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class BackendCandidate:
    """What backend selection needs to know about an endpoint."""

    namespace: str
    name: str
    labels: dict[str, str]
    ip: str
    ports: tuple[EndpointPort, ...] = ()
    ready: bool = True
    weight: int = 1
