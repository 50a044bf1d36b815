"""L7Proxy: the xDS server, the access-log receiver and the Envoy process, composed for the agent.

    proxy = L7Proxy(ProxyConfig(state_dir=Path("/var/lib/ostium/envoy")), on_record=flows.add)
    await proxy.start()                           # xDS + ALS on one gRPC server, then Envoy
    nacked = await proxy.apply(port_policies, ipcache)   # translate → snapshot → ACK/NACK
    proxy.status()                                # for `ostium status`
    await proxy.stop()

`apply` validates and translates before anything changes: bad input raises ValidationError and
Envoy keeps its current config. Envoy missing or failing to start is an EnvoyError from `start()`
(or, with require_envoy=False, the xDS server keeps running and `status()` shows the failure).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from xdsserver.als import AccessLogReceiver, L7Record
from xdsserver.cache import PackMemo, Snapshot, SnapshotCache
from xdsserver.envoy import ALS_CLUSTER, EnvoyConfig, EnvoyError, EnvoyProcess, XdsMode
from xdsserver.server import ResourceStatus, XdsServer
from xdsserver.translate import PortPolicy, ProxyOptions, TranslateInput, translate


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    state_dir: Path
    node_id: str = "ostium"
    # Where the xDS/ALS gRPC server listens: a unix socket (default: state_dir/xds.sock) or
    # 127.0.0.1:xds_port. A stable address lets Envoy outlive an agent restart (it reconnects and
    # the new agent adopts it); a picked port (xds_port=0 with xds_unix_path="") does not.
    xds_port: int = 0
    xds_unix_path: str | None = None
    xds_mode: XdsMode = XdsMode.DELTA
    ingress_proxy_port: int = 15001
    egress_proxy_port: int = 15002
    options: ProxyOptions = field(default_factory=ProxyOptions)
    envoy_log_level: str = "warning"
    envoy_binary: str | None = None
    envoy_concurrency: int = 2

    @property
    def proxy_ports(self) -> dict[str, int]:
        """For translate.port_policies_from_endpoint."""
        return {"ingress": self.ingress_proxy_port, "egress": self.egress_proxy_port}


class L7Proxy:
    def __init__(self, config: ProxyConfig,
                 on_record: Callable[[L7Record], object] | None = None) -> None:
        self.config = config
        self.cache = SnapshotCache()
        self.server = XdsServer(self.cache)
        self.als = AccessLogReceiver(on_record or (lambda _r: None))
        self.envoy: EnvoyProcess | None = None
        self.start_error = ""
        self._memo = PackMemo()
        # Resources of other producers (the gateways) that every snapshot carries beside the L7
        # policy's: source name → resources by type URL (proto3 JSON dicts). Set with set_extra.
        self.extra: dict[str, Mapping[str, list]] = {}

    async def start(self, require_envoy: bool = True) -> None:
        cfg = self.config
        unix_path = cfg.xds_unix_path
        if unix_path is None and not cfg.xds_port:
            Path(cfg.state_dir).mkdir(parents=True, exist_ok=True)
            unix_path = str(Path(cfg.state_dir) / "xds.sock")
        target = await self.server.start(port=cfg.xds_port, unix_path=unix_path or None,
                                         servicers=[self.als])
        # Envoy is not ready before its first LDS/CDS answer, and a SotW stream only answers
        # once a snapshot exists: start from an empty one (no listeners: L7 flows fail closed).
        if self.cache.get_snapshot(cfg.node_id) is None:
            self.cache.set_snapshot(cfg.node_id, Snapshot.build({}))
        self.envoy = EnvoyProcess(EnvoyConfig(
            state_dir=cfg.state_dir, node_id=cfg.node_id, xds_target=target,
            xds_mode=cfg.xds_mode, log_level=cfg.envoy_log_level, binary=cfg.envoy_binary,
            concurrency=cfg.envoy_concurrency))
        try:
            await self.envoy.start()
        except EnvoyError as exc:
            self.start_error = str(exc)
            if require_envoy:
                await self.server.stop(0)
                raise

    async def stop(self) -> None:
        try:
            if self.envoy is not None:
                await self.envoy.stop()
        finally:
            await self.server.stop(0)

    async def detach(self) -> None:
        """Agent restart: stop serving xDS but leave Envoy running with its config; the next
        L7Proxy with the same config adopts it and Envoy reconnects to it."""
        try:
            if self.envoy is not None:
                await self.envoy.detach()
        finally:
            await self.server.stop(0)

    def translate(self, ports: Iterable[PortPolicy],
                  ipcache: Mapping[int, Iterable[str]]) -> Snapshot:
        """Pure part of apply: validate + translate + build (raises ValidationError)."""
        opts = self.config.options
        if opts.als_cluster and opts.als_cluster != ALS_CLUSTER:
            raise ValueError(f"ProxyOptions.als_cluster must be {ALS_CLUSTER!r} (the bootstrap's)")
        inp = TranslateInput(ports=tuple(ports),
                             ipcache={k: tuple(str(v) for v in vs) for k, vs in ipcache.items()},
                             options=opts)
        by_type = translate(inp).by_type()
        for source in sorted(self.extra):
            for type_url, items in self.extra[source].items():
                by_type.setdefault(type_url, []).extend(items)
        return Snapshot.build(by_type, memo=self._memo)

    def set_extra(self, source: str, resources: Mapping[str, Iterable[dict]] | None) -> None:
        """Carry `resources` (by type URL) in every later snapshot; None drops them. Takes effect
        with the next `apply` (names must not clash with the L7 policy's: Snapshot.build rejects
        duplicates with a ValidationError, and Envoy keeps its config)."""
        if resources is None:
            self.extra.pop(source, None)
        else:
            self.extra[source] = {str(t): list(items) for t, items in resources.items()}

    def set(self, snapshot: Snapshot) -> None:
        self.cache.set_snapshot(self.config.node_id, snapshot)

    async def apply(self, ports: Iterable[PortPolicy], ipcache: Mapping[int, Iterable[str]],
                    timeout: float = 10.0) -> list[ResourceStatus]:
        """Translate, push, and wait for Envoy's answer; returns what Envoy rejected."""
        snap = self.translate(ports, ipcache)
        self.set(snap)
        if self.envoy is None or not self.server.connected_nodes():
            return []  # nothing to wait for: Envoy gets it when it connects
        return await self.server.wait_applied(self.config.node_id, snap, timeout)

    def status(self) -> dict:
        """JSON-ready: {"envoy": {...state...}, "xds": {...per-resource ACK/NACK...}}."""
        envoy = self.envoy.state().to_dict() if self.envoy else {"state": "stopped"}
        if self.start_error and envoy.get("state") != "running":
            envoy["last_error"] = envoy.get("last_error") or self.start_error
        xds = self.server.status()
        xds["mode"] = self.config.xds_mode.value
        return {"envoy": envoy, "xds": xds,
                "access_log": {"received": self.als.received, "errors": self.als.errors}}


STATUS_COLUMNS = ["node", "type", "name", "state", "version_acked", "version_sent", "nack_message"]


def status_rows(status: dict) -> list[dict]:
    """`L7Proxy.status()` flattened to one row per resource (for `-o table`, STATUS_COLUMNS)."""
    rows = []
    for node in status.get("xds", {}).get("nodes", []):
        for r in node["resources"]:
            rows.append({"node": node["node_id"], "type": r["type"], "name": r["name"],
                         "state": r["state"], "version_acked": r["version_acked"],
                         "version_sent": r["version_sent"], "nack_message": r["nack_message"]})
    return rows


async def handle_proxy_status(proxy: L7Proxy | None, params: Mapping[str, str] | None = None) -> dict:
    """Agent API handler for `GET /v1/proxy/status` (what `ostium status` shows for L7).

    Returns `L7Proxy.status()`; with `?node=ID` only that node's resources; with `?nacked=1` only
    resources Envoy rejected. Without an L7 proxy (disabled in config): {"envoy": {"state":
    "disabled"}}.
    """
    if proxy is None:
        return {"envoy": {"state": "disabled"}, "xds": {"nodes": []}}
    status = proxy.status()
    params = params or {}
    nodes = status["xds"]["nodes"]
    if params.get("node"):
        nodes = [n for n in nodes if n["node_id"] == params["node"]]
    if params.get("nacked") in ("1", "true", "yes"):
        nodes = [dict(n, resources=[r for r in n["resources"] if r["state"] == "nacked"])
                 for n in nodes]
    status["xds"]["nodes"] = nodes
    return status
