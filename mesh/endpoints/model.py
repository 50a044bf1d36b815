"""Endpoint model: what the user asks for (EndpointSpec) and what the agent knows (Endpoint)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class NamedPort:
    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    name: str
    namespace: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    ip: str | None = None
    command: tuple[str, ...] = ()
    ports: tuple[NamedPort, ...] = ()
    service_account: str | None = None

    @property
    def key(self) -> str:
        # '.' cannot appear in a namespace or a name (DNS-1123 labels), so the key is unique.
        return f"{self.namespace}.{self.name}"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["command"] = list(self.command)
        d["ports"] = [asdict(p) for p in self.ports]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "EndpointSpec":
        return cls(name=d["name"], namespace=d.get("namespace", "default"), labels=dict(d.get("labels") or {}),
                   ip=d.get("ip"), command=tuple(d.get("command") or ()),
                   ports=tuple(NamedPort(**p) for p in d.get("ports") or ()),
                   service_account=d.get("service_account"))


@dataclass(slots=True)
class Endpoint:
    """An endpoint as the agent tracks it (persisted as JSON in the state store)."""

    id: int
    spec: EndpointSpec
    ip: str
    netns: str
    host_ifname: str
    host_ifindex: int
    cgroup_path: str
    mac: str = ""
    identity: int = 0
    state: str = "ready"  # creating | ready | not-ready | deleting
    state_reason: str = ""
    pids: list[int] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def namespace(self) -> str:
        return self.spec.namespace

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.spec.name, "namespace": self.spec.namespace,
            "labels": dict(self.spec.labels), "ip": self.ip, "identity": self.identity,
            "netns": self.netns, "interface": self.host_ifname, "ifindex": self.host_ifindex,
            "cgroup": self.cgroup_path, "mac": self.mac, "state": self.state, "reason": self.state_reason,
            "spec": self.spec.to_json(), "pids": list(self.pids),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Endpoint":
        return cls(id=d["id"], spec=EndpointSpec.from_json(d["spec"]), ip=d["ip"], netns=d["netns"],
                   host_ifname=d["interface"], host_ifindex=d.get("ifindex", 0), cgroup_path=d["cgroup"],
                   mac=d.get("mac", ""), identity=d.get("identity", 0), state=d.get("state", "ready"),
                   state_reason=d.get("reason", ""), pids=list(d.get("pids") or []))
