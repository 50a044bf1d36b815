"""`ostium apply -f` and `ostium delete -f`: multi-document YAML manifests, all or nothing."""

from __future__ import annotations

import sys

from mesh.cli.output import add_output_flag, emit


def register(sub) -> None:
    a = sub.add_parser("apply", help="create or update everything in manifest files (all or nothing)")
    a.add_argument("-f", "--filename", action="append", required=True, metavar="FILE|DIR|-")
    a.add_argument("--dry-run", action="store_true", help="validate only (locally), change nothing")
    add_output_flag(a, default="table")
    a.set_defaults(func=apply)
    d = sub.add_parser("delete", help="delete everything named in manifest files")
    d.add_argument("-f", "--filename", action="append", required=True, metavar="FILE|DIR|-")
    add_output_flag(d, default="table")
    d.set_defaults(func=delete)


def _load(args, allow_duplicates: bool = False, validate: bool = True):
    """Read and parse the documents here (--dry-run, delete); YAML errors name the file and line."""
    from mesh.manifests import load_documents, parse_documents

    stdin = sys.stdin.read() if "-" in args.filename else None
    docs = load_documents(args.filename, stdin_text=stdin)
    if validate:
        parse_documents(docs, allow_duplicates=allow_duplicates)
    return docs


def _print(results, fmt: str) -> None:
    if fmt == "table":
        for r in results:
            where = f"{r['namespace']}/" if r["namespace"] else ""
            print(f"{r['kind'].lower()}/{where}{r['name']} {r['action']}")
    else:
        emit(results, fmt)


def apply(args) -> int:
    if args.dry_run:
        docs = _load(args, validate=True)
        _print([{"kind": d.kind, "namespace": "", "name": (d.body.get("metadata") or {}).get("name", ""),
                 "action": "valid (dry run)"} for d in docs], args.output)
        return 0
    from mesh.api.client import APIClient
    from mesh.errors import AgentError
    from mesh.manifest_sources import read_sources
    from mesh.manifests import documents_from_sources

    # The text goes to the agent, which parses and validates it once (same messages as here).
    stdin = sys.stdin.read() if "-" in args.filename else None
    sources = read_sources(args.filename, stdin_text=stdin)
    try:
        out = APIClient(args.socket).post("/v1/apply", {"sources": [{"source": s, "text": t} for s, t in sources]})
    except AgentError:
        if not documents_from_sources(sources):  # a YAML error is reported as such without an agent too
            print("no documents found", file=sys.stderr)
            return 0
        raise
    if not out["results"]:
        print("no documents found", file=sys.stderr)
        return 0
    _print(out["results"], args.output)
    return 0


def delete(args) -> int:
    from mesh.api.client import APIClient

    docs = _load(args, allow_duplicates=True)
    out = APIClient(args.socket).post("/v1/delete", {"documents": [d.to_json() for d in docs]})
    _print(out["results"], args.output)
    return 0
