"""The policy engine's real output (mesh.policy) adapted to the translation input and translated."""

from __future__ import annotations

from mesh.identity.labels import security_labels
from mesh.manifests import Document
from mesh.policy.parse import parse_policy
from mesh.policy.resolve import EndpointInfo, PolicyRepository
from xdsserver.cache import Snapshot
from xdsserver.translate import (Direction, HeaderMatch, HTTPRule, PeerRule, TranslateInput,
                                 port_policies_from_endpoint, translate)

PROXY = {"ingress": 15001, "egress": 15002}


def cnp(name: str, spec: dict):
    body = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}
    return parse_policy(Document("t", 0, body))


def ep(name, ident, labels, ip):
    return EndpointInfo(name, "default", security_labels(labels, "default"), ip, ident, {})


def starwars_repo() -> PolicyRepository:
    repo = PolicyRepository()
    repo.upsert_endpoint(ep("deathstar", 300, {"org": "empire", "class": "deathstar"}, "10.0.0.10"))
    repo.upsert_endpoint(ep("tiefighter", 301, {"org": "empire", "class": "tiefighter"}, "10.0.0.11"))
    repo.upsert_endpoint(ep("xwing", 302, {"org": "alliance", "class": "xwing"}, "10.0.0.12"))
    repo.upsert_policy(cnp("rule1", {
        "endpointSelector": {"matchLabels": {"org": "empire", "class": "deathstar"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"org": "empire"}}],
                     "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                                  "rules": {"http": [
                                      {"method": "POST", "path": "/v1/request-landing"},
                                      {"method": "GET", "path": "/v1/.*",
                                       "headers": ["X-Has-Force", "X-Side: dark"],
                                       "headerMatches": [{"name": "x-token", "value": "t"},
                                                         {"name": "x-log", "value": "v",
                                                          "mismatch": "LOG"}]}]}}]}]}))
    return repo


def test_starwars_policy_becomes_one_ingress_port_policy():
    repo = starwars_repo()
    (pp,) = port_policies_from_endpoint(repo.endpoint_policy("default", "deathstar"), PROXY)
    assert (pp.endpoint_ip, pp.direction, pp.port, pp.proxy_port) == ("10.0.0.10", Direction.INGRESS, 80, 15001)
    assert pp.endpoint == "default/deathstar"
    (peer,) = pp.rules
    assert peer.identities == frozenset({300, 301})   # org=empire: deathstar and tiefighter
    assert peer.http == (
        HTTPRule(method="POST", path="/v1/request-landing"),
        HTTPRule(method="GET", path="/v1/.*", headers=(
            HeaderMatch("X-Has-Force"), HeaderMatch("X-Side", "dark"), HeaderMatch("x-token", "t"))),
    )
    # And it translates into valid Envoy resources.
    ipcache = {300: ("10.0.0.10",), 301: ("10.0.0.11",), 302: ("10.0.0.12",)}
    res = translate(TranslateInput(ports=(pp,), ipcache=ipcache))
    Snapshot.build(res.by_type())
    assert [r["name"] for r in res.routes] == ["ingress:10.0.0.10:80"]


def test_endpoints_without_l7_rules_or_address_give_nothing():
    repo = starwars_repo()
    assert port_policies_from_endpoint(repo.endpoint_policy("default", "xwing"), PROXY) == []
    repo.upsert_endpoint(ep("ghost", 303, {"org": "empire", "class": "deathstar"}, None))
    assert port_policies_from_endpoint(repo.endpoint_policy("default", "ghost"), PROXY) == []


def test_l4_only_peer_on_an_l7_port_allows_every_request():
    repo = starwars_repo()
    repo.upsert_policy(cnp("ops", {
        "endpointSelector": {"matchLabels": {"class": "deathstar"}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"org": "alliance"}}],
                     "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}))
    (pp,) = port_policies_from_endpoint(repo.endpoint_policy("default", "deathstar"), PROXY)
    assert PeerRule(frozenset({302}), ()) in pp.rules
