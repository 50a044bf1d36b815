"""Selectors over security labels: source prefixes, operators, entities, CIDRs, cache consistency."""

from __future__ import annotations

import random

from mesh.identity.labels import security_labels
from mesh.policy.model import CIDRSelector, EntitySelector, LabelSelector, Requirement
from mesh.policy.resolve import cidr_labels
from mesh.policy.selector import SelectorCache, matches, split_labels

WEB = security_labels({"app": "web"}, "default")
HOST = {"reserved:host": ""}
WORLD = {"reserved:world": ""}


def sel(*reqs) -> LabelSelector:
    return LabelSelector(tuple(Requirement(*r) for r in reqs))


def test_source_prefix_semantics() -> None:
    lab = split_labels(WEB)
    assert matches(sel(("any", "app", "In", ("web",))), lab)
    assert matches(sel(("k8s", "app", "In", ("web",))), lab)
    assert not matches(sel(("reserved", "app", "In", ("web",))), lab)
    assert matches(sel(("reserved", "host", "In", ("",))), split_labels(HOST))


def test_operators_follow_kubernetes() -> None:
    lab = split_labels(WEB)
    assert matches(sel(("any", "tier", "NotIn", ("db",))), lab)  # key absent: NotIn matches
    assert matches(sel(("any", "tier", "DoesNotExist", ())), lab)
    assert not matches(sel(("any", "app", "NotIn", ("web", "db"))), lab)
    assert matches(sel(("any", "app", "Exists", ())), lab)
    assert matches(sel(), lab)  # empty: everything (callers scope it)


def test_entities() -> None:
    cidr = split_labels(cidr_labels("10.0.0.0/8"))
    assert matches(EntitySelector("world"), split_labels(WORLD)) and matches(EntitySelector("world"), cidr)
    assert not matches(EntitySelector("world"), split_labels(WEB))
    assert matches(EntitySelector("cluster"), split_labels(WEB)) and matches(EntitySelector("cluster"), split_labels(HOST))
    assert not matches(EntitySelector("cluster"), cidr)
    assert matches(EntitySelector("world-ipv4"), cidr) and not matches(EntitySelector("world-ipv6"), cidr)
    assert not matches(EntitySelector("none"), split_labels(WEB))


def test_cidr_selector_with_except_and_slash_zero() -> None:
    inner = split_labels(cidr_labels("10.96.0.0/12"))
    outer = split_labels(cidr_labels("10.0.0.0/8"))
    s = CIDRSelector("10.0.0.0/8", ("10.96.0.0/12",))
    assert matches(s, outer) and not matches(s, inner)
    assert matches(CIDRSelector("0.0.0.0/0"), split_labels(WORLD)) and matches(CIDRSelector("0.0.0.0/0"), inner)
    assert not matches(CIDRSelector("0.0.0.0/0"), split_labels(WEB))


def test_cache_stays_equal_to_fresh_evaluation() -> None:
    rng = random.Random(3)
    apps, nss = ["a", "b", "c"], ["x", "y"]
    selectors = [sel(("any", "app", "In", ("a",))),
                 sel(("k8s", "app", "NotIn", ("a", "b")), ("k8s", "io.kubernetes.pod.namespace", "In", ("x",))),
                 sel(("any", "tier", "Exists", ())), sel(("any", "tier", "DoesNotExist", ())),
                 EntitySelector("cluster"), EntitySelector("world"), CIDRSelector("10.0.0.0/8", ("10.1.0.0/16",))]
    cache = SelectorCache()
    for s in selectors:
        cache.add_selector(s)
    for _ in range(300):
        ident = rng.randint(256, 270)
        r = rng.random()
        if r < 0.2:
            cache.remove_identity(ident)
        elif r < 0.3:
            cache.upsert_identity(ident, cidr_labels(rng.choice(["10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/16"])))
        else:
            pod = {"app": rng.choice(apps)}
            if rng.random() < 0.5:
                pod["tier"] = "t"
            cache.upsert_identity(ident, security_labels(pod, rng.choice(nss)))
        for s in selectors:
            assert cache.ids(s) == cache.index.evaluate(s), s
