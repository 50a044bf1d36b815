"""Backend selection: a Service plus endpoints -> Frontends (pure)."""

from __future__ import annotations

from typing import Any, Iterable

from mesh.services.model import (Backend, BackendCandidate, EndpointPort, Frontend, Service,
                                 SessionAffinity)


def candidate_from_endpoint(ep: Any) -> BackendCandidate:
    """Adapter for the agent's mesh.endpoints.model.Endpoint (duck-typed: spec.labels, ...)."""
    spec = ep.spec
    return BackendCandidate(
        namespace=spec.namespace, name=spec.name, labels=dict(spec.labels), ip=ep.ip,
        ports=tuple(EndpointPort(p.name, p.port, p.protocol) for p in spec.ports),
        ready=getattr(ep, "state", "ready") == "ready")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    # Kubernetes: a Service without a selector selects nothing (its endpoints come from elsewhere).
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def resolve_service(svc: Service, candidates: Iterable[BackendCandidate]) -> list[Frontend]:
    """One Frontend per service port. A named targetPort resolves per endpoint; an endpoint
    that has no port of that name is not a backend of that port (as in Kubernetes)."""
    members = sorted((c for c in candidates
                      if c.ready and c.namespace == svc.namespace and selects(svc.selector, c.labels)),
                     key=lambda c: (c.ip, c.name))
    timeout = svc.affinity_timeout if svc.session_affinity is SessionAffinity.CLIENT_IP else 0
    out: list[Frontend] = []
    for sp in svc.ports:
        backends: list[Backend] = []
        for c in members:
            if isinstance(sp.target_port, str):
                match = [p for p in c.ports if p.name == sp.target_port and p.protocol == sp.protocol]
                if not match:
                    continue
                port = match[0].port
            else:
                port = sp.target_port or sp.port
            backends.append(Backend(c.ip, port, c.weight, f"{c.namespace}/{c.name}"))
        out.append(Frontend(svc.cluster_ip, sp.port, sp.protocol, tuple(backends), timeout,
                            f"{svc.namespace}/{svc.name}"))
    return out


def resolve_all(services: Iterable[Service], candidates: Iterable[BackendCandidate]) -> list[Frontend]:
    cands = list(candidates)
    out: list[Frontend] = []
    for svc in services:
        out.extend(resolve_service(svc, cands))
    return out
