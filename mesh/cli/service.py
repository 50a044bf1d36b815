"""`ostium service list|get`: services, their frontends and the backends the datapath uses.

Talks to the agent: GET /v1/services (?namespace=), GET /v1/services/{namespace}/{name}.
"""

from __future__ import annotations

from mesh.cli.output import add_output_flag, emit, kv_block

COLUMNS = [("NAMESPACE", "namespace"), ("NAME", "name"), ("CLUSTER-IP", "clusterIP"), ("PORTS", "ports"),
           ("AFFINITY", "sessionAffinity"), ("BACKENDS", "backends")]


def register(sub) -> None:
    p = sub.add_parser("service", aliases=["svc"], help="show services and their backends")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    ls = verbs.add_parser("list", aliases=["ls"], help="list services")
    ls.add_argument("-n", "--namespace", help="only this namespace")
    add_output_flag(ls)
    ls.set_defaults(func=list_)
    g = verbs.add_parser("get", help="show one service")
    g.add_argument("name")
    g.add_argument("-n", "--namespace", default="default")
    add_output_flag(g)
    g.set_defaults(func=get)


def _row(s: dict) -> dict:
    ports = ",".join(f"{p['port']}/{p['protocol']}->{p['targetPort']}" for p in s.get("ports", []))
    return {**s, "ports": ports, "backends": ",".join(s.get("backends", [])) or "<none>"}


def list_(args) -> int:
    from mesh.api.client import APIClient
    data = APIClient(args.socket).get("/v1/services", params={"namespace": args.namespace})
    emit([_row(s) for s in data] if args.output == "table" else data, args.output, COLUMNS)
    return 0


def get(args) -> int:
    from mesh.api.client import APIClient
    data = APIClient(args.socket).get(f"/v1/services/{args.namespace}/{args.name}")
    if args.output == "table":
        print(kv_block(data))
    else:
        emit(data, args.output)
    return 0
