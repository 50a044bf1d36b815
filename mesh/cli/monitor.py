"""`ostium monitor`: the datapath's trace and drop events, live, like `cilium monitor`.

    ostium monitor [--type drop|trace] [--endpoint ID] [-o text|json]

Streams GET /v1/monitor (JSON lines, format in mesh/datapath/events.py). Identities are shown
with their labels when the agent resolved them, else looked up once via GET /v1/identities/{id}.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable


def register(sub) -> None:
    p = sub.add_parser("monitor", help="print datapath trace and drop events as they happen")
    p.add_argument("-t", "--type", action="append", choices=["drop", "trace"], default=[],
                   help="only these event types (repeatable; default both)")
    p.add_argument("--endpoint", type=int, help="only events of this endpoint id")
    p.add_argument("-o", "--output", choices=["text", "json"], default="text")
    p.set_defaults(func=run)


def _addr(side: dict, proto: str) -> str:
    return side["ip"] if proto == "ICMP" or "port" not in side else f"{side['ip']}:{side['port']}"


def _ident(side: dict, labels_of: Callable[[int], dict | None]) -> str:
    ident = side["identity"]
    labels = side.get("labels")
    if labels is None:
        labels = labels_of(ident)
    if labels:
        return f"{ident} ({','.join(f'{k}={v}' if v else k for k, v in sorted(labels.items()))})"
    return str(ident)


def format_event(rec: dict[str, Any], labels_of: Callable[[int], dict | None] = lambda i: None) -> str:
    proto = rec["protocol"]
    what = f"{rec['type'].upper()}"
    if rec["type"] == "drop":
        what += f" ({rec.get('reason_text', rec['reason'])})"
    else:
        what += f" {rec['verdict'].lower()}"
        if rec.get("proxy_port"):
            what += f" to proxy port {rec['proxy_port']}"
    detail = proto
    if rec.get("tcp_flags"):
        detail += " " + ",".join(rec["tcp_flags"])
    if "icmp_type" in rec:
        detail += f" type {rec['icmp_type']}"
    return (f"{rec['time']} {what} ep {rec['endpoint']} {rec['direction']}: "
            f"{_addr(rec['src'], proto)} -> {_addr(rec['dst'], proto)} {detail}, "
            f"identity {_ident(rec['src'], labels_of)} -> {_ident(rec['dst'], labels_of)}")


def run(args) -> int:
    from mesh.api.client import APIClient
    from mesh.errors import OstiumError
    client = APIClient(args.socket)
    cache: dict[int, dict | None] = {}

    def labels_of(ident: int) -> dict | None:
        if ident not in cache:
            try:
                cache[ident] = client.get(f"/v1/identities/{ident}").get("labels")
            except OstiumError:
                cache[ident] = None
        return cache[ident]

    params = {"type": args.type or None, "endpoint": args.endpoint}
    for rec in client.stream("/v1/monitor", params):
        if args.output == "json":
            sys.stdout.write(json.dumps(rec) + "\n")
        else:
            sys.stdout.write(format_event(rec, labels_of) + "\n")
        sys.stdout.flush()
    return 0
