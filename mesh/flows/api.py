"""HTTP routes of the flow observer, for the agent's unix-socket API and a TCP listener.

  GET /v1/flows              filters as query params (mesh/flows/filters.py names), `last`, `since`,
                             `until` → JSON list of flows (oldest first). Header
                             X-Ostium-Flows-Lost: N when the ring had overwritten flows that could
                             have belonged to the answer.
  GET /v1/flows?follow=1     JSON lines: history (`last`/`since`) then live flows; a slow client's
                             losses arrive in-band as {"lost_events": N}.
  GET /v1/flows/status       ring capacity, stored, seen, lost, followers
  GET /v1/servicemap         {"nodes", "edges"} over the flows in the ring (same filters; without
                             `last` or `since`: the newest 10,000 matching flows)
  GET /metrics               Prometheus text (needs a MetricsRegistry)
  GET /metrics/envoy         Envoy's own /stats/prometheus, proxied from its admin address
  GET /ui/                   the web UI (static files in mesh/flows/ui/)

`routes(observer, metrics)` gives the route table to mount; `make_http_app(observer, metrics)` a
whole aiohttp Application for 127.0.0.1:PORT (Prometheus and the browser cannot use a unix socket).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mesh.errors import OstiumError, ValidationError
from mesh.flows.filters import parse_filters
from mesh.flows.servicemap import service_map

if TYPE_CHECKING:  # pragma: no cover
    from mesh.flows.metrics import MetricsRegistry
    from mesh.flows.observer import Observer

UI_DIR = Path(__file__).parent / "ui"
UI_FILES = {"index.html": "text/html", "app.js": "application/javascript", "style.css": "text/css"}
_NON_FILTER = ("follow",)
_TRUE = ("1", "true", "yes", "on")
HEARTBEAT_SECONDS = 2.0
SERVICEMAP_DEFAULT_LAST = 10_000   # without last/since the map covers the newest flows only


def _params(request: web.Request) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in request.query.items():
        out.setdefault(k, []).append(v)
    return out


def _dumps(d: Any) -> str:
    return json.dumps(d, separators=(",", ":"), default=str)


async def flows_handler(observer: "Observer", request: web.Request) -> web.StreamResponse:
    params = _params(request)
    flt = parse_filters(params, ignore=_NON_FILTER)
    follow = request.query.get("follow", "").lower() in _TRUE
    if not follow:
        flows, incomplete = await observer.query_async(flt, last=flt.last, since=flt.since, until=flt.until)
        headers = {"X-Ostium-Flows-Lost": str(observer.lost)} if incomplete else {}
        return web.Response(text=_dumps([f.to_json() for f in flows]), content_type="application/json",
                            headers=headers)
    if flt.until is not None:
        raise ValidationError("cannot follow flows until a past time; drop --until or --follow",
                              path="--until")
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    try:
        async for item in observer.follow(flt, last=flt.last or 0, since=flt.since,
                                          heartbeat=HEARTBEAT_SECONDS):
            if item is None:   # idle: has the client gone?
                if request.transport is None or request.transport.is_closing():
                    break
                continue
            # write() waits for the socket to drain: a slow client stalls only its own loop
            # here, while its subscription queue overflows (counted) and ingest goes on.
            await resp.write((_dumps(item.to_json()) + "\n").encode())
    except (ConnectionResetError, ConnectionError):
        pass
    return resp


async def flows_status_handler(observer: "Observer", request: web.Request) -> web.Response:
    return web.json_response(observer.status())


async def servicemap_handler(observer: "Observer", request: web.Request) -> web.Response:
    flt = parse_filters(_params(request), ignore=_NON_FILTER)
    last = flt.last if flt.last is not None or flt.since is not None else SERVICEMAP_DEFAULT_LAST
    flows, incomplete = await observer.query_async(flt, last=last, since=flt.since, until=flt.until)
    data = service_map(flows)
    data["flows"] = len(flows)
    data["lost"] = observer.lost if incomplete else 0
    return web.Response(text=_dumps(data), content_type="application/json")


async def metrics_handler(metrics: "MetricsRegistry", request: web.Request) -> web.Response:
    from mesh.flows.metrics import CONTENT_TYPE
    body = metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def envoy_metrics_handler(metrics: "MetricsRegistry", request: web.Request) -> web.Response:
    url = metrics.envoy_admin_url() if metrics.envoy_admin_url is not None else None
    if not url:
        raise OstiumError("Envoy's admin address is not known: is the L7 proxy enabled and running?")
    import aiohttp
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.get(url.rstrip("/") + "/stats/prometheus") as r:
                body = await r.read()
                if r.status != 200:
                    raise OstiumError(f"Envoy admin answered HTTP {r.status} on /stats/prometheus")
                return web.Response(body=body, headers={"Content-Type": r.headers.get(
                    "Content-Type", "text/plain; version=0.0.4; charset=utf-8")})
    except aiohttp.ClientError as exc:
        raise OstiumError(f"cannot reach Envoy's admin at {url}: {exc}") from None


async def ui_handler(request: web.Request) -> web.StreamResponse:
    name = request.match_info.get("name") or "index.html"
    if name not in UI_FILES:
        raise web.HTTPNotFound(text=f"no UI file {name!r}")
    return web.Response(body=(UI_DIR / name).read_bytes(),
                        headers={"Content-Type": UI_FILES[name] + "; charset=utf-8",
                                 "Cache-Control": "no-cache"})


async def _ui_redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui/")


def routes(observer: "Observer", metrics: "MetricsRegistry | None" = None) -> list[web.RouteDef]:
    """Routes to mount on the agent's API (unix socket) and on the TCP app."""
    def bind(fn, obj):
        async def handler(request: web.Request) -> web.StreamResponse:
            return await fn(obj, request)
        return handler

    out = [
        web.get("/v1/flows", bind(flows_handler, observer)),
        web.get("/v1/flows/status", bind(flows_status_handler, observer)),
        web.get("/v1/servicemap", bind(servicemap_handler, observer)),
        web.get("/ui", _ui_redirect),
        web.get("/ui/", ui_handler),
        web.get("/ui/{name}", ui_handler),
    ]
    if metrics is not None:
        out += [web.get("/metrics", bind(metrics_handler, metrics)),
                web.get("/metrics/envoy", bind(envoy_metrics_handler, metrics))]
    return out


def _host_allowed(host: str, allowed: frozenset[str]) -> bool:
    import ipaddress
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]").lower()
    if name in allowed:
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def make_http_app(observer: "Observer", metrics: "MetricsRegistry | None" = None,
                  allowed_hosts: "frozenset[str] | set[str]" = frozenset({"localhost"})) -> web.Application:
    """The TCP-side app (serve it on 127.0.0.1:PORT): metrics, UI, flows and service map.

    Requests must name the server by an IP address or one of `allowed_hosts` in their Host
    header: a web page elsewhere cannot read the flows through DNS rebinding."""
    from mesh.api.server import make_app
    allowed = frozenset(h.lower() for h in allowed_hosts)

    @web.middleware
    async def host_guard(request: web.Request, handler):
        if not _host_allowed(request.host or "", allowed):
            return web.json_response({"error": {"type": "ValidationError", "message":
                                                f"Host {request.host!r} is not allowed here"}}, status=403)
        return await handler(request)

    app = make_app(routes(observer, metrics))
    app.middlewares.append(host_guard)
    app.router.add_get("/", _ui_redirect)
    return app


DEFAULT_HTTP_PORT = 9962   # the port Cilium's agent uses for Prometheus


async def serve_http(app: web.Application, host: str = "127.0.0.1", port: int = DEFAULT_HTTP_PORT
                     ) -> tuple[web.AppRunner, int]:
    """Serve make_http_app() on host:port (port 0: any free port). Returns (runner, bound port);
    `await runner.cleanup()` stops it."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        from mesh.errors import ConfigError
        raise ConfigError(f"cannot listen on {host}:{port} for metrics and the flow UI: {exc.strerror} "
                          "(choose another port)") from None
    bound = site._server.sockets[0].getsockname()[1] if site._server else port  # type: ignore[union-attr]
    return runner, bound
