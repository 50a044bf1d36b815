"""`ostium identity list|get`: the security identities the agent knows (all nodes' with etcd).

    ostium identity list [--label K=V ...] [-o json|yaml|table]
    ostium identity get 4242
    ostium identity get k8s:app=web k8s:io.kubernetes.pod.namespace=default ...   (the exact label set)

Talks to the agent: GET /v1/identities (?label=K=V&match=subset|exact), GET /v1/identities/{id}.
"""

from __future__ import annotations

from mesh.api.client import APIClient
from mesh.cli.output import add_output_flag, emit, kv_block
from mesh.errors import NotFoundError, ValidationError

COLUMNS = [("ID", "id"), ("LABELS", "labels"), ("REFERENCES", "references")]


def register(sub) -> None:
    p = sub.add_parser("identity", aliases=["id"], help="show security identities (labels → number)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    ls = verbs.add_parser("list", aliases=["ls"], help="list identities, reserved ones included")
    ls.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VALUE",
                    help="only identities having this label (repeatable; k8s:app=web or app=web for any source)")
    add_output_flag(ls)
    ls.set_defaults(func=list_)

    g = verbs.add_parser("get", help="show one identity by number, or by its exact label set")
    g.add_argument("ref", nargs="+", metavar="ID|LABEL=VALUE",
                   help="an identity number, or every label of the identity (KEY=VALUE ...)")
    add_output_flag(g)
    g.set_defaults(func=get)


def _rows(idents: list[dict]) -> list[dict]:
    # Tables show one label per comma-separated item, in the key order the agent sent (sorted).
    return [{**i, "labels": ",".join(f"{k}={v}" if v else k for k, v in i["labels"].items())}
            for i in idents]


def list_(args) -> int:
    _check_labels(args.label, "--label")
    idents = APIClient(args.socket).get("/v1/identities", params={"label": args.label or None})
    emit(_rows(idents) if args.output == "table" else idents, args.output, COLUMNS)
    return 0


def get(args) -> int:
    client = APIClient(args.socket)
    refs: list[str] = args.ref
    if len(refs) == 1 and refs[0].isdigit():
        ident = client.get(f"/v1/identities/{int(refs[0])}")
    else:
        if any(r.isdigit() for r in refs):
            raise ValidationError("give either one identity number or labels (KEY=VALUE ...), not both",
                                  path="ID|LABEL")
        _check_labels(refs, "LABEL")
        found = client.get("/v1/identities", params={"label": refs, "match": "exact"})
        if not found:
            raise NotFoundError(f"no identity has exactly the labels {' '.join(refs)} "
                                "(`ostium identity list --label K=V` searches by some labels)")
        ident = found[0]
    if args.output == "table":
        print(kv_block({"id": ident["id"], "reserved": ident.get("reserved", False),
                        "references": ident.get("references", 0),
                        "owners": ident.get("owners") or [], "labels": ident["labels"] or {}}))
    else:
        emit(ident, args.output)
    return 0


def _check_labels(items: list[str], path: str) -> None:
    for item in items:
        key = item.partition("=")[0]
        if not key.strip():
            raise ValidationError(f"{item!r} has no key; use KEY=VALUE, e.g. k8s:app=web", path=path)
