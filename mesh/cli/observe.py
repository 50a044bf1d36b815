"""`ostium observe`: flows with identities, like `hubble observe`.

    ostium observe [filters] [--last N | --since 5m] [-f] [-o compact|json|jsonpb|table]

Filters (repeat a flag for alternatives; different flags must all match):
  --pod/--from-pod/--to-pod [ns/]name-prefix   --label/--from-label/--to-label k=v,k2!=v
  --identity/--from-identity/--to-identity N|world|host ...   --namespace/--from-namespace/--to-namespace
  --ip/--from-ip/--to-ip   --port/--from-port/--to-port   --verdict   --drop-reason   --protocol
  --type trace|drop|l7   --traffic-direction   --http-method   --http-path REGEX   --http-status 200|4+|5+
  --kafka-topic   --since/--until (RFC 3339 or 5m)

Agent API: GET /v1/flows (query params = the flag names) → JSON list of flows, oldest first;
GET /v1/flows?follow=1 → JSON lines, with {"lost_events": N} when this client read too slowly;
GET /v1/flows/status → {"capacity", "lost", ...}. Flow JSON: see mesh/flows/model.py.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

DEFAULT_LAST = 20
_SIDED = ("pod", "label", "identity", "namespace", "ip", "port")
_GLOBAL = ("verdict", "drop-reason", "protocol", "type", "traffic-direction", "http-method", "http-path",
           "http-status", "kafka-topic")
_RESERVED = {1: "host", 2: "world", 3: "unmanaged", 4: "health", 5: "init", 6: "remote-node",
             7: "kube-apiserver", 8: "ingress"}
TABLE_COLUMNS = ("TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY")


def register(sub) -> None:
    p = sub.add_parser("observe", help="show flows (datapath, HTTP, Kafka) with identities, like hubble observe",
                       description=__doc__.split("\n\n", 1)[1].split("\nAgent API")[0],
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    for kind in _SIDED:
        for prefix in ("", "from-", "to-"):
            p.add_argument(f"--{prefix}{kind}", action="append", metavar=kind.upper(),
                           dest=f"f_{prefix}{kind}".replace("-", "_"),
                           help=argparse_help(prefix, kind))
    for flag in _GLOBAL:
        p.add_argument(f"--{flag}", *(["-t"] if flag == "type" else []), action="append",
                       dest=f"f_{flag}".replace("-", "_"), metavar=flag.split("-")[-1].upper())
    p.add_argument("--since", help="flows since a time (RFC 3339) or a duration ago (5m, 1h)")
    p.add_argument("--until", help="flows until a time (RFC 3339) or a duration ago")
    p.add_argument("-n", "--last", type=int, help=f"the newest N matching flows (default {DEFAULT_LAST}, "
                                                   "or all since --since)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new flows")
    p.add_argument("-o", "--output", choices=["compact", "json", "jsonpb", "table"], default="compact",
                   help="output format (default compact)")
    p.set_defaults(func=run)


def argparse_help(prefix: str, kind: str) -> str:
    side = {"": "either side", "from-": "the source", "to-": "the destination"}[prefix]
    what = {"pod": "pod [ns/]name prefix", "label": "label selector k=v,k2!=v", "identity": "security identity",
            "namespace": "namespace", "ip": "IP address", "port": "port"}[kind]
    return f"{what} of {side}"


def filter_params(args) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for kind in _SIDED:
        for prefix in ("", "from-", "to-"):
            v = getattr(args, f"f_{prefix}{kind}".replace("-", "_"), None)
            if v:
                params[f"{prefix}{kind}"] = v
    for flag in _GLOBAL:
        v = getattr(args, f"f_{flag}".replace("-", "_"), None)
        if v:
            params[flag] = v
    if args.since:
        params["since"] = args.since
    if args.until:
        params["until"] = args.until
    if args.last is not None:
        params["last"] = str(args.last)
    elif not args.follow and not args.since:
        params["last"] = str(DEFAULT_LAST)
    return params


# ---- formatting (of the agent's flow JSON: no model import needed) ----

def _time(flow: dict[str, Any]) -> str:
    t = flow.get("time", "")
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00")).astimezone()
    except ValueError:
        return t
    return dt.strftime("%b %d %H:%M:%S.") + f"{dt.microsecond // 1000:03d}"


def _port(flow: dict[str, Any], side: str) -> int:
    l4 = flow.get("l4") or {}
    for proto in l4.values():
        if isinstance(proto, dict) and proto.get(f"{side}_port"):
            return int(proto[f"{side}_port"])
    return 0


def endpoint_text(flow: dict[str, Any], side: str) -> str:
    ep = flow.get(side) or {}
    ip = (flow.get("IP") or {}).get(side, "")
    port = _port(flow, side)
    if ep.get("pod_name"):
        name = f"{ep['namespace']}/{ep['pod_name']}" if ep.get("namespace") else ep["pod_name"]
    else:
        name = ip
    if port:
        name += f":{port}"
    ident = ep.get("identity", 0)
    if ident in _RESERVED and not ep.get("pod_name"):
        return f"{name} ({_RESERVED[ident]})"
    return f"{name} (ID:{ident})" if ident else name


def format_compact(flow: dict[str, Any]) -> str:
    """Nov 26 05:01:02.123: default/xwing:41000 (ID:257) -> default/deathstar:80 (ID:256)
    http-request DROPPED (HTTP/1.1 PUT http://deathstar/v1/exhaust-port)"""
    arrow = "<-" if flow.get("is_reply") else "->"
    subtype = (flow.get("event_type") or {}).get("sub_type", "")
    return (f"{_time(flow)}: {endpoint_text(flow, 'source')} {arrow} {endpoint_text(flow, 'destination')} "
            f"{subtype} {flow.get('verdict', '')} ({flow.get('Summary', '')})")


def table_row(flow: dict[str, Any]) -> dict[str, str]:
    return {"TIMESTAMP": _time(flow), "SOURCE": endpoint_text(flow, "source"),
            "DESTINATION": endpoint_text(flow, "destination"),
            "TYPE": (flow.get("event_type") or {}).get("sub_type", ""), "VERDICT": flow.get("verdict", ""),
            "SUMMARY": flow.get("Summary", "")}


def _jsonpb(flow: dict[str, Any]) -> dict[str, Any]:
    return {"flow": flow, "node_name": flow.get("node_name", ""), "time": flow.get("time", "")}


def _print_one(rec: dict[str, Any], fmt: str, out) -> None:
    if "lost_events" in rec:
        if fmt in ("json", "jsonpb"):
            out.write(json.dumps(rec) + "\n")
        print(f"warning: {rec['lost_events']} flows were not delivered to this client (it read too slowly)",
              file=sys.stderr)
        return
    if fmt == "json":
        out.write(json.dumps(rec) + "\n")
    elif fmt == "jsonpb":
        out.write(json.dumps(_jsonpb(rec)) + "\n")
    elif fmt == "table":
        r = table_row(rec)
        out.write("  ".join(r[c] for c in TABLE_COLUMNS) + "\n")
    else:
        out.write(format_compact(rec) + "\n")


def run(args) -> int:
    from mesh.api.client import APIClient
    from mesh.flows.filters import parse_filters

    params = filter_params(args)
    parse_filters(params)   # bad filters fail here with the flag's name, before any agent call
    if args.follow and args.until:
        from mesh.errors import ValidationError
        raise ValidationError("cannot follow flows until a past time; drop --until or --follow", path="--until")
    client = APIClient(args.socket)
    out = sys.stdout
    if args.follow:
        for rec in client.stream("/v1/flows", {**params, "follow": "1"}):
            _print_one(rec, args.output, out)
            out.flush()
        return 0
    flows = client.get("/v1/flows", params)
    if args.output == "table":
        from mesh.cli.output import render_table
        out.write(render_table([table_row(f) for f in flows], [(c, c) for c in TABLE_COLUMNS]) + "\n")
    else:
        for f in flows:
            _print_one(f, args.output, out)
    out.flush()
    want = args.last if args.last is not None else (None if args.since else DEFAULT_LAST)
    if want is None or len(flows) < want:
        status = client.get("/v1/flows/status")
        if status.get("lost"):
            print(f"note: the flow ring (capacity {status['capacity']}) has overwritten {status['lost']} older "
                  "flows; matches among them are gone", file=sys.stderr)
    return 0
