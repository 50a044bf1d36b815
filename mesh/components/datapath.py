"""The eBPF datapath inside the agent: endpoints attached, services and policy synced, events fanned out.

Kernel calls are blocking (bpf syscalls, map batches): they run in a worker thread. The Datapath keeps
everything pinned, so `stop()` leaves traffic flowing and the next agent adopts it (`start()`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mesh.api.server import json_response
from mesh.endpoints.model import Endpoint
from mesh.errors import DatapathError, ValidationError
from mesh.manifests import Document, Parsed, parse_document

if TYPE_CHECKING:
    from mesh.agent import Agent

log = logging.getLogger("ostium.datapath")
INGRESS_IDENTITY = 8  # reserved identity `ingress`: the gateway's upstream source address


class DatapathComponent:
    def __init__(self, agent: "Agent") -> None:
        from mesh.datapath.datapath import Datapath, DatapathConfig

        self.agent = agent
        cfg = agent.config
        self.dp = Datapath(DatapathConfig(
            cgroup_root=agent.plumbing.cgroup_root,
            pin_dir=os.path.join(cfg.bpffs, cfg.bpf_pin_dir),
            proxy_ports=dict(agent.proxy_ports),
        ))
        self.hub = None
        self._tasks: list[asyncio.Task] = []
        self.applied_revision = 0
        self._service_index: dict[tuple[str, int], tuple[str, str]] | None = None
        self.last_error = ""
        self.start_report: dict[str, Any] = {}
        self.sync_errors = 0
        self.attached: set[int] = set()  # endpoint ids whose veth programs are attached
        self._gateway_targets: list | None = None  # last ingress-gateway redirect targets written
        self.raw_sinks: list = []  # callables taking each raw ring-buffer record (the flow observer)

    # --- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        from mesh.datapath.events import EventHub

        try:
            report = await asyncio.to_thread(self.dp.start)
        except DatapathError as exc:
            raise DatapathError(f"{exc} (run the agent with --no-datapath to go on without eBPF)") from None
        self.start_report = {"adopted_links": report.adopted_links, "created_links": report.created_links,
                             "adopted_endpoints": report.adopted_endpoints,
                             "adopted_services": report.adopted_services}
        log.info("datapath loaded", extra=self.start_report)
        self.hub = EventHub(self.dp, resolve=self.agent.identity.identities.get)
        self._tasks.append(asyncio.create_task(self._run_events(), name="datapath-events"))
        # The ipcache (endpoints, CIDR identities, remote nodes) is mirrored into the BPF maps.
        self.agent.identity.ipcache.subscribe(self._ipcache_changed, replay=True)

    async def _run_events(self) -> None:
        """The ring's only reader: raw records go to the flow observer (its fast path); decoded records
        go to `ostium monitor` subscribers, only while there are any."""
        from bpf.maps import Event
        from mesh.datapath.events import event_record

        assert self.hub is not None
        try:
            async for raw in self.dp.raw_events():
                for sink in self.raw_sinks:
                    sink(raw)
                if self.hub.has_subscribers():
                    self.hub.publish(event_record(Event.unpack(raw), self.hub.resolve))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("datapath event reader stopped")

    async def reconcile(self) -> None:
        """After the agent's endpoints are reconciled: detach what the agent no longer knows."""
        known = {e.id for e in self.agent.endpoints.list()}
        for item in await asyncio.to_thread(self.dp.endpoints):
            if item["id"] not in known:
                log.warning("detaching pinned endpoint the agent does not know", extra={"endpoint_id": item["id"]})
                await asyncio.to_thread(self.dp.detach_endpoint, item["id"])
                self.attached.discard(item["id"])
        await self.sync_services()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        await asyncio.to_thread(self.dp.close)  # keep everything pinned: traffic keeps flowing

    def _ipcache_changed(self, change: Any) -> None:
        try:
            if change.new is not None:
                self.dp.upsert_ipcache(str(change.prefix), change.new.identity)
            else:
                self.dp.delete_ipcache(str(change.prefix))
        except DatapathError as exc:
            self.sync_errors += 1
            self.last_error = str(exc)
            log.error("ipcache sync failed", extra={"prefix": str(change.prefix), "error": str(exc)})

    # --- endpoints, policy, services -------------------------------------------------------------------
    async def endpoint_changed(self, event: str, ep: Endpoint) -> None:
        if event == "deleted":
            self.attached.discard(ep.id)
            await asyncio.to_thread(self.dp.detach_endpoint, ep.id)
            await self.sync_gateway_ingress()
        else:
            await asyncio.to_thread(self.dp.attach_endpoint, ep.id, ep.host_ifname, ep.host_ifindex, ep.ip,
                                    ep.identity, ep.netns)
            self.attached.add(ep.id)
            await self._sync_policy(ep)
        await self.sync_services()

    async def _sync_policy(self, ep: Endpoint) -> None:
        pol = self.agent.policy.repo.endpoint_policy(ep.namespace, ep.name)
        await asyncio.to_thread(self.dp.sync_policy, ep.id, pol)
        await self.sync_gateway_ingress()

    async def sync_gateway_ingress(self) -> None:
        """Gateway traffic (from the ingress source, identity `ingress`) to endpoints under ingress L7
        rules goes to the L7 listener (mesh.datapath.redirect.sync_gateway_ingress); re-done after every
        policy or endpoint change, only written when the targets changed."""
        from mesh.datapath import redirect

        if not self.dp.config.l7_redirect:
            return
        targets = await asyncio.to_thread(self.dp.gateway_l7_targets, INGRESS_IDENTITY)
        if targets == self._gateway_targets:
            return
        try:
            await asyncio.to_thread(redirect.sync_gateway_ingress, self.agent.config.ingress_source, targets)
        except DatapathError as exc:
            # Still closed: without the redirect the backend's veth drops gateway flows (PROXY_BYPASS).
            self.sync_errors += 1
            self.last_error = str(exc)
            log.error("ingress gateway redirect sync failed", extra={"error": str(exc)})
            return
        added = [t for t in targets if t not in (self._gateway_targets or [])]
        self._gateway_targets = targets
        if added:
            await asyncio.to_thread(redirect.close_bypassing_connections, self.agent.config.ingress_source, added)

    async def sync_egress_gateway(self, redirects: list) -> int:
        """The egress gateway's redirects (mesh.gateway.resolve.EgressRedirect) → ost_egress_gw."""
        return await asyncio.to_thread(self.dp.sync_egress_gateway, redirects)

    async def policy_regenerated(self, changed: list[tuple[str, str]], deleted: list[tuple[str, str]]) -> None:
        for ns, name in changed:
            try:
                ep = self.agent.endpoints.get(ns, name)
            except Exception:
                continue
            if ep.id not in self.attached:
                continue  # not attached yet: endpoint_changed syncs its policy right after attaching
            try:
                await self._sync_policy(ep)
            except DatapathError as exc:
                self.sync_errors += 1
                self.last_error = str(exc)
                log.error("policy sync failed", extra={"endpoint": f"{ns}/{name}", "error": str(exc)})
                raise
        self.applied_revision = self.agent.policy.repo.revision

    def services(self) -> list:
        out = []
        for _ns, _name, body in self.agent.store.list("Service"):
            try:
                out.append(parse_document(Document("<state>", 0, body)).obj)
            except ValidationError as exc:
                log.error("stored service no longer valid, skipped", extra={"error": str(exc)})
        return out

    async def sync_services(self) -> None:
        from mesh.services.resolve import candidate_from_endpoint, resolve_all

        frontends = resolve_all(self.services(), [candidate_from_endpoint(e) for e in self.agent.endpoints.list()])
        try:
            await asyncio.to_thread(self.dp.sync_services, frontends)
        finally:
            self._service_index = None

    def service_index(self) -> dict[tuple[str, int], tuple[str, str]]:
        """(VIP, port) → (namespace, name) of the service, for flow enrichment (asked per flow read)."""
        index = self._service_index
        if index is None:
            index = {}
            for f in self.dp.frontends():
                ns, _, name = f.service.partition("/")
                index.setdefault((f.vip, f.port), (ns, name))
            self._service_index = index
        return index

    def validate_services(self, items: list[Parsed]) -> None:
        from mesh.services.manifest import check_vip_conflicts

        incoming = {i.obj.key: i.obj for i in items}
        current = [s for s in self.services() if s.key not in incoming]
        check_vip_conflicts(current + list(incoming.values()))

    async def apply_service(self, item: Parsed) -> str:
        action = await self.agent._apply_stored(item)
        if action != "unchanged":
            await self.sync_services()
            await self._services_changed()
        return action

    async def delete_service(self, kind: str, namespace: str, name: str) -> bool:
        found = self.agent.store.delete(kind, namespace, name)
        if found:
            await self.sync_services()
            await self._services_changed()
        return found

    async def _services_changed(self) -> None:
        if self.agent.gateway is not None:  # routes resolve services to backends
            await self.agent.gateway.reconcile()

    # --- API ----------------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/services", self.h_services),
            web.get("/v1/services/{namespace}/{name}", self.h_service),
            web.get("/v1/bpf/maps", self.h_maps),
            web.get("/v1/bpf/maps/{name}", self.h_map),
            web.get("/v1/monitor", self.h_monitor),
        ]

    async def h_services(self, request: web.Request) -> web.Response:
        from mesh.datapath.api import services_list
        return json_response(services_list(self.services(), self.dp, request.query.get("namespace") or None))

    async def h_service(self, request: web.Request) -> web.Response:
        from mesh.datapath.api import service_get
        return json_response(service_get(self.services(), self.dp, request.match_info["namespace"],
                                         request.match_info["name"]))

    async def h_maps(self, request: web.Request) -> web.Response:
        return json_response(await asyncio.to_thread(self.dp.maps_info))

    async def h_map(self, request: web.Request) -> web.Response:
        return json_response(await asyncio.to_thread(self.dp.dump_map, request.match_info["name"]))

    async def h_monitor(self, request: web.Request) -> web.StreamResponse:
        import json

        from mesh.datapath.api import monitor
        stream = monitor(self.hub, request.query.getall("type", []), request.query.get("endpoint"))
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        try:
            async for rec in stream:
                await resp.write((json.dumps(rec, default=str) + "\n").encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    def status(self) -> dict[str, Any]:
        try:
            maps = self.dp.maps_info()
        except Exception:
            maps = []
        try:
            refused = self.dp.metrics().get("PROXY_UNAVAILABLE", 0)
        except Exception:
            refused = None
        # L7 redirect: the node's fwmark rule/local route/reject rule, the proxy ports flows go to,
        # and how many flows were refused (fail closed) because no proxy listened.
        l7 = {**self.dp.redirect_status, "proxy_ports": dict(self.dp.config.proxy_ports),
              "refused_flows": refused,
              # (endpoint IP, ports) whose gateway traffic the nft table ip ostium_gw sends to the proxy
              "gateway_ingress_redirects": len(self._gateway_targets or [])}
        return {"state": "error" if self.last_error else "ready",
                "pin_dir": self.dp.config.pin_dir,
                "l7_redirect": l7,
                "applied_policy_revision": self.applied_revision,
                "endpoints": len(self.dp.endpoints()),
                "maps": {m["name"]: f"{m.get('entries', m.get('fill', '?'))}/{m.get('max_entries', '?')}"
                         for m in maps},
                **({"last_error": self.last_error} if self.last_error else {}),
                **self.start_report}
