"""Verdict tables (tests/data/policy/*.yaml, format in README.md there) replayed through trace."""

from __future__ import annotations

import glob
import os

import pytest

from mesh.manifests import Document, parse_documents
from mesh.policy.resolve import PolicyRepository
from mesh.policy.trace import parse_endpoint_documents, trace

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "policy")
TABLES = sorted(glob.glob(os.path.join(DATA, "*.yaml")))
VERDICT_TABLES = [t for t in TABLES if not os.path.basename(t).startswith("invalid")]


def load_table(path: str) -> dict:
    import yaml

    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def build_repository(table: dict, source: str) -> PolicyRepository:
    docs = []
    for ns in table.get("namespaces") or []:
        docs.append(Document(source, len(docs), {"apiVersion": "v1", "kind": "Namespace",
                                                 "metadata": {"name": ns["name"], "labels": ns.get("labels") or {}}}))
    for ep in table.get("endpoints") or []:
        spec = {"ip": ep.get("ip")}
        if ep.get("ports"):
            spec["ports"] = ep["ports"]
        if ep.get("serviceAccount"):
            spec["serviceAccount"] = ep["serviceAccount"]
        docs.append(Document(source, len(docs), {"apiVersion": "ostium.io/v1alpha1", "kind": "Endpoint",
                                                 "metadata": {"name": ep["name"],
                                                              "namespace": ep.get("namespace", "default"),
                                                              "labels": ep.get("labels") or {}},
                                                 "spec": spec}))
    repo = PolicyRepository()
    for info in parse_endpoint_documents(docs):
        repo.upsert_endpoint(info)
    policy_docs = [Document(source, i, body) for i, body in enumerate(table.get("policies") or [])]
    for parsed in parse_documents(policy_docs):
        repo.upsert_policy(parsed.obj)
    return repo


def _cases():
    for path in VERDICT_TABLES:
        table = load_table(path)
        for i, q in enumerate(table["queries"]):
            yield pytest.param(path, i, id=f"{os.path.basename(path)[:-5]}[{i}] {q.get('name', '')}")


_REPOS: dict[str, tuple[PolicyRepository, dict]] = {}


def _repo_for(path: str) -> tuple[PolicyRepository, dict]:
    if path not in _REPOS:
        table = load_table(path)
        _REPOS[path] = (build_repository(table, os.path.basename(path)), table)
    return _REPOS[path]


@pytest.mark.parametrize("path,index", list(_cases()))
def test_verdict_table(path: str, index: int) -> None:
    repo, table = _repo_for(path)
    q = table["queries"][index]
    http = q.get("http")
    kafka = q.get("kafka")
    out = trace(repo, None, str(q["src"]), str(q["dst"]), str(q["dport"]), http, kafka)
    assert out["verdict"] == q["expect"], f"{q.get('name')}: got {out}"
    if "expect_l7" in q:
        assert out["l7"] is not None and out["l7"]["verdict"] == q["expect_l7"], f"{q.get('name')}: got {out}"
    for needle in q.get("expect_rules") or []:
        assert any(needle in r for r in out["rules"]), f"{q.get('name')}: {needle!r} not in {out['rules']}"


def test_tables_have_enough_cases() -> None:
    total = sum(len(load_table(p)["queries"]) for p in VERDICT_TABLES)
    assert total >= 80, total
    for p in VERDICT_TABLES:
        for q in load_table(p)["queries"]:
            assert {"src", "dst", "dport", "expect"} <= set(q), (p, q)
            assert q["expect"] in ("allowed", "denied"), (p, q)
