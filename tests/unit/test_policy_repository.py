"""PolicyRepository: outputs, revisions, CIDR identities, and incremental == full recompute."""

from __future__ import annotations

import ipaddress
import random

import pytest

from mesh.identity.labels import LOCAL_IDENTITY_BASE, security_labels
from mesh.manifests import Document
from mesh.policy.model import Direction, Protocol, Verdict
from mesh.policy.parse import parse_policy
from mesh.policy.resolve import EndpointInfo, PolicyKey, PolicyRepository


def cnp(name: str, spec: dict, namespace: str = "default", kind: str = "CiliumNetworkPolicy"):
    body = {"apiVersion": "cilium.io/v2", "kind": kind, "metadata": {"name": name}, "spec": spec}
    if kind == "CiliumNetworkPolicy":
        body["metadata"]["namespace"] = namespace
    return parse_policy(Document("t", 0, body))


def ep(name: str, ident: int, labels: dict, ns: str = "default", ip: str | None = None, ports=None) -> EndpointInfo:
    return EndpointInfo(name, ns, security_labels(labels, ns), ip, ident, ports or {})


def test_unselected_endpoint_has_allow_all_keys_in_both_directions() -> None:
    repo = PolicyRepository()
    repo.upsert_endpoint(ep("a", 300, {"app": "a"}))
    pol = repo.endpoint_policy("default", "a")
    assert not pol.ingress_enforced and not pol.egress_enforced
    assert pol.map_state == {PolicyKey(Direction.INGRESS, 0, 0, 0, 0): pol.map_state[PolicyKey(Direction.INGRESS, 0, 0, 0, 0)],
                             PolicyKey(Direction.EGRESS, 0, 0, 0, 0): pol.map_state[PolicyKey(Direction.EGRESS, 0, 0, 0, 0)]}
    assert all(e.verdict == Verdict.ALLOW and e.derived_from == () for e in pol.map_state.values())


def test_map_state_keys_for_l3_l4_and_l7() -> None:
    repo = PolicyRepository()
    repo.upsert_endpoint(ep("web", 300, {"app": "web"}))
    repo.upsert_endpoint(ep("fe", 301, {"app": "fe"}))
    repo.upsert_policy(cnp("p", {"endpointSelector": {"matchLabels": {"app": "web"}}, "ingress": [
        {"fromEndpoints": [{"matchLabels": {"app": "fe"}}],
         "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}], "rules": {"http": [{"method": "GET"}]}}]},
        {"toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}]}]}]}))
    pol = repo.endpoint_policy("default", "web")
    assert pol.ingress_enforced and not pol.egress_enforced
    red = pol.map_state[PolicyKey(Direction.INGRESS, 301, 6, 80, 80)]
    assert red.verdict == Verdict.REDIRECT and red.l7_parser == "http"
    assert str(red.derived_from[0]) == "CiliumNetworkPolicy default/p spec.ingress[0]"
    for proto in (6, 17, 132):
        assert pol.map_state[PolicyKey(Direction.INGRESS, 0, proto, 53, 53)].verdict == Verdict.ALLOW
    assert PolicyKey(Direction.INGRESS, 0, 0, 0, 0) not in pol.map_state
    l7 = pol.l7[(Direction.INGRESS, 6, 80, 80)]
    assert l7.parser == "http" and l7.entries[0].identities == frozenset({301})
    assert repo.lookup(("default", "web"), Direction.INGRESS, 999, 6, 80) is None
    assert repo.lookup(("default", "web"), Direction.INGRESS, 301, 6, 80).verdict == Verdict.REDIRECT


def test_deny_covers_narrower_allow_and_lookup_returns_deny_first() -> None:
    repo = PolicyRepository()
    repo.upsert_endpoint(ep("s", 300, {"app": "s"}))
    repo.upsert_endpoint(ep("c", 301, {"app": "c"}))
    repo.upsert_policy(cnp("allow", {"endpointSelector": {"matchLabels": {"app": "s"}}, "ingress": [
        {"fromEndpoints": [{"matchLabels": {"app": "c"}}], "toPorts": [{"ports": [{"port": "8000", "endPort": 8100,
                                                                                     "protocol": "TCP"}]}]}]}))
    repo.upsert_policy(cnp("deny", {"endpointSelector": {"matchLabels": {"app": "s"}}, "ingressDeny": [
        {"toPorts": [{"ports": [{"port": "8050", "protocol": "TCP"}]}]},
        {"fromEndpoints": [{"matchLabels": {"app": "c"}}], "toPorts": [{"ports": [{"port": "0", "protocol": "UDP"}]}]}]}))
    pol = repo.endpoint_policy("default", "s")
    assert pol.map_state[PolicyKey(Direction.INGRESS, 0, 6, 8050, 8050)].verdict == Verdict.DENY
    assert repo.lookup(("default", "s"), Direction.INGRESS, 301, 6, 8050).verdict == Verdict.DENY
    assert repo.lookup(("default", "s"), Direction.INGRESS, 301, 6, 8049).verdict == Verdict.ALLOW
    assert repo.lookup(("default", "s"), Direction.INGRESS, 301, 17, 8049).verdict == Verdict.DENY


def test_cidr_identities_are_allocated_labelled_and_released() -> None:
    repo = PolicyRepository()
    repo.upsert_endpoint(ep("c", 300, {"app": "c"}))
    repo.upsert_policy(cnp("out", {"endpointSelector": {}, "egress": [
        {"toCIDRSet": [{"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}]}, {"toCIDR": ["0.0.0.0/0"]}]}))
    ids = repo.cidr_identities()
    assert set(ids) == {ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("10.96.0.0/12")}
    assert all(i >= LOCAL_IDENTITY_BASE for i in ids.values())
    labels = repo.identity_labels(ids[ipaddress.ip_network("10.96.0.0/12")])
    assert {"cidr:10.96.0.0/12", "cidr:10.0.0.0/8", "cidr:0.0.0.0/0", "reserved:world"} <= set(labels)
    assert repo.identity_for_ip("10.97.0.1") == ids[ipaddress.ip_network("10.96.0.0/12")]
    assert repo.identity_for_ip("8.8.8.8") == 2
    pol = repo.endpoint_policy("default", "c")
    allowed = {k.identity for k in pol.map_state if k.direction == Direction.EGRESS}
    # 10/8 itself (not the except), and world + every CIDR identity through 0.0.0.0/0.
    assert ids[ipaddress.ip_network("10.0.0.0/8")] in allowed and 2 in allowed
    repo.delete_policy("CiliumNetworkPolicy", "default", "out")
    assert repo.cidr_identities() == {}
    assert repo.identity_labels(ids[ipaddress.ip_network("10.0.0.0/8")]) is None


def test_revision_and_changed_endpoints_since() -> None:
    repo = PolicyRepository()
    repo.upsert_endpoint(ep("a", 300, {"app": "a"}))
    repo.upsert_endpoint(ep("b", 301, {"app": "b"}))
    repo.resolve_all()
    rev = repo.revision
    repo.upsert_policy(cnp("p", {"endpointSelector": {"matchLabels": {"app": "a"}}, "ingress": [{}]}))
    assert repo.revision > rev
    assert repo.changed_endpoints_since(rev) == ([("default", "a")], [])
    rev2 = repo.revision
    repo.upsert_policy(cnp("p", {"endpointSelector": {"matchLabels": {"app": "a"}}, "ingress": [{}]}))
    assert repo.revision == rev2  # same policy again: no change
    repo.delete_endpoint("default", "b")
    assert repo.changed_endpoints_since(rev2) == ([], [("default", "b")])
    assert repo.endpoint_policy("default", "a").revision > rev


def test_identity_change_patches_peers_only() -> None:
    repo = PolicyRepository()
    repo.upsert_endpoint(ep("s", 300, {"app": "s"}))
    repo.upsert_endpoint(ep("x", 302, {"app": "x"}))
    repo.upsert_policy(cnp("p", {"endpointSelector": {"matchLabels": {"app": "s"}},
                                 "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "c"}}]}]}))
    repo.resolve_all()
    rev = repo.revision
    repo.upsert_identity(301, security_labels({"app": "c"}, "default"))  # a remote identity appears
    assert repo.changed_endpoints_since(rev) == ([("default", "s")], [])
    assert repo.lookup(("default", "s"), Direction.INGRESS, 301, 6, 80).verdict == Verdict.ALLOW
    repo.delete_identity(301)
    assert repo.lookup(("default", "s"), Direction.INGRESS, 301, 6, 80) is None


# --- incremental == from scratch -----------------------------------------------------------------

APPS = ["a", "b", "c", "d"]
NSS = ["default", "prod"]


def _random_policy(rng: random.Random, name: str):
    def sel():
        r = rng.random()
        if r < 0.2:
            return {}
        if r < 0.4:
            return {"matchExpressions": [{"key": "app", "operator": rng.choice(["In", "NotIn"]),
                                          "values": rng.sample(APPS, 2)}]}
        if r < 0.5:
            return {"matchLabels": {"app": rng.choice(APPS), "k8s:io.kubernetes.pod.namespace": rng.choice(NSS)}}
        return {"matchLabels": {"app": rng.choice(APPS)}}

    def ports(l7: bool):
        p = rng.choice(["80", "443", "53", "0", "http"])
        if l7 and p not in ("0",):
            return [{"ports": [{"port": p, "protocol": "TCP"}], "rules": {"http": [{"method": "GET"}]}}]
        if rng.random() < 0.3:
            return [{"ports": [{"port": "8000", "endPort": 8010, "protocol": "TCP"}]}]
        return [{"ports": [{"port": p, "protocol": rng.choice(["TCP", "UDP", "ANY"])}]}]

    def item(direction: str, deny: bool):
        peer_key = ("from" if direction == "ingress" else "to")
        r = rng.random()
        out: dict = {}
        if r < 0.5:
            out[f"{peer_key}Endpoints"] = [sel()]
        elif r < 0.65:
            out[f"{peer_key}CIDRSet"] = [{"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}]
        elif r < 0.8:
            out[f"{peer_key}Entities"] = [rng.choice(["world", "cluster", "host", "all"])]
        if rng.random() < 0.6 or not out:
            out["toPorts"] = ports(l7=not deny and rng.random() < 0.3)
        return out

    spec: dict = {"endpointSelector": sel()}
    for section in ("ingress", "egress", "ingressDeny", "egressDeny"):
        if rng.random() < (0.6 if "Deny" not in section else 0.2):
            spec[section] = [item(section.replace("Deny", ""), "Deny" in section)
                             for _ in range(rng.randint(1, 2))]
    return cnp(name, spec, namespace=rng.choice(NSS))


def _normalised(repo: PolicyRepository) -> dict:
    back = {i: str(p) for p, i in repo.cidr_identities().items()}
    out = {}
    for key, pol in repo.resolve_all().items():
        ms = {(k.direction, back.get(k.identity, k.identity), k.protocol, k.port_lo, k.port_hi):
              (e.verdict, e.l7_parser, tuple(sorted(map(str, e.derived_from)))) for k, e in pol.map_state.items()}
        l7 = {k: sorted(repr((tuple(sorted(str(back.get(i, i)) for i in e.identities))
                              if e.identities is not None else None, e.http, e.kafka)) for e in v.entries)
              for k, v in pol.l7.items()}
        out[key] = (pol.ingress_enforced, pol.egress_enforced, ms, sorted((repr(k), v) for k, v in l7.items()))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_incremental_updates_match_a_full_recompute(seed: int) -> None:
    rng = random.Random(seed)
    repo = PolicyRepository()
    endpoints: dict[tuple[str, str], EndpointInfo] = {}
    policies = {}
    remote: dict[int, dict] = {}
    for step in range(60):
        op = rng.random()
        if op < 0.3:
            name = f"e{rng.randint(0, 7)}"
            ns = rng.choice(NSS)
            app = rng.choice(APPS)
            ident = 300 + APPS.index(app) * 2 + NSS.index(ns)
            ports = {"http": (rng.choice([80, 8080]), Protocol.TCP)} if rng.random() < 0.5 else {}
            e = ep(name, ident, {"app": app}, ns, f"10.9.{step}.1", ports)
            endpoints[e.key] = e
            repo.upsert_endpoint(e)
        elif op < 0.4 and endpoints:
            key = rng.choice(sorted(endpoints))
            del endpoints[key]
            repo.delete_endpoint(*key)
        elif op < 0.75:
            p = _random_policy(rng, f"p{rng.randint(0, 5)}")
            policies[p.key] = p
            repo.upsert_policy(p)
        elif op < 0.85 and policies:
            key = rng.choice(sorted(policies))
            del policies[key]
            repo.delete_policy(*key)
        else:
            ident = 400 + rng.randint(0, 3)
            if ident in remote and rng.random() < 0.4:
                del remote[ident]
                repo.delete_identity(ident)
            else:
                remote[ident] = security_labels({"app": rng.choice(APPS)}, rng.choice(NSS))
                repo.upsert_identity(ident, remote[ident])
        if step % 5 == 4:
            repo.resolve_all()  # interleave reads so patches happen on built state
    fresh = PolicyRepository(identities=remote)
    for e in endpoints.values():
        fresh.upsert_endpoint(e)
    for p in policies.values():
        fresh.upsert_policy(p)
    got, want = _normalised(repo), _normalised(fresh)
    assert got.keys() == want.keys()
    for key in want:
        g, w = got[key], want[key]
        assert g[:2] == w[:2], key
        missing = {k: v for k, v in w[2].items() if g[2].get(k) != v}
        extra = {k: v for k, v in g[2].items() if w[2].get(k) != v}
        assert not missing and not extra, (key, missing, extra)
        assert g[3] == w[3], key


def test_http_and_kafka_on_one_port_from_two_policies_is_a_reported_conflict() -> None:
    repo = PolicyRepository()
    repo.upsert_endpoint(ep("k", 300, {"app": "k"}))
    repo.upsert_endpoint(ep("c", 301, {"app": "c"}))
    port = {"port": "9092", "protocol": "TCP"}
    repo.upsert_policy(cnp("a-http", {"endpointSelector": {"matchLabels": {"app": "k"}}, "ingress": [
        {"toPorts": [{"ports": [port], "rules": {"http": [{"method": "GET"}]}}]}]}))
    repo.upsert_policy(cnp("b-kafka", {"endpointSelector": {"matchLabels": {"app": "k"}}, "ingress": [
        {"fromEndpoints": [{"matchLabels": {"app": "c"}}],
         "toPorts": [{"ports": [port], "rules": {"kafka": [{"role": "produce"}]}}]}]}))
    pol = repo.endpoint_policy("default", "k")
    assert pol.l7[(Direction.INGRESS, 6, 9092, 9092)].parser == "http"
    assert len(pol.conflicts) == 1 and "b-kafka" in pol.conflicts[0]
    assert all(e.kafka is None for e in pol.l7[(Direction.INGRESS, 6, 9092, 9092)].entries)


def test_endpoint_policy_is_a_snapshot() -> None:
    repo = PolicyRepository()
    repo.upsert_endpoint(ep("s", 300, {"app": "s"}))
    repo.upsert_policy(cnp("p", {"endpointSelector": {}, "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "c"}}]}]}))
    before = repo.endpoint_policy("default", "s")
    keys = dict(before.map_state)
    repo.upsert_identity(301, security_labels({"app": "c"}, "default"))
    after = repo.endpoint_policy("default", "s")
    assert dict(before.map_state) == keys and len(after.map_state) == len(keys) + 1
    assert after.revision > before.revision


def test_endpoint_label_change_moves_it_between_policies() -> None:
    repo = PolicyRepository()
    repo.upsert_endpoint(ep("s", 300, {"app": "s"}))
    repo.upsert_policy(cnp("p", {"endpointSelector": {"matchLabels": {"app": "locked"}}, "ingress": [{}]}))
    assert not repo.endpoint_policy("default", "s").ingress_enforced
    repo.upsert_endpoint(ep("s", 301, {"app": "locked"}))
    pol = repo.endpoint_policy("default", "s")
    assert pol.ingress_enforced and pol.map_state.get(PolicyKey(Direction.INGRESS, 0, 0, 0, 0)) is None
    assert repo.identity_labels(300) is None  # the endpoint's old identity went with it


def test_range_keys_stay_findable_after_identity_patches() -> None:
    repo = PolicyRepository()
    repo.upsert_endpoint(ep("s", 300, {"app": "s"}))
    repo.upsert_policy(cnp("p", {"endpointSelector": {"matchLabels": {"app": "s"}}, "ingress": [
        {"fromEndpoints": [{"matchLabels": {"app": "c"}}],
         "toPorts": [{"ports": [{"port": "7000", "endPort": 7100, "protocol": "TCP"}]}]}]}))
    repo.resolve_all()
    for ident in (301, 302):
        repo.upsert_identity(ident, security_labels({"app": "c"}, "default"))
    repo.delete_identity(301)
    pol = repo.endpoint_policy("default", "s")
    assert sorted(k.identity for k in pol.map_state.ranges) == [302]
    assert repo.lookup(("default", "s"), Direction.INGRESS, 302, 6, 7050).verdict == Verdict.ALLOW
    assert repo.lookup(("default", "s"), Direction.INGRESS, 301, 6, 7050) is None
