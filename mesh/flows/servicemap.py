"""The service map: workloads as nodes, who-talks-to-whom as edges, from a list of flows (pure)."""

from __future__ import annotations

from typing import Any, Iterable

from mesh.flows.model import Endpoint, Flow, Verdict
from mesh.flows.observer import workload_or_ip

_ALLOWED = (Verdict.FORWARDED, Verdict.REDIRECTED, Verdict.AUDIT)
_MAX_L7_ROWS = 50


def _node(e: Endpoint) -> dict[str, Any]:
    nid = workload_or_ip(e)
    return {"id": nid, "label": e.workload or nid, "namespace": e.namespace, "identity": e.identity,
            "labels": list(e.labels), "kind": "reserved" if nid.startswith("reserved:") else
            "workload" if e.workload else "external"}


def service_map(flows: Iterable[Flow]) -> dict[str, Any]:
    """{"nodes": [...], "edges": [...]}: an edge per (source workload, destination workload) with
    flow counts (allowed = forwarded/redirected/audit, denied = dropped), L4 ports and, for L7,
    per-request rows (HTTP method/path/code or Kafka api/topic) with their verdicts."""
    nodes: dict[str, dict[str, Any]] = {}
    edges: dict[tuple[str, str], dict[str, Any]] = {}
    http: dict[tuple[str, str], dict[tuple, int]] = {}
    kafka: dict[tuple[str, str], dict[tuple, int]] = {}
    for f in flows:
        if f.is_reply:
            continue   # the reply direction would draw every edge twice
        src, dst = _node(f.source), _node(f.destination)
        nodes.setdefault(src["id"], src)
        nodes.setdefault(dst["id"], dst)
        key = (src["id"], dst["id"])
        e = edges.get(key)
        if e is None:
            e = edges[key] = {"id": f"{key[0]}->{key[1]}", "source": key[0], "target": key[1], "flows": 0,
                              "allowed": 0, "denied": 0, "errors": 0, "requests": 0, "ports": set(),
                              "protocols": set(), "last_seen": 0.0}
        e["flows"] += 1
        if f.verdict in _ALLOWED:
            e["allowed"] += 1
        elif f.verdict is Verdict.DROPPED:
            e["denied"] += 1
        else:
            e["errors"] += 1
        e["last_seen"] = max(e["last_seen"], f.time)
        if f.destination.port:
            e["ports"].add(f"{f.destination.port}/{f.protocol}")
        if f.l7 is not None:
            e["requests"] += 1
            if f.l7.http is not None:
                e["protocols"].add("http")
                h = f.l7.http
                k = (h.method, h.path, h.code, f.verdict.value)
                http.setdefault(key, {})[k] = http.setdefault(key, {}).get(k, 0) + 1
            elif f.l7.kafka is not None:
                e["protocols"].add("kafka")
                kf = f.l7.kafka
                k = (kf.api_key, kf.topic, f.verdict.value)
                kafka.setdefault(key, {})[k] = kafka.setdefault(key, {}).get(k, 0) + 1
        elif f.protocol:
            e["protocols"].add(f.protocol.lower())
    out_edges = []
    for key, e in sorted(edges.items()):
        e["ports"] = sorted(e["ports"])
        e["protocols"] = sorted(e["protocols"])
        rows = sorted(http.get(key, {}).items(), key=lambda kv: -kv[1])[:_MAX_L7_ROWS]
        e["http"] = [{"method": m, "path": p, "code": c, "verdict": v, "count": n} for (m, p, c, v), n in rows]
        krows = sorted(kafka.get(key, {}).items(), key=lambda kv: -kv[1])[:_MAX_L7_ROWS]
        e["kafka"] = [{"api_key": a, "topic": t, "verdict": v, "count": n} for (a, t, v), n in krows]
        out_edges.append(e)
    return {"nodes": [nodes[k] for k in sorted(nodes)], "edges": out_edges}
