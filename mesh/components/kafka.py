"""The Kafka-aware proxy inside the agent: two transparent listeners (ingress rules of the destination
endpoint, egress rules of the source endpoint) that the datapath redirects Kafka-rule flows to."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, Callable

from mesh.policy.model import Direction

if TYPE_CHECKING:
    from mesh.agent import Agent

log = logging.getLogger("ostium.kafka")

INGRESS_PORT_OFFSET = 3  # proxy_port_base + 3
EGRESS_PORT_OFFSET = 4   # proxy_port_base + 4
UPSTREAM_MARK = 0x1000   # like Envoy's: the datapath knows these connections were already enforced


class KafkaComponent:
    def __init__(self, agent: "Agent") -> None:
        self.agent = agent
        base = agent.config.proxy_port_base
        self.ports = {Direction.INGRESS: base + INGRESS_PORT_OFFSET, Direction.EGRESS: base + EGRESS_PORT_OFFSET}
        self.proxies: dict[Direction, Any] = {}
        self.record_hooks: list[Callable[[Any], None]] = []
        self.start_error = ""

    @property
    def proxy_ports(self) -> dict[str, int]:
        return {"kafka-ingress": self.ports[Direction.INGRESS], "kafka-egress": self.ports[Direction.EGRESS],
                "kafka": self.ports[Direction.INGRESS]}

    async def start(self) -> None:
        from l7parsers.kafkaproxy import KafkaProxy

        for direction, port in self.ports.items():
            proxy = KafkaProxy(policy_for=self._policy_for(direction), identity_for=self._identity_for,
                               on_record=self._on_record, listen=("127.0.0.1", port), transparent=True,
                               upstream_mark=UPSTREAM_MARK,
                               # egress rules name the destination: check requests against its identity
                               peer_is_destination=direction is Direction.EGRESS,
                               direction=direction.name.lower())
            try:
                await proxy.start()
            except OSError as exc:  # fail closed: the datapath refuses Kafka-rule flows without a listener
                self.start_error = f"Kafka proxy on 127.0.0.1:{port}: {exc}"
                log.error("Kafka proxy did not start; Kafka-rule flows are refused", extra={"error": str(exc)})
                continue
            self.proxies[direction] = proxy

    async def stop(self) -> None:
        for proxy in self.proxies.values():
            await proxy.close()

    def _identity_for(self, ip: str) -> int:
        return self.agent.identity.ipcache.lookup(ip)

    def _policy_for(self, direction: Direction):
        def policy_for(src_ip: str, dst_ip: str, dst_port: int):
            ep = self.agent.endpoints.by_ip(dst_ip if direction is Direction.INGRESS else src_ip)
            if ep is None:
                return None
            pol = self.agent.policy.repo.endpoint_policy(ep.namespace, ep.name)
            for (d, _proto, lo, hi), l7 in pol.l7.items():
                if d == direction and l7.parser == "kafka" and (lo == 0 or lo <= dst_port <= (hi or lo)):
                    return l7
            return None
        return policy_for

    def _on_record(self, rec: Any) -> None:
        for hook in self.record_hooks:
            try:
                hook(rec)
            except Exception:
                log.exception("Kafka record hook failed")

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": "running" if len(self.proxies) == 2 else "failed"}
        for direction, proxy in self.proxies.items():
            out[direction.name.lower()] = {"port": self.ports[direction], **dataclasses.asdict(proxy.counters)}
        if self.start_error:
            out["error"] = self.start_error
        return out
