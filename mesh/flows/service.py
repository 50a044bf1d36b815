"""Observability as one object for the agent: observer + metrics + background task + the
loopback HTTP listener (Prometheus, browser). The agent builds it, feeds it, mounts routes().

    flows = FlowsService(enricher=Enricher(...), capacity=65536, http_port=9962,
                         export_path="/var/log/ostium/flows.jsonl")
    await flows.start()
    agent.extra_routes.append(flows.routes)           # /v1/flows, /v1/servicemap, /metrics, /ui/
    datapath raw records  → flows.observer.ingest_datapath_raw(raw)   (or ingest_datapath_event(ev))
    Envoy ALS records     → flows.observer.ingest_http_record(rec)    (AccessLogReceiver callback)
    Kafka proxy records   → flows.observer.ingest_kafka_record(rec)
    gauges, xDS, policy   → flows.metrics.set_gauge_source(...), .xds_ack(...), ...
    endpoints/identities changed → flows.observer.invalidate_enrichment()
    await flows.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web

from mesh.flows.api import DEFAULT_HTTP_PORT, make_http_app, routes, serve_http
from mesh.flows.metrics import MetricsRegistry
from mesh.flows.model import Enricher
from mesh.flows.observer import DEFAULT_CAPACITY, DEFAULT_SUBSCRIBER_QUEUE, JsonlExporter, Observer


class FlowsService:
    def __init__(self, *, enricher: Enricher | None = None, capacity: int = DEFAULT_CAPACITY,
                 subscriber_queue: int = DEFAULT_SUBSCRIBER_QUEUE, http_host: str = "127.0.0.1",
                 http_port: int | None = DEFAULT_HTTP_PORT, export_path: str | None = None,
                 export_max_bytes: int = 64 * 1024 * 1024) -> None:
        exporter = JsonlExporter(export_path, export_max_bytes) if export_path else None
        self.observer = Observer(capacity=capacity, enricher=enricher, subscriber_queue=subscriber_queue,
                                 exporter=exporter)
        self.metrics = MetricsRegistry(self.observer)
        self.http_host = http_host
        self.http_port = http_port        # None: no TCP listener; after start(): the bound port
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task | None = None

    def routes(self) -> list[web.RouteDef]:
        return routes(self.observer, self.metrics)

    async def start(self) -> None:
        self._task = asyncio.create_task(self.observer.run(), name="flows-observer")
        if self.http_port is not None:
            try:
                self._runner, self.http_port = await serve_http(
                    make_http_app(self.observer, self.metrics), self.http_host, self.http_port)
            except BaseException:
                await self.stop()
                raise

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.observer.flush_export()
        if self.observer.exporter is not None:
            self.observer.exporter.close()

    def status(self) -> dict[str, Any]:
        """For `ostium status`: the ring, followers and where metrics/UI are served."""
        st = self.observer.status()
        if self._runner is not None:
            st["http"] = f"http://{self.http_host}:{self.http_port}/"
        return st
