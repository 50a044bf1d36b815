"""Gateways inside the agent: Ingress / Gateway API / EgressGatewayPolicy manifests → the node's Envoy.

Wiring (mesh/agent.py, after the L7 proxy component):

    from mesh.components.gateway import GatewayComponent
    from mesh.gateway.model import GATEWAY_KINDS
    self.gateway = GatewayComponent(self)                  # settings from config (see below)
    await self.gateway.start()
    self.register_kind_handler(KindHandler(GATEWAY_KINDS, apply=self.gateway.apply,
                                           delete=self.gateway.delete, order=60))
    self.endpoint_hooks.append(self.gateway.endpoint_changed)   # backends and egress selection
    # and after any Service apply/delete: await self.gateway.reconcile()
    self.extra_routes.append(self.gateway.routes)
    self.components["gateway"] = self.gateway.status

The resources go to Envoy through the L7 proxy (`L7Proxy.set_extra("gateway", ...)` + a push), so
one snapshot holds policy and gateway resources. Without an L7 proxy the objects are still kept
and their status computed; nothing is served.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import logging
from typing import TYPE_CHECKING, Any, Callable, Mapping

from aiohttp import web

from mesh.api.server import json_response
from mesh.errors import ValidationError
from mesh.gateway.model import (GATEWAY_KINDS, KIND_EGRESS, KIND_GATEWAY, KIND_GRPCROUTE, KIND_HTTPROUTE,
                                KIND_INGRESS, KIND_INGRESS_CLASS, KIND_SECRET)
from mesh.gateway.resolve import (EgressEndpoint, GatewayObjects, GatewaySettings, Resolution, resolve,
                                  service_backend_resolver, status_rows)
from mesh.manifests import Document, Parsed, parse_document

if TYPE_CHECKING:
    from mesh.agent import Agent

log = logging.getLogger("ostium.gateway")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def objects_from(parsed: list[Any]) -> GatewayObjects:
    objs = GatewayObjects()
    for kind, obj in parsed:
        if kind == KIND_GATEWAY:
            objs.gateways.append(obj)
        elif kind in (KIND_HTTPROUTE, KIND_GRPCROUTE):
            objs.routes.append(obj)
        elif kind == KIND_INGRESS:
            objs.ingresses.append(obj)
        elif kind == KIND_INGRESS_CLASS:
            objs.ingress_classes.append(obj)
        elif kind == KIND_SECRET:
            objs.secrets[(obj.namespace, obj.name)] = obj
        elif kind == KIND_EGRESS:
            objs.egress_policies.append(obj)
    return objs


def interface_ipv4(name: str) -> str | None:
    """The first IPv4 address of a node interface (EgressGatewayPolicy egressGateway.interface)."""
    try:
        from pyroute2 import IPRoute
    except ImportError:  # pragma: no cover
        return None
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            return None
        for addr in ipr.get_addr(index=idx[0], family=2):
            return addr.get_attr("IFA_ADDRESS")
    return None


def _is_local(ip: str) -> bool:
    """Already an address of the node (e.g. an egressGateway.interface address)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((ip, 0))
            return True
        except OSError:
            return False


class GatewayComponent:
    def __init__(self, agent: "Agent", settings: GatewaySettings | None = None,
                 interface_ip: Callable[[str], str | None] = interface_ipv4) -> None:
        self.agent = agent
        self.settings = settings or GatewaySettings()
        self.interface_ip = interface_ip
        self.objects: dict[tuple[str, str, str], Any] = {}
        self.resolution: Resolution | None = None
        self.last_error = ""
        self._egress_ips: set[str] = set()  # egress IPs this component added to the node
        self.datapath_error = ""  # the last egress redirect/egress IP sync failure ("" = in step)
        self._lock = asyncio.Lock()

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        for kind in GATEWAY_KINDS:
            for ns, name, body in self.agent.store.list(kind):
                try:
                    self.objects[(kind, ns, name)] = parse_document(Document("<state>", 0, body)).obj
                except ValidationError as exc:
                    log.error("stored gateway object no longer valid, skipped",
                              extra={"object": f"{kind} {ns}/{name}", "error": str(exc)})
        await self.reconcile()

    # --- manifests ------------------------------------------------------------------------------
    async def apply(self, item: Parsed) -> str:
        old = self.agent.store.get(item.kind, item.namespace, item.name)
        body = copy.deepcopy(item.doc.body)
        meta = body.setdefault("metadata", {})
        # Like the API server: the first apply stamps creationTimestamp, later applies keep it
        # (Gateway API breaks precedence ties and Ostium resolves egress overlaps by age).
        old_ts = (old or {}).get("metadata", {}).get("creationTimestamp")
        meta["creationTimestamp"] = meta.get("creationTimestamp") or old_ts or _now()
        if old == body:
            return "unchanged"
        self.agent.store.put(item.kind, item.namespace, item.name, body)
        self.objects[(item.kind, item.namespace, item.name)] = parse_document(Document(item.doc.source,
                                                                                       item.doc.index, body)).obj
        await self.reconcile()
        return "configured" if old is not None else "created"

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        found = self.agent.store.delete(kind, namespace, name)
        found = self.objects.pop((kind, namespace, name), None) is not None or found
        await self.reconcile()
        return found

    async def endpoint_changed(self, event: str, ep: Any) -> None:
        await self.reconcile()

    # --- resolution and push --------------------------------------------------------------------
    def _resolve(self) -> Resolution:
        from mesh.services.resolve import candidate_from_endpoint

        endpoints = list(self.agent.endpoints.list())
        services = []
        for _ns, _name, body in self.agent.store.list("Service"):
            try:
                services.append(parse_document(Document("<state>", 0, body)).obj)
            except ValidationError:
                continue
        resolver = service_backend_resolver(services, [candidate_from_endpoint(e) for e in endpoints])
        egress_eps = []
        for ep in endpoints:
            if ep.ip:
                egress_eps.append(EgressEndpoint(ep.ip, ep.namespace, dict(ep.spec.labels)))
        objs = objects_from([(k[0], o) for k, o in sorted(self.objects.items())])
        return resolve(objs, self.settings, resolver, endpoints=egress_eps, namespace_labels=self._namespace_labels(),
                       interface_ip=self.interface_ip)

    def _namespace_labels(self) -> Mapping[str, Mapping[str, str]]:
        out = {}
        for _ns, name, body in self.agent.store.list("Namespace"):
            out[name] = dict(((body or {}).get("metadata") or {}).get("labels") or {})
        return out

    async def reconcile(self) -> None:
        """Recompute everything (pure, fast) and push it to Envoy through the L7 proxy."""
        from xdsserver.translate.gateway import translate_gateway

        async with self._lock:
            self.resolution = self._resolve()
            await self._sync_egress_datapath(self.resolution)
            l7 = getattr(self.agent, "l7proxy", None)
            if l7 is None:
                return
            resources = translate_gateway(self.resolution.input).by_type()
            empty = not any(resources.values())
            l7.proxy.set_extra("gateway", None if empty else resources)
            # L7ProxyComponent.push: translate policy + extra, set the snapshot, wait for the ACK.
            await l7.push()
            self.last_error = l7.last_error

    async def _sync_egress_datapath(self, res: Resolution) -> None:
        """The egress gateway's datapath half: every egress IP a local address of the node (Envoy's
        upstream binds to it), then the redirect entries (source, destination) → egress listener.
        Addresses this component added and no policy uses any more are removed afterwards."""
        dp = getattr(self.agent, "datapath", None)
        plumbing = getattr(self.agent, "plumbing", None)
        if dp is None:
            return
        try:
            want = {r.egress_ip for r in res.egress_redirects if r.egress_ip}
            cfg = self.agent.config
            reserved = {cfg.router, cfg.ingress_source}
            for ip in sorted(want - self._egress_ips - reserved):
                if plumbing is not None and ip in await asyncio.to_thread(plumbing.node_addresses):
                    self._egress_ips.add(ip)  # added by an earlier agent run: ours to remove later
                elif plumbing is not None and not _is_local(ip):
                    await asyncio.to_thread(plumbing.add_node_address, ip)
                    self._egress_ips.add(ip)
            await dp.sync_egress_gateway(list(res.egress_redirects))
            for ip in sorted(self._egress_ips - want):
                if plumbing is not None:
                    await asyncio.to_thread(plumbing.del_node_address, ip)
                self._egress_ips.discard(ip)
            self.datapath_error = ""
        except Exception as exc:  # noqa: BLE001 - reported in status; the Envoy half still goes out
            self.datapath_error = f"egress gateway datapath: {exc}"
            log.error("egress gateway datapath sync failed", extra={"error": str(exc)})

    # --- API --------------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/gateway/status", self.h_status)]

    async def h_status(self, request: web.Request) -> web.Response:
        return json_response(handle_gateway_status(self, dict(request.query)))

    def status(self) -> dict[str, Any]:
        res = self.resolution
        if res is None:
            return {"state": "starting"}
        inp = res.input
        failing = [s for s in res.statuses if any(
            (c.status is False and c.type != "Conflicted") or (c.type == "Conflicted" and c.status)
            for c in s.conditions)]
        out = {"state": "ready", "objects": len(self.objects), "listeners": len(inp.listeners),
               "egress_policies": len(inp.egress_chains), "objects_with_problems": len(failing)}
        if self.last_error:
            out["last_error"] = self.last_error
        if self.datapath_error:
            out["state"] = "error"
            out["datapath_error"] = self.datapath_error
        return out


def handle_gateway_status(component: "GatewayComponent | None", params: Mapping[str, str] | None = None) -> dict:
    """`GET /v1/gateway/status`: {"objects": [ObjectStatus.to_api()...], "rows": status_rows(...),
    "listeners": [{name, port, address, chains}], "egressRedirects": [...]}. `?kind=` and
    `?namespace=` filter the objects."""
    if component is None or component.resolution is None:
        return {"objects": [], "rows": [], "listeners": [], "egressRedirects": []}
    params = params or {}
    res = component.resolution
    objs = [s.to_api() for s in res.statuses]
    if params.get("kind"):
        objs = [o for o in objs if o["kind"].lower() == params["kind"].lower()]
    if params.get("namespace"):
        objs = [o for o in objs if o["namespace"] in (params["namespace"], "")]
    opts = res.input.options
    listeners = [{"name": lst.name, "address": lst.address or opts.address, "port": lst.port,
                  "tls": any(c.secret for c in lst.chains),
                  "hosts": sorted({d for c in lst.chains for vh in c.virtual_hosts for d in vh.domains})}
                 for lst in res.input.listeners]
    return {"objects": objs, "rows": status_rows(objs), "listeners": listeners,
            "egressRedirects": [r.to_api() for r in res.egress_redirects]}
