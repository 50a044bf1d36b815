"""Bad policies are rejected with the exact field path, and a multi-document apply changes nothing."""

from __future__ import annotations

import copy
import os

import pytest
import yaml

from mesh.errors import PolicyError, ValidationError
from mesh.manifests import Document, parse_documents, parse_yaml_text
from mesh.policy.model import Direction, Protocol
from mesh.policy.parse import parse_policy

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "policy", "invalid_policies.yaml")
BASE = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "p", "namespace": "default"}}

with open(DATA, encoding="utf-8") as fh:
    CASES = yaml.safe_load(fh)["cases"]


def _body(case: dict) -> dict:
    if "policy" in case:
        pol = case["policy"]
        return copy.deepcopy(pol) if "apiVersion" in pol else {**copy.deepcopy(BASE), **copy.deepcopy(pol)}
    return {**copy.deepcopy(BASE), "spec": copy.deepcopy(case["spec"])}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_invalid_policy_names_the_field(case: dict) -> None:
    with pytest.raises(ValidationError) as info:
        parse_documents([Document("bad.yaml", 0, _body(case))])
    err = info.value
    assert err.path == case["path"], str(err)
    assert case["message"] in err.message, str(err)
    assert err.document.startswith("bad.yaml#1"), str(err)


def test_invalid_regex_error_reads_like_the_brief() -> None:
    case = next(c for c in CASES if c["name"] == "invalid RE2 regex in HTTP path")
    with pytest.raises(PolicyError) as info:
        parse_policy(Document("p.yaml", 0, _body(case)))
    assert "spec.ingress[0].toPorts[0].rules.http[1].path: invalid RE2 regex '/api/(v1': missing )" in str(info.value)


def test_multi_document_apply_is_all_or_nothing() -> None:
    good = {**BASE, "spec": {"endpointSelector": {}, "ingress": [{}]}}
    bad = {**BASE, "metadata": {"name": "q", "namespace": "default"},
           "spec": {"endpointSelector": {}, "ingress": [{"fromEntities": ["nope"]}]}}
    with pytest.raises(ValidationError) as info:
        parse_documents([Document("two.yaml", 0, good), Document("two.yaml", 1, bad)])
    assert "two.yaml#2" in str(info.value)


def test_cnp_with_spec_and_specs_gives_one_rule_each() -> None:
    text = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: both, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress: [{fromEndpoints: [{matchLabels: {app: b}}]}]
specs:
  - endpointSelector: {matchLabels: {app: c}}
    egress: [{toPorts: [{ports: [{port: "53", protocol: ANY}]}]}]
"""
    [parsed] = parse_documents(parse_yaml_text(text, "t"))
    pol = parsed.obj
    assert parsed.key == ("CiliumNetworkPolicy", "shop", "both")
    assert [r.ref.path for r in pol.rules] == ["spec", "specs[0]"]
    assert pol.rules[0].enforce_ingress and not pol.rules[0].enforce_egress
    assert pol.rules[1].enforce_egress and not pol.rules[1].enforce_ingress
    item = pol.rules[1].items[0]
    assert item.direction == Direction.EGRESS and item.to_ports[0].ports[0].protocol == Protocol.ANY
    # The subject is scoped to the policy's namespace.
    assert "io.kubernetes.pod.namespace=shop" in str(pol.rules[0].subject)


def test_ostium_kinds_use_the_cilium_schema() -> None:
    text = """
apiVersion: ostium.io/v1alpha1
kind: NetworkPolicy
metadata: {name: o, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress: [{fromEntities: [world]}]
---
apiVersion: ostium.io/v1alpha1
kind: ClusterwideNetworkPolicy
metadata: {name: c}
spec:
  endpointSelector: {}
  egressDeny: [{toEntities: [world]}]
"""
    a, b = parse_documents(parse_yaml_text(text, "t"))
    assert a.obj.rules[0].items[0].peers[0].entity == "world"
    assert b.namespace == "" and b.obj.rules[0].items[0].deny


def test_kafka_api_key_names_are_cilium_spelling_and_case_insensitive() -> None:
    from mesh.policy.kafka import KAFKA_API_KEYS

    assert KAFKA_API_KEYS["produce"] == 0 and KAFKA_API_KEYS["fetch"] == 1
    assert KAFKA_API_KEYS["offsets"] == KAFKA_API_KEYS["listoffsets"] == 2
    assert KAFKA_API_KEYS["apiversions"] == 18 and KAFKA_API_KEYS["offsetforleaderepoch"] == 23
    body = {**BASE, "spec": {"endpointSelector": {}, "ingress": [{"toPorts": [
        {"ports": [{"port": "9092", "protocol": "TCP"}], "rules": {"kafka": [{"apiKey": "Fetch"}]}}]}]}}
    pol = parse_policy(Document("k", 0, body))
    assert pol.rules[0].items[0].to_ports[0].kafka[0].api_keys == frozenset({1})
