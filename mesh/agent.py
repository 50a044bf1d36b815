"""The agent: composition root. Builds the components, wires them, serves the API, supervises.

One asyncio process. Blocking kernel work (iproute2, sysfs, SQLite) runs in a worker thread, one change
at a time (`self._lock`), so API calls never see half-applied state.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web

import mesh
from mesh import kernel
from mesh.api.server import json_response, make_app, read_json, serve_unix
from mesh.config import Config
from mesh.endpoints.manager import EndpointManager
from mesh.endpoints.manifest import parse_endpoint_spec
from mesh.endpoints.model import Endpoint, EndpointSpec
from mesh.endpoints.plumbing import Plumbing
from mesh.errors import AgentError, NotFoundError, OstiumError, ValidationError
from mesh.labels import parse_label_args
from mesh.manifests import Document, Parsed, parse_document, parse_documents, parse_yaml_text, require_kinds
from mesh.state.ipam import IPAM
from mesh.state.store import StateStore

log = logging.getLogger("ostium.agent")


@dataclass
class KindHandler:
    """How the agent applies one manifest kind. `validate` sees the whole batch before anything changes;
    `apply`/`delete` return the action taken; `undo` reverts an apply (all-or-nothing applies)."""

    kinds: tuple[str, ...]
    validate: Callable[[list[Parsed]], None] = lambda items: None
    apply: Callable[[Parsed], Awaitable[str]] | None = None
    delete: Callable[[str, str, str], Awaitable[bool]] | None = None
    order: int = 50  # lower applies first (namespaces, then endpoints, then the rest)


class StateLock:
    """An exclusive lock on the state directory: a second agent on it refuses to start."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "agent.lock")
        self.fd: int | None = None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AgentError(f"another agent (pid {other}) is already running on state directory "
                             f"{os.path.dirname(self.path)}: stop it first, or use another --state-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class GCPause:
    """Cyclic garbage collection off while at least one holder is inside (nesting and overlapping API
    calls are fine). Applying a large policy allocates tens of thousands of small acyclic objects (YAML
    nodes, rules, Envoy resources); the collections that triggers each scan the agent's whole heap (the
    flow ring alone is ~100,000 objects): ~20 ms of gen-0/1 passes per 1,000-rule apply, and a full pass
    of 100-200 ms now and then, all before Envoy gets the change. They run after the apply instead."""

    def __init__(self) -> None:
        self._depth = 0
        self._was_enabled = False

    @contextlib.contextmanager
    def paused(self):
        if self._depth == 0:
            self._was_enabled = gc.isenabled()
            gc.disable()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._was_enabled:
                gc.enable()


class Agent:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.started = time.time()
        self.lock = StateLock(config.state_dir)
        self.change_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self.handlers: dict[str, KindHandler] = {}
        self.features: list[kernel.Feature] = []
        self.components: dict[str, Callable[[], Any]] = {}  # name → status provider
        self.reconcile_report: dict[str, list[str]] = {}
        self.runner: web.AppRunner | None = None
        self.store: StateStore | None = None
        self.extra_routes: list[Callable[[], list[web.RouteDef]]] = []  # components add their API routes
        # Called in order after an endpoint is created/updated/deleted: identity, policy, datapath, ...
        self.endpoint_hooks: list[Callable[[str, Endpoint], Awaitable[None]]] = []
        self.stop_hooks: list[Callable[[], Awaitable[None]]] = []
        self.datapath: Any = None
        self.l7proxy: Any = None
        self.kafka: Any = None
        self.gateway: Any = None
        self.flows: Any = None
        self.proxy_ports: dict[str, int] = {}  # L7 parser → transparent proxy port (Envoy, Kafka proxy)
        self.gc_pause = GCPause()

    # --- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.config
        self.lock.acquire()
        cg2 = kernel.cgroup2_mount()
        if cg2 is None:
            raise AgentError("cgroup v2 is not mounted: mount it (mount -t cgroup2 none /sys/fs/cgroup) "
                             "— endpoints need a cgroup for socket-level service translation")
        self.store = StateStore(os.path.join(cfg.state_dir, "state.db"))
        self.ipam = IPAM(self.store, cfg.pod_cidr, reserved=(cfg.router, cfg.ingress_source))
        self.plumbing = Plumbing(cfg.cgroup_path(cg2), netns_prefix=cfg.netns_prefix, router_ip=cfg.router)
        await asyncio.to_thread(self.plumbing.setup_node)
        self.endpoints = EndpointManager(self.store, self.ipam, self.plumbing,
                                         log_dir=os.path.join(cfg.state_dir, "logs"))
        self._register_builtin_kinds()
        await self._start_components()
        self.features = await asyncio.to_thread(kernel.probe_features, cfg.bpffs)
        self.versions = await asyncio.to_thread(kernel.component_versions)
        for f in self.features:
            if not f.available:
                log.warning("kernel feature missing", extra={"feature": f.name, "detail": f.detail,
                                                             "disables": f.disables})
        self.reconcile_report = await asyncio.to_thread(self.endpoints.reconcile)
        for ep in self.endpoints.list():  # identities and policy for what survived the restart
            await self.endpoint_event("updated", ep)
        if self.datapath is not None:
            await self.datapath.reconcile()
        self.runner = await serve_unix(make_app(self.routes()), cfg.socket)
        # What exists now (modules, protobuf descriptors, the state loaded at start) lives as long as the
        # agent: out of the collector's way, so a full collection no longer walks it (150-200 ms pauses
        # under a busy access log). Young collections less often: ingest allocates in bursts.
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 20, 20)
        log.info("agent ready", extra={"socket": cfg.socket, "state_dir": cfg.state_dir,
                                       "endpoints": len(self.endpoints.list()), "version": mesh.__version__})

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            await self.start()
            await self._stop.wait()
            log.info("shutting down (endpoints and pinned datapath state stay)")
        finally:
            await self.stop()

    def request_stop(self) -> None:
        self._stop.set()

    async def _start_components(self) -> None:
        from mesh.components.identity import IdentityComponent
        from mesh.components.policy import POLICY_KINDS, PolicyComponent

        self.identity = IdentityComponent(self)
        await self.identity.start()
        self.stop_hooks.append(self.identity.stop)
        self.policy = PolicyComponent(self)
        await self.policy.start()
        self.identity.identity_hooks.append(self.policy.identity_changed)
        for ident, labels in self.identity.identities.items():
            self.policy.repo.upsert_identity(ident, labels)
        self.endpoint_hooks += [self.identity.endpoint_changed, self.policy.endpoint_changed]
        self.register_kind_handler(KindHandler(POLICY_KINDS, apply=self.policy.apply, delete=self.policy.delete,
                                               order=30))
        self.extra_routes += [self.identity.routes, self.policy.routes]
        self.components["identity"] = self.identity.status
        self.components["policy"] = self.policy.status
        if self.config.envoy:
            from mesh.components.l7proxy import L7ProxyComponent

            self.l7proxy = L7ProxyComponent(self)
            self.proxy_ports.update(self.l7proxy.proxy_ports)
        if self.config.kafka_proxy:
            from mesh.components.kafka import KafkaComponent

            self.kafka = KafkaComponent(self)
            self.proxy_ports.update(self.kafka.proxy_ports)
        if self.config.datapath:
            from mesh.components.datapath import DatapathComponent

            self.datapath = DatapathComponent(self)
            await self.datapath.start()
            self.stop_hooks.append(self.datapath.stop)
            self.endpoint_hooks.append(self.datapath.endpoint_changed)
            self.policy.regenerate_hooks.append(self.datapath.policy_regenerated)
            self.register_kind_handler(KindHandler(("Service",), validate=self.datapath.validate_services,
                                                   apply=self.datapath.apply_service,
                                                   delete=self.datapath.delete_service, order=40))
            self.extra_routes.append(self.datapath.routes)
            self.components["datapath"] = self.datapath.status
        else:
            # Without the datapath, Services are still accepted and kept for when it is enabled.
            self.register_kind_handler(KindHandler(("Service",), apply=self._apply_stored,
                                                   delete=self._delete_stored, order=40))
            self.components["datapath"] = lambda: {"state": "disabled (--no-datapath)"}
        if self.kafka is not None:
            await self.kafka.start()
            self.stop_hooks.append(self.kafka.stop)
            self.components["kafka"] = self.kafka.status
        else:
            self.components["kafka"] = lambda: {"state": "disabled (--no-kafka-proxy): Kafka-rule flows are refused"}
        if self.l7proxy is not None:
            await self.l7proxy.start()
            self.stop_hooks.append(self.l7proxy.stop)
            # Envoy first (an L7 change is enforced without waiting for the policy maps), and last for
            # the pushes that must follow the datapath (see L7ProxyComponent.policy_regenerated).
            self.policy.regenerate_hooks.insert(0, self.l7proxy.policy_regenerated)
            self.policy.regenerate_hooks.append(self.l7proxy.push_deferred)
            self.extra_routes.append(self.l7proxy.routes)
            self.components["envoy"] = self.l7proxy.status
        else:
            self.components["envoy"] = lambda: {"state": "disabled (--no-envoy)"}
        await self._start_gateway()
        from mesh.components.flows import FlowsComponent

        self.flows = FlowsComponent(self)
        await self.flows.start()
        self.stop_hooks.append(self.flows.stop)
        self.extra_routes.append(self.flows.service.routes)
        self.components["flows"] = self.flows.status
        obs = self.flows.observer
        if self.datapath is not None:
            self.datapath.raw_sinks.append(obs.ingest_datapath_raw)
        if self.l7proxy is not None:
            self.l7proxy.record_hooks.append(obs.ingest_http_record)
        if self.kafka is not None:
            self.kafka.record_hooks.append(obs.ingest_kafka_record)
        self.endpoint_hooks.append(self._invalidate_flow_enrichment)

    async def _start_gateway(self) -> None:
        from mesh.components.gateway import GatewayComponent
        from mesh.gateway.model import GATEWAY_KINDS
        from mesh.gateway.resolve import GatewaySettings
        from mesh.identity.ipcache import Source
        from xdsserver.translate.gateway import GatewayOptions

        cfg = self.config
        # Gateway traffic to backends leaves from this address: the reserved identity ingress (8).
        await asyncio.to_thread(self.plumbing.add_node_address, cfg.ingress_source)
        self.identity.ipcache.upsert(f"{cfg.ingress_source}/32", 8, Source.RESERVED)
        settings = GatewaySettings(ingress_http_port=cfg.gateway_http_port, ingress_https_port=cfg.gateway_https_port,
                                   options=GatewayOptions(address=cfg.gateway_address, upstream_source=cfg.ingress_source,
                                                          egress_port=cfg.egress_gateway_port or cfg.proxy_port_base + 5))
        self.gateway = GatewayComponent(self, settings)
        await self.gateway.start()
        self.register_kind_handler(KindHandler(GATEWAY_KINDS, apply=self.gateway.apply, delete=self.gateway.delete,
                                               order=60))
        self.endpoint_hooks.append(self.gateway.endpoint_changed)
        self.extra_routes.append(self.gateway.routes)
        self.components["gateway"] = self.gateway.status

    async def _invalidate_flow_enrichment(self, event: str, ep: Endpoint) -> None:
        self.flows.observer.invalidate_enrichment()

    async def endpoint_event(self, event: str, ep: Endpoint) -> None:
        for hook in self.endpoint_hooks:
            await hook(event, ep)

    async def stop(self) -> None:
        for hook in reversed(self.stop_hooks):
            try:
                await hook()
            except Exception:
                log.exception("component stop failed")
        self.stop_hooks.clear()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
            try:
                os.unlink(self.config.socket)
            except FileNotFoundError:
                pass
        if self.store is not None:
            self.store.close()
            self.store = None
        self.lock.release()

    # --- manifests --------------------------------------------------------------------------------------
    def register_kind_handler(self, handler: KindHandler) -> None:
        for k in handler.kinds:
            self.handlers[k] = handler

    def _register_builtin_kinds(self) -> None:
        self.register_kind_handler(KindHandler(("Namespace",), apply=self._apply_namespace,
                                               delete=self._delete_namespace, order=10))
        self.register_kind_handler(KindHandler(("Endpoint",), validate=self._validate_endpoints,
                                               apply=self._apply_endpoint, delete=self._delete_endpoint, order=20))

    async def _apply_stored(self, item: Parsed) -> str:
        """Keep the manifest as written (kinds whose component reads them from the store)."""
        old = self.store.get(item.kind, item.namespace, item.name)
        if old == item.doc.body:
            return "unchanged"
        self.store.put(item.kind, item.namespace, item.name, item.doc.body)
        return "configured" if old is not None else "created"

    async def _delete_stored(self, kind: str, namespace: str, name: str) -> bool:
        return self.store.delete(kind, namespace, name)

    async def _apply_namespace(self, item: Parsed) -> str:
        action = await self._apply_stored(item)
        if action != "unchanged":  # namespace labels are part of every member's identity
            for ep in self.endpoints.list(item.name):
                await self.endpoint_event("updated", ep)
        return action

    async def _delete_namespace(self, kind: str, namespace: str, name: str) -> bool:
        found = await self._delete_stored(kind, namespace, name)
        if found:
            for ep in self.endpoints.list(name):
                await self.endpoint_event("updated", ep)
        return found

    def _validate_endpoints(self, items: list[Parsed]) -> None:
        self.endpoints.check([i.obj for i in items], allow_existing=True)

    async def _apply_endpoint(self, item: Parsed) -> str:
        spec: EndpointSpec = item.obj
        try:
            self.endpoints.get(spec.namespace, spec.name)
        except NotFoundError:
            ep = await asyncio.to_thread(self.endpoints.create, spec)
            await self.endpoint_event("created", ep)
            return "created"
        ep, changed = await asyncio.to_thread(self.endpoints.update, spec)
        if changed:
            await self.endpoint_event("updated", ep)
        return "configured" if changed else "unchanged"

    async def _delete_endpoint(self, kind: str, namespace: str, name: str) -> bool:
        try:
            ep = await asyncio.to_thread(self.endpoints.delete, namespace, name)
        except NotFoundError:
            return False
        await self.endpoint_event("deleted", ep)
        return True

    def _snapshot(self, item: Parsed) -> Any:
        if item.kind == "Endpoint":
            try:
                return self.endpoints.get(item.namespace, item.name).spec
            except NotFoundError:
                return None
        return self.store.get(item.kind, item.namespace, item.name)

    async def _restore(self, item: Parsed, before: Any) -> None:
        """Undo one applied item (best effort; used when a later item of the same apply fails)."""
        h = self.handlers[item.kind]
        if before is None:
            if h.delete:
                await h.delete(item.kind, item.namespace, item.name)
        elif item.kind == "Endpoint":
            ep, changed = await asyncio.to_thread(self.endpoints.update, before)
            if changed:
                await self.endpoint_event("updated", ep)
        elif h.apply:
            doc = Document(item.doc.source, item.doc.index, before)
            try:  # the object of the stored body, not of the body being undone
                obj = parse_document(doc).obj
            except ValidationError:
                log.error("stored object no longer valid, restored as applied",
                          extra={"object": f"{item.kind} {item.namespace}/{item.name}"})
                obj = item.obj
            await h.apply(Parsed(doc, item.kind, item.namespace, item.name, obj))

    async def apply(self, docs: list[Document]) -> list[dict[str, str]]:
        parsed = parse_documents(docs)  # every document is valid, or nothing happens
        for p in parsed:
            if p.kind not in self.handlers:
                raise ValidationError(f"kind {p.kind} is known but not served by this agent "
                                      "(its component is not enabled)", document=p.doc.ref)
        async with self.change_lock:
            by_handler: dict[int, list[Parsed]] = {}
            for p in parsed:
                by_handler.setdefault(id(self.handlers[p.kind]), []).append(p)
            for items in by_handler.values():
                try:
                    self.handlers[items[0].kind].validate(items)
                except ValidationError as exc:
                    raise exc if exc.document else exc.with_document(
                        items[0].doc.ref if len(items) == 1 else f"{len(items)} {items[0].kind} documents")
            results: list[dict[str, str]] = []
            done: list[tuple[Parsed, Any]] = []
            try:
                for p in sorted(parsed, key=lambda x: self.handlers[x.kind].order):
                    before = self._snapshot(p)
                    action = await self.handlers[p.kind].apply(p)
                    done.append((p, before))
                    results.append({"kind": p.kind, "namespace": p.namespace, "name": p.name, "action": action})
            except BaseException as exc:
                log.warning("apply failed, reverting", extra={"error": str(exc), "reverting": len(done)})
                for p, before in reversed(done):
                    try:
                        await self._restore(p, before)
                    except Exception:  # keep reverting the rest
                        log.exception("revert failed", extra={"object": f"{p.kind} {p.namespace}/{p.name}"})
                if isinstance(exc, ValidationError) and not exc.document:
                    raise exc.with_document(p.doc.ref) from None
                raise
            return results

    async def delete_manifests(self, docs: list[Document]) -> list[dict[str, str]]:
        parsed = parse_documents(docs, allow_duplicates=True)
        results = []
        async with self.change_lock:
            for p in sorted(parsed, key=lambda x: -self.handlers[x.kind].order if x.kind in self.handlers else 0):
                h = self.handlers.get(p.kind)
                deleted = bool(h and h.delete and await h.delete(p.kind, p.namespace, p.name))
                results.append({"kind": p.kind, "namespace": p.namespace, "name": p.name,
                                "action": "deleted" if deleted else "not found"})
        return results

    # --- API ------------------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/healthz", self.h_health),
            web.get("/v1/status", self.h_status),
            web.get("/v1/endpoints", self.h_endpoints),
            web.post("/v1/endpoints", self.h_endpoint_create),
            web.get("/v1/endpoints/{ref:.+}", self.h_endpoint_get),
            web.delete("/v1/endpoints/{namespace}/{name}", self.h_endpoint_delete),
            web.post("/v1/apply", self.h_apply),
            web.post("/v1/delete", self.h_delete),
            web.get("/v1/manifests", self.h_manifests),
        ] + [r for provider in self.extra_routes for r in provider()]

    async def h_health(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    def status(self) -> dict[str, Any]:
        comps = {}
        for name, fn in self.components.items():
            try:
                comps[name] = fn()
            except Exception as exc:  # a status provider must never break status
                comps[name] = {"state": "error", "error": str(exc)}
        return {
            "agent": {"state": "running", "version": mesh.__version__, "pid": os.getpid(),
                      "uptime_seconds": round(time.time() - self.started, 1), "node": self.config.node_name,
                      "state_dir": self.config.state_dir, "socket": self.config.socket},
            "versions": getattr(self, "versions", {}),
            "network": {"pod_cidr": self.config.pod_cidr, "router_ip": self.config.router,
                        "service_cidr": self.config.service_cidr,
                        "addresses_in_use": len(self.ipam.allocated()), "addresses_total": self.ipam.capacity},
            "endpoints": {"total": len(self.endpoints.list()),
                          "not_ready": [f"{e.namespace}/{e.name}" for e in self.endpoints.list() if e.state != "ready"]},
            "kernel": [{"feature": f.name, "available": f.available, "detail": f.detail,
                        **({"disables": f.disables} if not f.available else {})} for f in self.features],
            "reconcile": self.reconcile_report,
            "components": comps,
        }

    async def h_status(self, request: web.Request) -> web.Response:
        return json_response(self.status())

    async def h_endpoints(self, request: web.Request) -> web.Response:
        ns = request.query.get("namespace") or None
        return json_response([e.to_json() for e in self.endpoints.list(ns)])

    async def h_endpoint_get(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        return json_response(self.endpoints.find(ref, request.query.get("namespace") or None).to_json())

    async def h_endpoint_create(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise ValidationError("body must be an object")
        labels = body.get("labels") or {}
        if isinstance(labels, list):
            labels = parse_label_args(labels)
        from mesh.labels import validate_labels
        labels = validate_labels(labels, "--label")
        ns = body.get("namespace") or "default"
        from mesh.labels import name_error
        err = name_error(ns, "namespace")
        if err:
            raise ValidationError(err, path="--namespace")
        try:
            spec = parse_endpoint_spec(body.get("name"), ns, labels, {k: v for k, v in
                                       (("ip", body.get("ip")), ("command", body.get("command")),
                                        ("ports", body.get("ports"))) if v})
        except ValidationError as exc:
            raise ValidationError(exc.message, path={"metadata.name": "NAME", "spec.ip": "--ip",
                                                     "spec.command": "--command"}.get(exc.path, exc.path)) from None
        async with self.change_lock:
            ep = await asyncio.to_thread(self.endpoints.create, spec)
            try:
                await self.endpoint_event("created", ep)
            except BaseException:
                await asyncio.to_thread(self.endpoints.delete, ep.namespace, ep.name)
                await self.endpoint_event("deleted", ep)
                raise
        return json_response(ep.to_json(), status=201)

    async def h_endpoint_delete(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        async with self.change_lock:
            ep = await asyncio.to_thread(self.endpoints.delete, ns, name)
            await self.endpoint_event("deleted", ep)
        return json_response(ep.to_json())

    async def h_apply(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        with self.gc_pause.paused():
            docs = self._docs(body)
            results = await self.apply(docs)
        return json_response({"results": results})

    async def h_delete(self, request: web.Request) -> web.Response:
        docs = self._docs(await read_json(request))
        return json_response({"results": await self.delete_manifests(docs)})

    async def h_manifests(self, request: web.Request) -> web.Response:
        kind = request.query.get("kind", "")
        if not kind:
            raise ValidationError("query parameter kind is required")
        return json_response([{"namespace": ns, "name": n, "body": b} for ns, n, b in self.store.list(kind)])

    @staticmethod
    def _docs(body: Any) -> list[Document]:
        """The documents of a /v1/apply or /v1/delete body: `documents` (parsed: [{source, index, body}]) and/or
        `sources` ([{source, text}]: YAML text as the user wrote it, parsed here with the CLI's messages, so
        the CLI need not parse it first). `policiesOnly` (`ostium policy apply`): other kinds are refused."""
        if not isinstance(body, dict) or not (isinstance(body.get("documents"), list)
                                              or isinstance(body.get("sources"), list)):
            raise ValidationError("body must be {\"documents\": [...]} or {\"sources\": [{\"source\": NAME, "
                                  "\"text\": YAML}, ...]}")
        docs = [Document.from_json(d) for d in body.get("documents") or []]
        for s in body.get("sources") or []:
            if not isinstance(s, dict) or not isinstance(s.get("text"), str):
                raise ValidationError("each source must be an object with 'source' and 'text' (a string)")
            docs.extend(parse_yaml_text(s["text"], str(s.get("source") or "<api>")))
        if body.get("policiesOnly"):
            from mesh.components.policy import POLICY_KINDS

            require_kinds(docs, POLICY_KINDS, "a policy kind", "use `ostium apply`")
        return docs


def run_agent(config: Config) -> int:
    # The agent forks (endpoint commands, iproute2) while gRPC threads run; gRPC's fork handlers only
    # matter for children that use gRPC, which ours never do.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    agent = Agent(config)
    try:
        import uvloop
        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(agent.run())
    except OstiumError as exc:
        log.error(str(exc))
        return exc.exit_code
    return 0
