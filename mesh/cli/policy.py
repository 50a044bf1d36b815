"""`ostium policy trace|validate|apply|get|delete`.

trace and validate work offline on files; trace without -f/--endpoints, and apply/get/delete, talk
to the agent: POST /v1/policy/trace, POST /v1/apply, GET /v1/policies,
DELETE /v1/policies/{kind}/{namespace}/{name} (namespace "-" for cluster-wide kinds).

`apply` sends the files' text to the agent, which parses and validates it once, with the messages the
offline commands give; it imports neither PyYAML nor the policy model, so it starts fast.
"""

from __future__ import annotations

import sys

from mesh.cli.output import add_output_flag, emit

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only (they are strings): importing typing costs a CLI start ~5 ms
    from typing import Any

CLUSTERWIDE = ("CiliumClusterwideNetworkPolicy", "ClusterwideNetworkPolicy")


def register(sub) -> None:
    p = sub.add_parser("policy", help="network policies: trace, validate, apply, get, delete")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")

    t = verbs.add_parser("trace", help="explain the verdict for a flow (offline with -f and --endpoints)")
    t.add_argument("-f", "--filename", action="append", default=[], metavar="FILE|DIR",
                   help="policy files or directories (an empty directory means no policies)")
    t.add_argument("--endpoints", action="append", default=[], metavar="FILE|DIR",
                   help="Endpoint (and Namespace) manifests")
    t.add_argument("--src", required=True, help="endpoint NAME, NAMESPACE/NAME, an IP or reserved:NAME")
    t.add_argument("--dst", required=True, help="endpoint NAME, NAMESPACE/NAME, an IP or reserved:NAME")
    t.add_argument("--dport", required=True, help="PORT/PROTO, e.g. 80/TCP")
    t.add_argument("--http-method")
    t.add_argument("--http-path")
    t.add_argument("--http-host")
    t.add_argument("--http-header", action="append", default=[], metavar="'NAME: VALUE'")
    t.add_argument("--kafka-api-key", metavar="NAME")
    t.add_argument("--kafka-api-version", type=int, default=None)
    t.add_argument("--kafka-topic", action="append", default=[])
    t.add_argument("--kafka-client-id")
    add_output_flag(t, default="table")
    t.set_defaults(func=trace_cmd)

    v = verbs.add_parser("validate", help="validate policy files offline")
    v.add_argument("-f", "--filename", action="append", required=True, metavar="FILE|DIR|-")
    v.set_defaults(func=validate_cmd)

    a = verbs.add_parser("apply", help="apply policy files through the agent (all or nothing)")
    a.add_argument("-f", "--filename", action="append", required=True, metavar="FILE|DIR|-")
    add_output_flag(a, default="table")
    a.set_defaults(func=apply_cmd)

    g = verbs.add_parser("get", help="list the policies the agent holds")
    add_output_flag(g, default="table")
    g.set_defaults(func=get_cmd)

    d = verbs.add_parser("delete", help="delete a policy: KIND/NAMESPACE/NAME (KIND/NAME if cluster-wide) or -f")
    d.add_argument("ref", nargs="?", metavar="KIND/NS/NAME")
    d.add_argument("-f", "--filename", action="append", default=[], metavar="FILE|DIR|-")
    d.set_defaults(func=delete_cmd)

    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])


def _query(args) -> dict[str, Any]:
    q: dict[str, Any] = {"src": args.src, "dst": args.dst, "dport": args.dport}
    if args.http_method or args.http_path or args.http_host or args.http_header:
        q["http"] = {"method": args.http_method or "GET", "path": args.http_path or "/",
                     "host": args.http_host or "", "headers": list(args.http_header)}
    if args.kafka_api_key or args.kafka_topic or args.kafka_client_id or args.kafka_api_version is not None:
        q["kafka"] = {"apiKey": args.kafka_api_key or "produce", "apiVersion": args.kafka_api_version or 0,
                      "topics": list(args.kafka_topic), "clientID": args.kafka_client_id}
    return q


def _print_trace(out: dict[str, Any], fmt: str) -> None:
    if fmt != "table":
        emit(out, fmt)
        return
    src, dst = out["src"], out["dst"]
    who = lambda p: p["endpoint"] or p["ip"] or f"identity {p['identity']}"  # noqa: E731
    print(f"{who(src)} (identity {src['identity']}) -> {who(dst)} (identity {dst['identity']}) "
          f"{out['dport']}/{out['protocol']}: {out['verdict'].upper()}")
    for d in ("egress", "ingress"):
        c = out.get(d) or {}
        line = f"  {d:8} {c.get('verdict', '?'):15}"
        if c.get("rules"):
            line += " by " + "; ".join(c["rules"])
        elif c.get("reason"):
            line += " " + c["reason"]
        print(line)
    if out.get("l7"):
        l7 = out["l7"]
        print(f"  l7       {l7.get('verdict')} ({l7.get('parser')})"
              + (" by " + "; ".join(l7["rules"]) if l7.get("rules") else "")
              + (f" - {l7['reason']}" if l7.get("reason") else ""))


def trace_cmd(args) -> int:
    query = _query(args)
    if args.filename or args.endpoints:
        from mesh.errors import ValidationError
        from mesh.policy.trace import offline_repository, trace_query

        if not args.endpoints:
            raise ValidationError("offline trace needs --endpoints with the Endpoint manifests", path="--endpoints")
        repo = offline_repository(args.filename, args.endpoints)
        out = trace_query(repo, None, query)
    else:
        from mesh.api.client import APIClient

        out = APIClient(args.socket).post("/v1/policy/trace", query)
    _print_trace(out, args.output)
    return 0


def _load_policies(paths: list[str]):
    from mesh.errors import ValidationError
    from mesh.manifests import load_documents, parse_documents
    from mesh.policy.model import Policy

    stdin = sys.stdin.read() if "-" in paths else None
    docs = load_documents(paths, stdin_text=stdin)
    parsed = parse_documents(docs)
    for p in parsed:
        if not isinstance(p.obj, Policy):
            raise ValidationError(f"{p.kind} is not a policy kind (use `ostium apply`)", path="kind",
                                  document=p.doc.ref)
    return docs, parsed


def validate_cmd(args) -> int:
    _docs, parsed = _load_policies(args.filename)
    for p in parsed:
        where = f"{p.namespace}/" if p.namespace else ""
        print(f"{p.kind} {where}{p.name}: valid ({len(p.obj.rules)} rule{'s' if len(p.obj.rules) != 1 else ''})")
    if not parsed:
        print("no policies found")
    return 0


POLICY_KIND_NAMES = ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy", "NetworkPolicy",
                     "ClusterwideNetworkPolicy")


def apply_policies(socket_path: str, sources: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """POST the sources' text to the agent's /v1/apply, policies only; the agent parses, validates (YAML,
    kinds, fields) and applies all or nothing. When the agent cannot be reached, the files are parsed here,
    so a YAML or kind error is still reported as such (not as "cannot reach the agent")."""
    from mesh.api.client import APIClient
    from mesh.errors import AgentError

    body = {"sources": [{"source": s, "text": t} for s, t in sources], "policiesOnly": True}
    try:
        out = APIClient(socket_path).post("/v1/apply", body)
    except AgentError:
        from mesh.manifests import documents_from_sources, require_kinds

        docs = documents_from_sources(sources)
        require_kinds(docs, POLICY_KIND_NAMES, "a policy kind", "use `ostium apply`")
        if not docs:
            return []
        raise
    return out.get("results", []) if isinstance(out, dict) else out


def apply_cmd(args) -> int:
    from mesh.manifest_sources import read_sources

    stdin = sys.stdin.read() if "-" in args.filename else None
    results = apply_policies(args.socket, read_sources(args.filename, stdin_text=stdin))
    if not results:
        print("no documents found", file=sys.stderr)
        return 0
    if args.output == "table":
        for r in results:
            where = f"{r.get('namespace')}/" if r.get("namespace") else ""
            print(f"{str(r.get('kind', '')).lower()}/{where}{r.get('name')} {r.get('action', 'applied')}")
    else:
        emit(results, args.output)
    return 0


def get_cmd(args) -> int:
    from mesh.api.client import APIClient

    out = APIClient(args.socket).get("/v1/policies")
    items = out.get("policies", out.get("items", [])) if isinstance(out, dict) else out
    emit(items, args.output, columns=["kind", "namespace", "name", "rules", ("REVISION", "revision")])
    return 0


def delete_cmd(args) -> int:
    from mesh.api.client import APIClient
    from mesh.errors import ValidationError

    refs: list[tuple[str, str, str]] = []
    if args.ref:
        parts = args.ref.split("/")
        if len(parts) == 2 and parts[0] in CLUSTERWIDE:
            refs.append((parts[0], "-", parts[1]))
        elif len(parts) == 3 and all(parts):
            refs.append((parts[0], parts[1] or "-", parts[2]))
        else:
            raise ValidationError(f"{args.ref!r}: expected KIND/NAMESPACE/NAME (KIND/NAME for cluster-wide kinds)",
                                  path="KIND/NS/NAME")
    if args.filename:
        _docs, parsed = _load_policies(args.filename)
        refs += [(p.kind, p.namespace or "-", p.name) for p in parsed]
    if not refs:
        raise ValidationError("name a policy (KIND/NAMESPACE/NAME) or give -f", path="KIND/NS/NAME")
    client = APIClient(args.socket)
    for kind, ns, name in refs:
        client.delete(f"/v1/policies/{kind}/{ns}/{name}")
        print(f"{kind.lower()}/{'' if ns == '-' else ns + '/'}{name} deleted")
    return 0
