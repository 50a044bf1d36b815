"""Policies Envoy would refuse are rejected by validation, with the field path, before anything applies."""

import pytest

from mesh.errors import ValidationError
from mesh.manifests import parse_documents, parse_yaml_text

POLICY = """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: x}}
spec:
  endpointSelector: {{}}
  ingress:
  - toPorts: [{{ports: [{{port: "80", protocol: TCP}}], rules: {{http: [{{path: '{path}'}}]}}}}]
"""


def test_regex_too_large_for_envoy_is_rejected_with_its_path():
    with pytest.raises(ValidationError) as exc:
        parse_documents(parse_yaml_text(POLICY.format(path="(a|b|c|d)+x{1,50}"), "p.yaml"))
    assert "spec.ingress[0].toPorts[0].rules.http[0].path" in str(exc.value)
    assert "too complex for Envoy" in str(exc.value)


def test_long_literal_paths_are_fine_because_envoy_matches_them_exactly():
    parse_documents(parse_yaml_text(POLICY.format(path="/" + "a" * 300), "p.yaml"))


def test_ordinary_regexes_pass():
    parse_documents(parse_yaml_text(POLICY.format(path="/v1/(users|groups)/[0-9]+"), "p.yaml"))
