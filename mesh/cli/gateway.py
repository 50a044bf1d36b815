"""`ostium gateway status [-o json|yaml|table] [--kind K] [-n NS] [--problems]`: gateway objects and
their conditions (Gateway API style), the node's gateway listeners and the egress redirects.

Talks to the agent: GET /v1/gateway/status (?kind=, ?namespace=) → {"objects", "rows", "listeners",
"egressRedirects"} (mesh.components.gateway.handle_gateway_status). Exit code 0, or 1 with
--problems when some object has a failing condition (for scripts).
"""

from __future__ import annotations

from mesh.cli.output import add_output_flag, emit

COLUMNS = [("KIND", "kind"), ("NAMESPACE", "namespace"), ("NAME", "name"), ("ACCEPTED", "accepted"),
           ("PROGRAMMED", "programmed"), ("RESOLVED", "resolved"), ("REASON", "reason"), ("MESSAGE", "message")]


def register(sub) -> None:
    p = sub.add_parser("gateway", aliases=["gw"], help="ingress/egress gateways: status of routes and listeners")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    st = verbs.add_parser("status", help="conditions of Gateways, routes, Ingresses and egress policies")
    st.add_argument("--kind", help="only this kind (Gateway, HTTPRoute, GRPCRoute, Ingress, EgressGatewayPolicy)")
    st.add_argument("-n", "--namespace", help="only this namespace")
    st.add_argument("--problems", action="store_true",
                    help="only rows with a failing condition; exit 1 if there are any")
    add_output_flag(st, default="table")
    st.set_defaults(func=status)


def status(args) -> int:
    from mesh.api.client import APIClient

    params = {k: v for k, v in (("kind", args.kind), ("namespace", args.namespace)) if v}
    data = APIClient(args.socket).get("/v1/gateway/status", params=params or None)
    rows = data.get("rows", [])
    if args.problems:
        rows = [r for r in rows if r.get("reason")]
    if args.output == "table":
        emit(rows, "table", COLUMNS)
        if data.get("listeners") and not args.problems:
            print()
            emit([{**lst, "hosts": ",".join(lst["hosts"]) or "*"} for lst in data["listeners"]], "table",
                 [("LISTENER", "name"), ("ADDRESS", "address"), ("PORT", "port"), ("TLS", "tls"), ("HOSTS", "hosts")])
        if data.get("egressRedirects") and not args.problems:
            print()
            emit([{**r, "sources": ",".join(r["sources"]), "destinationCIDRs": ",".join(r["destinationCIDRs"]),
                   "excludedCIDRs": ",".join(r["excludedCIDRs"]) or "-"} for r in data["egressRedirects"]], "table",
                 [("EGRESS-POLICY", "policy"), ("SOURCES", "sources"), ("DESTINATIONS", "destinationCIDRs"),
                  ("EXCLUDED", "excludedCIDRs"), ("EGRESS-IP", "egressIP"), ("PROXY-PORT", "proxyPort")])
    elif args.problems:
        emit(rows, args.output)
    else:
        emit(data, args.output)
    return 1 if args.problems and rows else 0
