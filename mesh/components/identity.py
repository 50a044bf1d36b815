"""Identities for endpoints: security labels → allocator → endpoint identity and ipcache entry."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from mesh.endpoints.model import Endpoint
from mesh.identity.config import IdentityConfig, open_allocator
from mesh.identity.ipcache import IPCache, Source
from mesh.identity.labels import security_labels

if TYPE_CHECKING:
    from mesh.agent import Agent
    from mesh.identity.allocator import Identity, IdentityAllocator

log = logging.getLogger("ostium.identity")


class IdentityComponent:
    def __init__(self, agent: "Agent") -> None:
        self.agent = agent
        self.config = IdentityConfig.from_agent_config(agent.config)
        self.allocator: IdentityAllocator | None = None
        self.ipcache = IPCache()
        self.identities: dict[int, dict[str, str]] = {}  # every identity the allocator knows (all nodes)
        self.identity_hooks: list[Callable[[str, int, dict[str, str] | None], Awaitable[None] | None]] = []
        self._watch_task: asyncio.Task | None = None
        self._synced = asyncio.Event()

    async def start(self) -> None:
        self.allocator = await open_allocator(self.config, state_dir=self.agent.config.state_dir,
                                              node=self.agent.config.node_name)
        self._watch_task = asyncio.create_task(self._watch(), name="identity-watch")
        await asyncio.wait_for(self._synced.wait(), timeout=30)
        # The node's own addresses are the reserved identity host (1): Envoy's and the Kafka proxy's
        # upstream connections, and processes on the node, come from them.
        self.ipcache.upsert(f"{self.agent.config.router}/32", 1, Source.RESERVED)

    async def stop(self) -> None:
        if self._watch_task:
            self._watch_task.cancel()
            try:
                await self._watch_task
            except (asyncio.CancelledError, Exception):
                pass
        if self.allocator is not None:
            await self.allocator.close()

    async def _watch(self) -> None:
        from mesh.identity.allocator import EventKind

        assert self.allocator is not None
        async for ev in self.allocator.watch():
            if ev.kind is EventKind.SYNCED:
                self._synced.set()
                continue
            ident = ev.identity
            if ev.kind is EventKind.UPSERT:
                self.identities[ident.id] = dict(ident.labels)
                await self._fire("upsert", ident.id, dict(ident.labels))
            else:
                self.identities.pop(ident.id, None)
                await self._fire("delete", ident.id, None)

    async def _fire(self, event: str, ident: int, labels: dict[str, str] | None) -> None:
        for hook in self.identity_hooks:
            res = hook(event, ident, labels)
            if asyncio.iscoroutine(res):
                await res

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        body = self.agent.store.get("Namespace", "", namespace) if self.agent.store else None
        labels = dict(((body or {}).get("metadata") or {}).get("labels") or {})
        labels["kubernetes.io/metadata.name"] = namespace
        return labels

    def labels_for(self, ep: Endpoint) -> dict[str, str]:
        return security_labels(ep.spec.labels, ep.namespace, self.namespace_labels(ep.namespace),
                               ep.spec.service_account, self.config.label_filter)

    async def endpoint_changed(self, event: str, ep: Endpoint) -> None:
        assert self.allocator is not None
        prefix = f"{ep.ip}/32"
        if event == "deleted":
            if ep.identity:
                await self.allocator.release(ep.identity, ep.key)
            self.ipcache.delete(prefix, Source.ENDPOINT)
            return
        ident: Identity = await self.allocator.allocate(self.labels_for(ep), ep.key)
        old = ep.identity
        if old and old != ident.id:
            await self.allocator.release(old, ep.key)
        await asyncio.to_thread(self.agent.endpoints.set_identity, ep, ident.id)
        self.identities.setdefault(ident.id, dict(ident.labels))
        self.ipcache.upsert(prefix, ident.id, Source.ENDPOINT)

    def routes(self) -> list:
        from mesh.identity.api import routes
        assert self.allocator is not None
        return routes(self.allocator, self.ipcache)

    def status(self) -> dict[str, Any]:
        allocated = sum(1 for i in self.identities if i >= 256)
        return {"state": "ready" if self._synced.is_set() else "syncing", "backend": self.config.backend.value,
                "identities": len(self.identities), "allocated": allocated, "ipcache_entries": len(self.ipcache)}
