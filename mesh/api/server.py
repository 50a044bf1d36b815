"""The agent's local API: aiohttp on a unix socket. OstiumErrors become JSON error bodies."""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Awaitable, Callable

from aiohttp import web

from mesh import errors

log = logging.getLogger("ostium.api")

STATUS_BY_ERROR: list[tuple[type[errors.OstiumError], int]] = [
    (errors.ValidationError, 400),
    (errors.NotFoundError, 404),
    (errors.ConflictError, 409),
    (errors.IPAMError, 409),
    (errors.OstiumError, 500),
]


def error_response(exc: errors.OstiumError) -> web.Response:
    status = next(code for cls, code in STATUS_BY_ERROR if isinstance(exc, cls))
    body = {"error": {"type": type(exc).__name__, "message": str(exc)}}
    return web.json_response(body, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    try:
        return await handler(request)
    except errors.OstiumError as exc:
        return error_response(exc)
    except web.HTTPException:
        raise
    except Exception as exc:  # a bug: say so, keep serving
        log.exception("API handler failed", extra={"path": request.path})
        return web.json_response({"error": {"type": "OstiumError", "message": f"internal error: {exc}"}},
                                 status=500)


async def read_json(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise errors.ValidationError("request body is not valid JSON") from None


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))


def make_app(routes: list[web.RouteDef]) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=64 * 1024 * 1024)
    app.add_routes(routes)
    return app


async def serve_unix(app: web.Application, path: str) -> web.AppRunner:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)  # stale socket of a dead agent; the state lock proves no agent owns it
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.UnixSite(runner, path)
    await site.start()
    os.chmod(path, 0o660)
    return runner
