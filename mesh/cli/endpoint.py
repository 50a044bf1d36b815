"""`ostium endpoint create|list|get|delete|exec`."""

from __future__ import annotations

import os
import sys

from mesh.api.client import APIClient
from mesh.cli.output import add_output_flag, emit, kv_block
from mesh.errors import ValidationError

COLUMNS = [("NAMESPACE", "namespace"), ("NAME", "name"), ("ID", "id"), ("IP", "ip"), ("IDENTITY", "identity"),
           ("LABELS", "labels"), ("STATE", "state")]


def register(sub) -> None:
    p = sub.add_parser("endpoint", aliases=["ep"], help="manage standalone endpoints (pods without Kubernetes)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    c = verbs.add_parser("create", help="create an endpoint: netns, veth, address, routes, cgroup")
    c.add_argument("name")
    c.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("-n", "--namespace", default="default")
    c.add_argument("--ip", help="address from the pod CIDR (default: the next free one)")
    c.add_argument("--command", help="a long-running command to start inside the endpoint")
    add_output_flag(c)
    c.set_defaults(func=create)

    ls = verbs.add_parser("list", aliases=["ls"], help="list endpoints")
    ls.add_argument("-n", "--namespace", help="only this namespace")
    add_output_flag(ls)
    ls.set_defaults(func=list_)

    g = verbs.add_parser("get", help="show one endpoint (NAME, NAMESPACE/NAME or IP)")
    g.add_argument("name")
    g.add_argument("-n", "--namespace")
    add_output_flag(g)
    g.set_defaults(func=get)

    d = verbs.add_parser("delete", aliases=["rm"], help="delete endpoints and everything they own in the kernel")
    d.add_argument("names", nargs="+")
    d.add_argument("-n", "--namespace")
    d.set_defaults(func=delete)

    e = verbs.add_parser("exec", help="run a command inside an endpoint (its netns and cgroup)")
    e.add_argument("name")
    e.add_argument("-n", "--namespace")
    e.add_argument("cmd", nargs="+", metavar="-- CMD")
    e.set_defaults(func=exec_)


def _client(args) -> APIClient:
    return APIClient(args.socket)


def create(args) -> int:
    from mesh.labels import parse_label_args

    labels = parse_label_args(args.label)  # checked here too, so a typo fails before reaching the agent
    body = {"name": args.name, "namespace": args.namespace, "labels": labels, "ip": args.ip}
    if args.command:
        body["command"] = args.command
    ep = _client(args).post("/v1/endpoints", body)
    if args.output == "table":
        print(f"endpoint {ep['namespace']}/{ep['name']} created: ip {ep['ip']}, id {ep['id']}, "
              f"identity {ep['identity']}")
    else:
        emit(ep, args.output)
    return 0


def list_(args) -> int:
    eps = _client(args).get("/v1/endpoints", params={"namespace": args.namespace})
    emit(eps, args.output, COLUMNS)
    return 0


def get(args) -> int:
    ep = _client(args).get(f"/v1/endpoints/{args.name}", params={"namespace": args.namespace})
    if args.output == "table":
        print(kv_block({k: v for k, v in ep.items() if k != "spec"}))
    else:
        emit(ep, args.output)
    return 0


def delete(args) -> int:
    client = _client(args)
    rc = 0
    for name in args.names:
        ep = client.get(f"/v1/endpoints/{name}", params={"namespace": args.namespace})
        client.delete(f"/v1/endpoints/{ep['namespace']}/{ep['name']}")
        print(f"endpoint {ep['namespace']}/{ep['name']} deleted")
    return rc


def exec_(args) -> int:
    from mesh import kernel

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise ValidationError("no command given: ostium endpoint exec NAME -- CMD [ARGS...]")
    ep = _client(args).get(f"/v1/endpoints/{args.name}", params={"namespace": args.namespace})
    try:
        kernel.enter_endpoint(ep["netns"], ep["cgroup"])
    except OSError as exc:
        raise ValidationError(f"cannot enter endpoint {ep['namespace']}/{ep['name']}: {exc}") from None
    sys.stdout.flush()
    try:
        os.execvp(cmd[0], cmd)
    except FileNotFoundError:
        print(f"error: {cmd[0]}: command not found", file=sys.stderr)
        return 127
    except PermissionError:
        print(f"error: {cmd[0]}: permission denied", file=sys.stderr)
        return 126
    return 0  # not reached
