"""Selectors over security labels, and the SelectorCache: selector → the identities it selects.

Label keys are ``source:key`` (mesh.identity.labels). A requirement whose source is ``any`` matches a
label of that key from any source; ``k8s:app`` only the k8s one. Kubernetes semantics for
operators: ``NotIn`` and ``DoesNotExist`` also match identities without the key.

The cache keeps an inverted index of identity labels so a new selector is evaluated with set
operations (not a scan of every identity), and a changed identity is tested against each selector
once, reporting which selectors changed: that is what makes the repository incremental.

Entities (Cilium's): ``world`` = reserved:world and every CIDR identity (they all carry
reserved:world); ``cluster`` = every managed endpoint identity (it has a namespace label) plus host,
remote-node, init, health, unmanaged, kube-apiserver and ingress; ``host``, ``remote-node``,
``kube-apiserver``, ``health``, ``init``, ``unmanaged``, ``ingress`` = that reserved identity;
``none`` = nothing; ``all`` = every identity (the wildcard, identity 0 in map keys).
"""

from __future__ import annotations

from typing import Mapping

from mesh.identity.labels import NAMESPACE_KEY, SOURCE_ANY, SOURCE_CIDR, SOURCE_K8S, SOURCE_RESERVED, \
    split_label_key
from mesh.policy.model import (OP_DOES_NOT_EXIST, OP_EXISTS, OP_IN, OP_NOT_IN, CIDRSelector, EntitySelector,
                               LabelSelector, Selector)

CLUSTER_RESERVED = ("host", "remote-node", "init", "health", "unmanaged", "kube-apiserver", "ingress")

# An identity's labels, split for matching: (source, key) → value, and key → values from any source.
SplitLabels = tuple[dict[tuple[str, str], str], dict[str, set[str]]]


def split_labels(labels: Mapping[str, str]) -> SplitLabels:
    exact: dict[tuple[str, str], str] = {}
    anysrc: dict[str, set[str]] = {}
    for full, value in labels.items():
        source, key = split_label_key(full)
        exact[(source, key)] = value
        anysrc.setdefault(key, set()).add(value)
    return exact, anysrc


def _req_matches(source: str, key: str, op: str, values: tuple[str, ...], lab: SplitLabels) -> bool:
    exact, anysrc = lab
    if source == SOURCE_ANY:
        have = anysrc.get(key)
        present = have is not None
        hit = present and any(v in values for v in have)  # type: ignore[union-attr]
    else:
        v = exact.get((source, key))
        present = v is not None
        hit = present and v in values
    if op == OP_IN:
        return hit
    if op == OP_NOT_IN:
        return not hit
    if op == OP_EXISTS:
        return present
    return not present  # DoesNotExist


def _is_world(lab: SplitLabels) -> bool:
    return (SOURCE_RESERVED, "world") in lab[0]


def _cidr_family(lab: SplitLabels) -> int:
    for (source, key) in lab[0]:
        if source == SOURCE_CIDR:
            return 6 if ":" in key else 4
    return 0


def matches(selector: Selector, lab: SplitLabels) -> bool:
    """Does `selector` select an identity with these (split) labels?"""
    if isinstance(selector, LabelSelector):
        return all(_req_matches(r.source, r.key, r.operator, r.values, lab) for r in selector.requirements)
    if isinstance(selector, CIDRSelector):
        exact = lab[0]
        if (SOURCE_CIDR, selector.cidr) not in exact:
            # /0 also covers the world identity itself (Cilium: 0.0.0.0/0 is world).
            if not (selector.cidr.endswith("/0") and exact.get((SOURCE_RESERVED, "world")) is not None
                    and _cidr_family(lab) == 0):
                return False
        return not any((SOURCE_CIDR, ex) in exact for ex in selector.excepts)
    entity = selector.entity
    if entity == "all":
        return True
    if entity == "none":
        return False
    if entity in ("world", "world-ipv4", "world-ipv6"):
        if not _is_world(lab):
            return False
        fam = _cidr_family(lab)
        return entity == "world" or fam == 0 or fam == (4 if entity == "world-ipv4" else 6)
    if entity == "cluster":
        exact = lab[0]
        return (SOURCE_K8S, NAMESPACE_KEY) in exact or any((SOURCE_RESERVED, r) in exact for r in CLUSTER_RESERVED)
    return (SOURCE_RESERVED, entity) in lab[0]


class LabelIndex:
    """Identities and an inverted index of their labels."""

    def __init__(self) -> None:
        self.labels: dict[int, dict[str, str]] = {}
        self.split: dict[int, SplitLabels] = {}
        self.all: set[int] = set()
        self._kv: dict[tuple[str, str, str], set[int]] = {}
        self._k: dict[tuple[str, str], set[int]] = {}

    def _entries(self, lab: SplitLabels):
        exact, anysrc = lab
        for (source, key), value in exact.items():
            yield (source, key), (source, key, value)
        for key, values in anysrc.items():
            for value in values:
                yield (SOURCE_ANY, key), (SOURCE_ANY, key, value)

    def add(self, identity: int, labels: Mapping[str, str]) -> None:
        lab = split_labels(labels)
        self.labels[identity] = dict(labels)
        self.split[identity] = lab
        self.all.add(identity)
        for k, kv in self._entries(lab):
            self._k.setdefault(k, set()).add(identity)
            self._kv.setdefault(kv, set()).add(identity)

    def remove(self, identity: int) -> None:
        lab = self.split.pop(identity, None)
        if lab is None:
            return
        del self.labels[identity]
        self.all.discard(identity)
        for k, kv in self._entries(lab):
            s = self._k.get(k)
            if s is not None:
                s.discard(identity)
                if not s:
                    del self._k[k]
            s = self._kv.get(kv)
            if s is not None:
                s.discard(identity)
                if not s:
                    del self._kv[kv]

    def with_key(self, source: str, key: str) -> set[int]:
        return self._k.get((source, key), set())

    def with_value(self, source: str, key: str, value: str) -> set[int]:
        return self._kv.get((source, key, value), set())

    def evaluate(self, selector: Selector) -> set[int]:
        """Every identity `selector` selects, with set operations over the index."""
        if isinstance(selector, LabelSelector):
            result: set[int] | None = None
            # Positive terms first: they shrink the set most.
            reqs = sorted(selector.requirements, key=lambda r: r.operator not in (OP_IN, OP_EXISTS))
            for r in reqs:
                if r.operator in (OP_IN, OP_NOT_IN):
                    hit: set[int] = set()
                    for v in r.values:
                        hit |= self.with_value(r.source, r.key, v)
                    s = hit if r.operator == OP_IN else None
                    if s is None:
                        result = (set(self.all) if result is None else result) - hit
                        continue
                elif r.operator == OP_EXISTS:
                    s = self.with_key(r.source, r.key)
                else:
                    result = (set(self.all) if result is None else result) - self.with_key(r.source, r.key)
                    continue
                result = set(s) if result is None else (result & s)
                if not result:
                    return set()
            return set(self.all) if result is None else result
        if isinstance(selector, CIDRSelector):
            out = set(self.with_key(SOURCE_CIDR, selector.cidr))
            if selector.cidr.endswith("/0"):
                out |= {i for i in self.with_key(SOURCE_RESERVED, "world") if _cidr_family(self.split[i]) == 0}
            for ex in selector.excepts:
                out -= self.with_key(SOURCE_CIDR, ex)
            return out
        if selector.entity == "all":
            return set(self.all)
        if selector.entity in ("world", "world-ipv4", "world-ipv6", "cluster"):
            if selector.entity == "cluster":
                cand = set(self.with_key(SOURCE_K8S, NAMESPACE_KEY))
                for r in CLUSTER_RESERVED:
                    cand |= self.with_key(SOURCE_RESERVED, r)
                return cand
            return {i for i in self.with_key(SOURCE_RESERVED, "world") if matches(selector, self.split[i])}
        if selector.entity == "none":
            return set()
        return set(self.with_key(SOURCE_RESERVED, selector.entity))


def _index_keys(selector: Selector) -> list[tuple] | None:
    """Index entries that any identity the selector selects must have, or None (test every identity).

    For a label selector: the values of its most selective positive requirement (In: each
    (source, key, value); Exists: (source, key)). For a CIDR selector: its prefix label.
    """
    if isinstance(selector, LabelSelector):
        best = None
        for r in selector.requirements:
            if r.operator == OP_IN:
                cand = (0 if r.key != NAMESPACE_KEY else 1, [("kv", r.source, r.key, v) for v in r.values])
            elif r.operator == OP_EXISTS:
                cand = (2, [("k", r.source, r.key)])
            else:
                continue
            if best is None or cand[0] < best[0]:
                best = cand
        return best[1] if best else None
    if isinstance(selector, CIDRSelector) and not selector.cidr.endswith("/0"):
        return [("k", SOURCE_CIDR, selector.cidr)]
    return None


def _identity_keys(lab: SplitLabels) -> set[tuple]:
    exact, anysrc = lab
    out: set[tuple] = set()
    for (source, key), value in exact.items():
        out.add(("kv", source, key, value))
        out.add(("k", source, key))
    for key, values in anysrc.items():
        out.add(("k", SOURCE_ANY, key))
        for value in values:
            out.add(("kv", SOURCE_ANY, key, value))
    return out


class SelectorCache:
    """Selector → set of identities, kept current as identities come and go.

    The sets returned by `ids` are live (updated in place): copy them to keep a snapshot.
    A changed identity is only tested against the selectors that could select it (an index of
    each selector's most selective requirement) and those that selected it before.
    """

    def __init__(self) -> None:
        self.index = LabelIndex()
        self._selections: dict[Selector, set[int]] = {}
        self._refs: dict[Selector, int] = {}
        self._by_key: dict[tuple, set[Selector]] = {}
        self._unkeyed: set[Selector] = set()
        self._member_of: dict[int, set[Selector]] = {}

    def __len__(self) -> int:
        return len(self._selections)

    def add_selector(self, selector: Selector) -> set[int]:
        n = self._refs.get(selector, 0)
        self._refs[selector] = n + 1
        if n == 0:
            members = self._selections[selector] = self.index.evaluate(selector)
            for i in members:
                self._member_of.setdefault(i, set()).add(selector)
            keys = _index_keys(selector)
            if keys is None:
                self._unkeyed.add(selector)
            else:
                for k in keys:
                    self._by_key.setdefault(k, set()).add(selector)
        return self._selections[selector]

    def release_selector(self, selector: Selector) -> None:
        n = self._refs.get(selector, 0) - 1
        if n > 0:
            self._refs[selector] = n
            return
        self._refs.pop(selector, None)
        members = self._selections.pop(selector, None) or set()
        for i in members:
            s = self._member_of.get(i)
            if s is not None:
                s.discard(selector)
                if not s:
                    del self._member_of[i]
        keys = _index_keys(selector)
        if keys is None:
            self._unkeyed.discard(selector)
        else:
            for k in keys:
                s = self._by_key.get(k)
                if s is not None:
                    s.discard(selector)
                    if not s:
                        del self._by_key[k]

    def ids(self, selector: Selector) -> set[int]:
        s = self._selections.get(selector)
        if s is None:  # not registered (a one-off query): evaluate without caching
            return self.index.evaluate(selector)
        return s

    def has_identity(self, identity: int) -> bool:
        return identity in self.index.all

    def labels_of(self, identity: int) -> dict[str, str] | None:
        return self.index.labels.get(identity)

    def upsert_identity(self, identity: int, labels: Mapping[str, str]) -> set[Selector]:
        """Add or relabel an identity; return the selectors whose selection changed."""
        old = self.index.labels.get(identity)
        if old is not None and old == dict(labels):
            return set()
        if old is not None:
            self.index.remove(identity)
        self.index.add(identity, labels)
        lab = self.index.split[identity]
        candidates = set(self._unkeyed)
        candidates |= self._member_of.get(identity, set())
        by_key = self._by_key
        for k in _identity_keys(lab):
            s = by_key.get(k)
            if s:
                candidates |= s
        changed: set[Selector] = set()
        member_of = self._member_of.setdefault(identity, set())
        for sel in candidates:
            members = self._selections[sel]
            now = matches(sel, lab)
            if now != (identity in members):
                if now:
                    members.add(identity)
                    member_of.add(sel)
                else:
                    members.discard(identity)
                    member_of.discard(sel)
                changed.add(sel)
        if not member_of:
            del self._member_of[identity]
        return changed

    def remove_identity(self, identity: int) -> set[Selector]:
        if identity not in self.index.all:
            return set()
        self.index.remove(identity)
        changed = self._member_of.pop(identity, set())
        for sel in changed:
            self._selections[sel].discard(identity)
        return changed
