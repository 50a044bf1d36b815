"""The policy repository inside the agent: policies from manifests, endpoints and identities in, resolved
per-endpoint policy out (to the datapath and xDS through `regenerate_hooks`)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from mesh.api.server import json_response, read_json
from mesh.endpoints.model import Endpoint
from mesh.errors import NotFoundError, ValidationError
from mesh.manifests import Document, Parsed, parse_document
from mesh.policy.model import Protocol
from mesh.policy.parse import KIND_CCNP, KIND_CNP, KIND_KNP, KIND_OSTIUM_CCNP
from mesh.policy.resolve import EndpointInfo, EndpointPolicy, PolicyRepository

if TYPE_CHECKING:
    from mesh.agent import Agent

log = logging.getLogger("ostium.policy")
POLICY_KINDS = (KIND_CNP, KIND_CCNP, KIND_KNP, KIND_OSTIUM_CCNP)


def endpoint_policy_to_api(pol: EndpointPolicy) -> dict[str, Any]:
    entries = []
    for key, entry in sorted(pol.map_state.items(), key=lambda kv: (kv[0].direction.name, kv[0].identity,
                                                                   kv[0].protocol, kv[0].port_lo)):
        entries.append({
            "direction": key.direction.name.lower(), "identity": key.identity, "protocol": key.protocol,
            "ports": f"{key.port_lo}-{key.port_hi}" if key.port_lo != key.port_hi else str(key.port_lo),
            "verdict": entry.verdict.name.lower(), "l7": entry.l7_parser,
            "derivedFrom": [str(r) for r in entry.derived_from],
        })
    return {"endpoint": f"{pol.endpoint.namespace}/{pol.endpoint.name}", "identity": pol.endpoint.identity,
            "revision": pol.revision, "ingressEnforced": pol.ingress_enforced, "egressEnforced": pol.egress_enforced,
            "entries": entries, "conflicts": list(pol.conflicts)}


class PolicyComponent:
    def __init__(self, agent: "Agent") -> None:
        self.agent = agent
        self.repo = PolicyRepository()
        self.applied_revision = 0
        self.regenerate_hooks: list[Callable[[list[tuple[str, str]], list[tuple[str, str]]], Awaitable[None]]] = []
        self.regen_observers: list[Callable[[float], None]] = []  # regeneration time (seconds) → metrics
        self._lock = asyncio.Lock()

    # --- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        policies = []
        for kind in POLICY_KINDS:
            for ns, name, body in self.agent.store.list(kind):
                try:
                    policies.append(parse_document(Document("<state>", 0, body)).obj)
                except ValidationError as exc:  # stored under an older, laxer version: keep going, say so
                    log.error("stored policy no longer valid, skipped", extra={"policy": f"{kind} {ns}/{name}",
                                                                              "error": str(exc)})
        self.repo.replace_policies(policies)

    # --- inputs -------------------------------------------------------------------------------------
    def endpoint_info(self, ep: Endpoint, labels: dict[str, str]) -> EndpointInfo:
        named = {p.name: (p.port, Protocol[p.protocol]) for p in ep.spec.ports}
        return EndpointInfo(name=ep.name, namespace=ep.namespace, labels=labels, ip=ep.ip, identity=ep.identity,
                            named_ports=named)

    async def endpoint_changed(self, event: str, ep: Endpoint) -> None:
        if event == "deleted":
            self.repo.delete_endpoint(ep.namespace, ep.name)
        else:
            labels = self.agent.identity.labels_for(ep)
            self.repo.upsert_endpoint(self.endpoint_info(ep, labels))
        await self.regenerate()

    async def identity_changed(self, event: str, ident: int, labels: dict[str, str] | None) -> None:
        if event == "upsert" and labels is not None:
            self.repo.upsert_identity(ident, labels)
        elif event == "delete":
            self.repo.delete_identity(ident)
        await self.regenerate()

    async def regenerate(self) -> None:
        """Push what changed since the last push to the datapath and xDS (they report it as applied)."""
        async with self._lock:
            start = time.perf_counter()
            changed, deleted = self.repo.changed_endpoints_since(self.applied_revision)
            target = self.repo.revision
            if not changed and not deleted:
                return
            from mesh.identity.ipcache import Source
            # CIDR identities the policies need go into the ipcache (endpoint entries win on overlap).
            self.agent.identity.ipcache.sync_source(
                Source.CIDR_POLICY, {str(net): ident for net, ident in self.repo.cidr_identities().items()})
            for hook in self.regenerate_hooks:
                await hook(changed, deleted)
            self.applied_revision = target
            took = time.perf_counter() - start
            for fn in self.regen_observers:
                fn(took)

    # --- manifests ----------------------------------------------------------------------------------
    async def apply(self, item: Parsed) -> str:
        """Into the repository, out to Envoy and the datapath, then into the store (the store write is
        not on the way to enforcement). If regeneration fails, this policy's change is undone here (the
        agent reverts the rest of the apply), so a failed apply leaves the previous policy everywhere."""
        old = self.agent.store.get(item.kind, item.namespace, item.name)
        if old == item.doc.body:
            return "unchanged"
        previous = self.repo.get_policy(item.kind, item.namespace, item.name)
        self.repo.upsert_policy(item.obj)
        try:
            await self.regenerate()
            self.agent.store.put(item.kind, item.namespace, item.name, item.doc.body)
        except BaseException:
            if previous is None:
                self.repo.delete_policy(item.kind, item.namespace, item.name)
            else:
                self.repo.upsert_policy(previous)
            try:
                await self.regenerate()
            except Exception:  # the error being raised is the one to report
                log.exception("policy regeneration failed while undoing a failed apply")
            raise
        return "configured" if old is not None else "created"

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        found = self.agent.store.delete(kind, namespace, name)
        if self.repo.delete_policy(kind, namespace, name):
            found = True
        await self.regenerate()
        return found

    # --- API ----------------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/policies", self.h_list),
            web.delete("/v1/policies/{kind}/{namespace}/{name}", self.h_delete),
            web.post("/v1/policy/trace", self.h_trace),
            web.get("/v1/policy/endpoints/{ref:.+}", self.h_endpoint_policy),
        ]

    async def h_list(self, request: web.Request) -> web.Response:
        out = []
        for pol in sorted(self.repo.policies(), key=lambda p: p.key):
            item = pol.summary()
            item["revision"] = self.repo.revision
            item["body"] = self.agent.store.get(pol.kind, pol.namespace, pol.name)
            out.append(item)
        return json_response({"policies": out})

    async def h_delete(self, request: web.Request) -> web.Response:
        kind, ns, name = (request.match_info[k] for k in ("kind", "namespace", "name"))
        ns = "" if ns == "-" else ns
        if kind not in POLICY_KINDS:
            raise ValidationError(f"unknown policy kind {kind!r} (one of {', '.join(POLICY_KINDS)})")
        async with self.agent.change_lock:
            if not await self.delete(kind, ns, name):
                raise NotFoundError(f"{kind} {ns + '/' if ns else ''}{name} not found")
        return json_response({"kind": kind, "namespace": ns, "name": name, "action": "deleted"})

    async def h_trace(self, request: web.Request) -> web.Response:
        from mesh.policy.trace import trace_query

        query = await read_json(request)
        return json_response(trace_query(self.repo, None, query))

    async def h_endpoint_policy(self, request: web.Request) -> web.Response:
        ep = self.agent.endpoints.find(request.match_info["ref"], request.query.get("namespace") or None)
        return json_response(endpoint_policy_to_api(self.repo.endpoint_policy(ep.namespace, ep.name)))

    def status(self) -> dict[str, Any]:
        return {"state": "ready", "revision": self.repo.revision, "applied_revision": self.applied_revision,
                "policies": len(self.repo.policies()), "endpoints": len(self.repo.endpoints())}
