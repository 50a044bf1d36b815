"""Agent API handlers for the datapath, as plain functions of the component objects; the agent's
server mounts them (routes in the docstrings). All return JSON-able data or raise OstiumError.

  GET /v1/bpf/maps                 -> bpf_maps(dp)
  GET /v1/bpf/maps/{name}          -> bpf_map_dump(dp, name)
  GET /v1/services                 -> services_list(services, dp)        (?namespace=)
  GET /v1/services/{ns}/{name}     -> service_get(services, dp, ns, name)
  GET /v1/monitor (JSON lines)     -> monitor(hub, types, endpoint)       (?type=drop&type=trace&endpoint=ID)
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Iterable

from mesh.errors import NotFoundError, ValidationError


def bpf_maps(dp: Any) -> list[dict[str, Any]]:
    return dp.maps_info()


def bpf_map_dump(dp: Any, name: str) -> list[dict[str, Any]]:
    return dp.dump_map(name)


def _service_json(svc: Any, frontends: Iterable[Any]) -> dict[str, Any]:
    d = svc.to_json()
    mine = [f for f in frontends if f.service == f"{svc.namespace}/{svc.name}"]
    d["frontends"] = [f.to_json() for f in mine]
    d["backends"] = sorted({f"{b.ip}:{b.port}" for f in mine for b in f.backends})
    return d


def services_list(services: Iterable[Any], dp: Any, namespace: str | None = None) -> list[dict[str, Any]]:
    fronts = dp.frontends()
    return [_service_json(s, fronts) for s in sorted(services, key=lambda s: (s.namespace, s.name))
            if namespace in (None, "", s.namespace)]


def service_get(services: Iterable[Any], dp: Any, namespace: str, name: str) -> dict[str, Any]:
    for s in services:
        if s.namespace == namespace and s.name == name:
            return _service_json(s, dp.frontends())
    raise NotFoundError(f"service {namespace}/{name} not found")


def monitor(hub: Any, types: Iterable[str] = (), endpoint: str | int | None = None
            ) -> AsyncIterator[dict[str, Any]]:
    wanted = set(types)
    bad = wanted - {"drop", "trace"}
    if bad:
        raise ValidationError(f"unknown event type {sorted(bad)[0]!r} (drop, trace)", path="type")
    ep: int | None = None
    if endpoint not in (None, ""):
        try:
            ep = int(endpoint)  # type: ignore[arg-type]
        except ValueError:
            raise ValidationError(f"endpoint must be a number, got {endpoint!r}", path="endpoint") from None
    return hub.subscribe(wanted or None, ep)
