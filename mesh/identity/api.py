"""Agent API handlers for identities and the ipcache, as plain async functions the agent mounts.

They take the component and the request's query/path values, return JSON-ready data and raise
OstiumError subclasses (ValidationError → 400, NotFoundError → 404, IdentityError → 500/503), which
the agent renders as ``{"error": {"type", "message"}}``.

    GET /v1/identities?label=K=V&label=...&match=subset|exact
        → list_identities(allocator, labels=[...], match=...) → [{"id", "labels", "references",
          "reserved", "owners"}], sorted by id, reserved identities included.
    GET /v1/identities/{id}           → get_identity(allocator, id_text) → one such dict
    GET /v1/ipcache?ip=A              → dump_ipcache(ipcache, ip=...) → [{"prefix", "identity",
          "source", "tunnelEndpoint"}] (all entries, or the one entry `ip` matches, or world)

Label queries: ``k8s:app=web`` matches that source only; ``app=web`` matches any source; a label
without ``=`` (``reserved:host``) means an empty value. `subset` (default) returns the identities
having all the given labels; `exact` the identity whose label set is exactly the given one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from mesh.errors import NotFoundError, ValidationError
from mesh.identity.labels import SOURCE_ANY, split_label_key

if TYPE_CHECKING:
    from mesh.identity.allocator import Identity, IdentityAllocator
    from mesh.identity.ipcache import IPCache

MATCH_MODES = ("subset", "exact")


def parse_label_query(items: Iterable[str], path: str = "label") -> list[tuple[str, str, str]]:
    """``["k8s:app=web", "tier"]`` → ``[("k8s", "app", "web"), ("any", "tier", "")]``."""
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip():
            raise ValidationError(f"empty label; use KEY=VALUE, e.g. k8s:app=web", path=f"{path}[{i}]")
        key, _, value = item.strip().partition("=")
        if not key:
            raise ValidationError(f"{item!r} has no key; use KEY=VALUE, e.g. k8s:app=web", path=f"{path}[{i}]")
        source, name = split_label_key(key)
        out.append((source, name, value))
    return out


def _has(labels: Mapping[str, str], want: tuple[str, str, str]) -> bool:
    source, name, value = want
    for key, val in labels.items():
        s, n = split_label_key(key)
        if n == name and val == value and (source == SOURCE_ANY or source == s):
            return True
    return False


def matches(labels: Mapping[str, str], query: Sequence[tuple[str, str, str]], match: str = "subset") -> bool:
    if not all(_has(labels, q) for q in query):
        return False
    return match != "exact" or len(labels) == len(query)


async def list_identities(allocator: "IdentityAllocator", labels: Sequence[str] | None = None,
                          match: str = "subset") -> list[dict]:
    if match not in MATCH_MODES:
        raise ValidationError(f"unknown match mode {match!r}; use subset or exact", path="match")
    query = parse_label_query(labels or [])
    idents: list[Identity] = await allocator.list()
    return [i.to_api() for i in idents if matches(i.labels, query, match)]


async def get_identity(allocator: "IdentityAllocator", identity_id: str | int) -> dict:
    try:
        n = int(identity_id)
    except (TypeError, ValueError):
        raise ValidationError(f"{identity_id!r} is not an identity number", path="id") from None
    ident = await allocator.get(n)
    if ident is None:
        raise NotFoundError(f"identity {n} does not exist (see `ostium identity list`)")
    return ident.to_api()


def dump_ipcache(ipcache: "IPCache", ip: str | None = None) -> list[dict]:
    if ip is None:
        return ipcache.dump()
    entry = ipcache.lookup_entry(ip)
    if entry is None:
        return [{"prefix": None, "identity": ipcache.lookup(ip), "source": "default", "tunnelEndpoint": None}]
    return [entry.to_api()]


def routes(allocator: "IdentityAllocator", ipcache: "IPCache | None" = None) -> list:
    """aiohttp routes for the handlers above, ready for `mesh.api.server.make_app` (errors are
    rendered by its middleware)."""
    from aiohttp import web

    from mesh.api.server import json_response

    async def list_handler(request: web.Request) -> web.Response:
        return json_response(await list_identities(allocator, request.query.getall("label", []),
                                                   request.query.get("match", "subset")))

    async def get_handler(request: web.Request) -> web.Response:
        return json_response(await get_identity(allocator, request.match_info["id"]))

    table = [web.get("/v1/identities", list_handler), web.get("/v1/identities/{id}", get_handler)]
    if ipcache is not None:
        async def ipcache_handler(request: web.Request) -> web.Response:
            return json_response(dump_ipcache(ipcache, request.query.get("ip")))
        table.append(web.get("/v1/ipcache", ipcache_handler))
    return table
