"""`ostium policy trace|validate` offline, and trace_query (what the agent's handler runs)."""

from __future__ import annotations

import json
import textwrap

import pytest

from mesh.cli.main import main
from mesh.policy.trace import offline_repository, trace_query

ENDPOINTS = textwrap.dedent("""
    apiVersion: v1
    kind: Namespace
    metadata: {name: galaxy, labels: {side: dark}}
    ---
    apiVersion: ostium.io/v1alpha1
    kind: Endpoint
    metadata: {name: tiefighter, namespace: galaxy, labels: {org: empire, class: tiefighter}}
    spec: {ip: 10.0.0.1}
    ---
    apiVersion: ostium.io/v1alpha1
    kind: Endpoint
    metadata: {name: deathstar, namespace: galaxy, labels: {org: empire, class: deathstar}}
    spec: {ip: 10.0.0.2, ports: [{name: http, port: 80, protocol: TCP}]}
    ---
    apiVersion: ostium.io/v1alpha1
    kind: Endpoint
    metadata: {name: deathstar, namespace: other, labels: {org: empire, class: deathstar}}
    spec: {ip: 10.0.0.3}
""")
POLICY = textwrap.dedent("""
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: rule1, namespace: galaxy}
    spec:
      endpointSelector: {matchLabels: {class: deathstar}}
      ingress:
        - fromEndpoints: [{matchLabels: {org: empire}}]
          toPorts:
            - ports: [{port: http, protocol: TCP}]
              rules: {http: [{method: POST, path: /v1/request-landing}]}
""")


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "eps.yaml").write_text(ENDPOINTS)
    pol = tmp_path / "policies"
    pol.mkdir()
    (pol / "rule1.yaml").write_text(POLICY)
    (tmp_path / "empty").mkdir()
    return tmp_path


def _trace(files, capsys, *extra) -> dict:
    rc = main(["policy", "trace", "-f", str(files / "policies"), "--endpoints", str(files / "eps.yaml"),
               "-o", "json", *extra])
    assert rc == 0
    return json.loads(capsys.readouterr().out)


def test_trace_allows_landing_and_names_the_rule(files, capsys) -> None:
    out = _trace(files, capsys, "--src", "tiefighter", "--dst", "galaxy/deathstar", "--dport", "80/TCP",
                 "--http-method", "POST", "--http-path", "/v1/request-landing")
    assert out["verdict"] == "allowed"
    assert out["l7"]["verdict"] == "allowed" and out["l7"]["parser"] == "http"
    assert "CiliumNetworkPolicy galaxy/rule1 spec.ingress[0]" in out["rules"]
    assert out["ingress"]["verdict"] == "redirected" and out["egress"]["verdict"] == "allowed"


def test_trace_denies_other_requests_and_takes_an_ip(files, capsys) -> None:
    out = _trace(files, capsys, "--src", "10.0.0.1", "--dst", "10.0.0.2", "--dport", "80/TCP",
                 "--http-method", "PUT", "--http-path", "/v1/exhaust-port")
    assert out["verdict"] == "denied" and out["l7"]["verdict"] == "denied"
    assert out["src"]["endpoint"] == "galaxy/tiefighter"


def test_trace_world_ip_and_default_deny(files, capsys) -> None:
    out = _trace(files, capsys, "--src", "192.0.2.1", "--dst", "galaxy/deathstar", "--dport", "80/TCP")
    assert out["verdict"] == "denied" and out["src"]["identity"] == 2
    assert out["egress"]["verdict"] == "not-applicable"
    assert "default deny" in out["ingress"]["reason"]


def test_trace_with_an_empty_policy_directory_allows(files, capsys) -> None:
    rc = main(["policy", "trace", "-f", str(files / "empty"), "--endpoints", str(files / "eps.yaml"),
               "--src", "tiefighter", "--dst", "galaxy/deathstar", "--dport", "80/TCP", "-o", "json"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "allowed"


def test_trace_ambiguous_name_is_an_error(files, capsys) -> None:
    rc = main(["policy", "trace", "-f", str(files / "policies"), "--endpoints", str(files / "eps.yaml"),
               "--src", "tiefighter", "--dst", "deathstar", "--dport", "80/TCP"])
    assert rc == 2
    assert "galaxy/deathstar, other/deathstar" in capsys.readouterr().err


def test_trace_table_output(files, capsys) -> None:
    rc = main(["policy", "trace", "-f", str(files / "policies"), "--endpoints", str(files / "eps.yaml"),
               "--src", "tiefighter", "--dst", "galaxy/deathstar", "--dport", "80/TCP"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "ALLOWED" in text and "redirected" in text and "not-evaluated" in text


def test_validate_ok_and_error_exit_codes(files, capsys, tmp_path) -> None:
    assert main(["policy", "validate", "-f", str(files / "policies")]) == 0
    assert "galaxy/rule1: valid" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY.replace("port: http", "port: '99999'"))
    assert main(["policy", "validate", "-f", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "bad.yaml#1 (CiliumNetworkPolicy galaxy/rule1): spec.ingress[0].toPorts[0].ports[0].port" in err


def test_trace_query_matches_the_cli_shape(files) -> None:
    repo = offline_repository([str(files / "policies")], [str(files / "eps.yaml")])
    out = trace_query(repo, None, {"src": "tiefighter", "dst": "galaxy/deathstar", "dport": "80/TCP",
                                   "http": {"method": "POST", "path": "/v1/request-landing"}})
    assert out["verdict"] == "allowed" and out["l7"]["verdict"] == "allowed"
    assert list(out)[:3] == ["verdict", "l7", "rules"]
    json.dumps(out)  # serialisable as the API returns it
