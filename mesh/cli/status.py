"""`ostium status`: agent health, versions, kernel features (and what a missing one disables), components."""

from __future__ import annotations

from mesh.api.client import APIClient
from mesh.cli.output import add_output_flag, emit


def register(sub) -> None:
    p = sub.add_parser("status", help="agent health, kernel features and components")
    add_output_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    st = APIClient(args.socket).get("/v1/status")
    if args.output != "table":
        emit(st, args.output)
        return 0
    a = st["agent"]
    print(f"Agent:       {a['state']} (ostium {a['version']}, pid {a['pid']}, up {a['uptime_seconds']}s, "
          f"node {a['node']})")
    print(f"State dir:   {a['state_dir']}")
    v = st.get("versions") or {}
    if v:
        print("Versions:    " + ", ".join(f"{k} {val}" for k, val in v.items()))
    n = st["network"]
    print(f"Pod CIDR:    {n['pod_cidr']} (router {n['router_ip']}, {n['addresses_in_use']}/{n['addresses_total']} "
          f"addresses in use)")
    print(f"Service CIDR:{' '}{n['service_cidr']}")
    e = st["endpoints"]
    print(f"Endpoints:   {e['total']}" + (f" ({len(e['not_ready'])} not ready: {', '.join(e['not_ready'])})"
                                          if e["not_ready"] else ""))
    print("Kernel:")
    for f in st["kernel"]:
        mark = "ok  " if f["available"] else "MISSING"
        extra = f" -> disables {f['disables']}" if not f["available"] else ""
        print(f"  {f['feature']:<12} {mark:<8} {f['detail']}{extra}")
    for name, comp in st.get("components", {}).items():
        state = comp.get("state", "?") if isinstance(comp, dict) else comp
        print(f"{name.capitalize() + ':':<13}{state}")
        if isinstance(comp, dict):
            for k, v in comp.items():
                if k != "state":
                    print(f"  {k}: {v}")
    rec = st.get("reconcile") or {}
    for key in ("recreated", "restarted", "unknown", "failed"):
        if rec.get(key):
            print(f"Reconcile {key}: {', '.join(rec[key])}")
    return 0
