"""Observability inside the agent: one observer fed by the datapath's ring buffer (raw records, the fast
path), Envoy's access logs and the Kafka proxy; metrics fed from every component; the UI on loopback."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mesh.agent import Agent

log = logging.getLogger("ostium.flows")


class FlowsComponent:
    def __init__(self, agent: "Agent") -> None:
        from mesh.flows.model import Enricher
        from mesh.flows.service import FlowsService

        self.agent = agent
        cfg = agent.config
        enricher = Enricher(identity_labels=self._identity_labels, endpoint_by_ip=self._endpoint_by_ip,
                            service_by_ip_port=self._service_by_ip_port, identity_by_ip=self._identity_by_ip,
                            node_name=cfg.node_name)
        self.service = FlowsService(enricher=enricher, capacity=cfg.flow_ring_size,
                                    http_port=cfg.metrics_port or None,
                                    export_path=cfg.flow_export_path or None)
        self._task: asyncio.Task | None = None
        self._ip_identity: dict[str, int] = {}

    @property
    def observer(self):
        return self.service.observer

    async def start(self) -> None:
        await self.service.start()
        self.agent.identity.ipcache.subscribe(self._ipcache_changed, replay=False)
        m = self.service.metrics
        a = self.agent
        m.set_gauge_source("endpoints", lambda: len(a.endpoints.list()))
        m.set_gauge_source("identities", lambda: len(a.identity.identities))
        m.set_gauge_source("policy_revision", lambda: a.policy.repo.revision)
        m.set_gauge_source("policies", lambda: len(a.policy.repo.policies()))
        m.set_gauge_source("ipcache_entries", lambda: len(a.identity.ipcache))
        if a.datapath is not None:
            m.set_bpf_maps_source(a.datapath.dp.maps_info)
            m.set_gauge_source("services", lambda: len(a.datapath.services()))
        if a.l7proxy is not None:
            m.set_envoy_state_source(lambda: a.l7proxy.status().get("state", "unknown"))
            m.set_envoy_admin_url(self._envoy_admin_url)
        a.policy.regen_observers.append(m.observe_policy_regeneration)
        if a.l7proxy is not None:
            self._task = asyncio.create_task(self._drain_xds_samples(), name="flows-xds-metrics")

    async def _drain_xds_samples(self) -> None:
        """xDS push→ACK samples into the metrics (ACK/NACK counters by type, latency histogram)."""
        server = self.agent.l7proxy.proxy.server
        m = self.service.metrics
        seen = 0
        while True:
            samples = server.latency_samples()
            fresh = samples[seen:] if len(samples) >= seen else samples
            seen = len(samples)
            for s in fresh:
                m.observe_xds_push(s.seconds)
                if s.nacked:
                    m.xds_nack(s.type_url)
                else:
                    m.xds_ack(s.type_url, max(1, s.resources))
            await asyncio.sleep(1.0)  # a metrics cadence, not synchronisation

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        await self.service.stop()

    # --- enrichment: what the agent knows about addresses and identities -----------------------------
    def _identity_labels(self, ident: int):
        return self.agent.identity.identities.get(ident)

    def _endpoint_by_ip(self, ip: str):
        ep = self.agent.endpoints.by_ip(ip)
        return (ep.namespace, ep.name, ep.spec.labels) if ep else None

    def _identity_by_ip(self, ip: str):
        # Every access-log record asks this; parsing the address each time dominated the agent's cost
        # per logged request. Cached per address string, dropped whenever the ipcache changes.
        hit = self._ip_identity.get(ip)
        if hit is not None:
            return hit
        try:
            ident = self.agent.identity.ipcache.lookup(ip)
        except Exception:
            return None
        if len(self._ip_identity) > 65536:
            self._ip_identity.clear()
        self._ip_identity[ip] = ident
        return ident

    def _ipcache_changed(self, _change: Any) -> None:
        self._ip_identity.clear()

    def _service_by_ip_port(self, ip: str, port: int):
        if self.agent.datapath is None:
            return None
        return self.agent.datapath.service_index().get((ip, port))

    def _envoy_admin_url(self):
        st = self.agent.l7proxy.proxy.status().get("envoy", {})
        addr = st.get("admin_address")
        return f"http://{addr}" if addr else None

    def invalidate(self, *_args: Any) -> None:
        self.observer.invalidate_enrichment()

    def status(self) -> dict[str, Any]:
        return {"state": "running", **self.service.status()}
