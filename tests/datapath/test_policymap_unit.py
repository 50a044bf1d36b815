"""Map state -> LPM policy entries (pure; no root needed)."""

from __future__ import annotations

import random

import pytest

from bpf.maps import PolicyMapKey, PolicyVerdict
from mesh.datapath.policymap import entries_for, port_prefixes
from mesh.policy.model import Direction, Verdict
from mesh.policy.resolve import PolicyEntry, PolicyKey, lookup_key

I = Direction.INGRESS


@pytest.mark.parametrize("lo,hi", [(80, 80), (0, 65535), (1, 65535), (1000, 2000), (8080, 8081), (1023, 1024)])
def test_port_prefixes_cover_exactly(lo, hi):
    covered = []
    for start, bits in port_prefixes(lo, hi):
        size = 1 << (16 - bits)
        assert start % size == 0
        covered.extend(range(start, start + size))
    assert covered == list(range(lo, hi + 1))


def lpm_eval(entries, direction, identity, proto, port):
    """What the BPF program decides, evaluated in Python over the generated entries."""
    def longest(ident):
        best = None
        for k, v in entries.items():
            if k.direction != direction or k.identity != ident:
                continue
            plen = k.prefixlen - 64
            val = (proto << 16) | port
            kv = (k.proto << 16) | k.port
            if plen == 0 or (val >> (24 - plen)) == (kv >> (24 - plen)):
                if best is None or k.prefixlen > best[0].prefixlen:
                    best = (k, v)
        return best
    s, w = longest(identity), longest(0)
    for hit in (s, w):
        if hit and hit[1].verdict == PolicyVerdict.DENY:
            return "deny"
    if s or w:
        return "allow"
    return "deny"


def test_generated_entries_agree_with_the_policy_engine_lookup():
    rnd = random.Random(7)
    for _ in range(40):
        ms = {}
        for _ in range(rnd.randint(1, 8)):
            ident = rnd.choice([0, 1001, 1002])
            proto = rnd.choice([0, 6, 17])
            if rnd.random() < 0.3:
                lo = hi = 0
            else:
                lo = rnd.choice([53, 80, 1000, 8080])
                hi = lo + rnd.choice([0, 0, 1, 100, 3000])
            verdict = rnd.choice([Verdict.ALLOW, Verdict.ALLOW, Verdict.DENY])
            if proto == 0:
                lo = hi = 0
            ms[PolicyKey(I, ident, proto, lo, hi)] = PolicyEntry(verdict)
        entries = entries_for(1, ms)
        for ident in (1001, 1002, 1003):
            for proto in (6, 17):
                for port in (53, 54, 80, 81, 1000, 1050, 1100, 1101, 4000, 8080, 8081, 9000):
                    hit = lookup_key(ms, I, ident, proto, port)
                    want = "allow" if hit and hit[1].verdict != Verdict.DENY else "deny"
                    assert lpm_eval(entries, 0, ident, proto, port) == want, (ms, ident, proto, port)


def test_any_protocol_with_port_expands_and_redirect_gets_proxy_port():
    ms = {PolicyKey(I, 0, 0, 80, 80): PolicyEntry(Verdict.REDIRECT, "http")}
    entries = entries_for(3, ms, {"http": 15001})
    assert sorted(k.proto for k in entries) == [6, 17, 132]
    assert {(v.verdict, v.proxy_port) for v in entries.values()} == {(PolicyVerdict.REDIRECT, 15001)}
    assert all(isinstance(k, PolicyMapKey) and k.ep_id == 3 and k.prefixlen == 88 for k in entries)


def test_redirect_takes_the_proxy_port_of_its_parser_and_direction():
    E = Direction.EGRESS
    ports = {"http-ingress": 15001, "http-egress": 15002, "kafka-ingress": 15003, "kafka-egress": 15004}
    ms = {PolicyKey(I, 0, 6, 80, 80): PolicyEntry(Verdict.REDIRECT, "http"),
          PolicyKey(E, 0, 6, 80, 80): PolicyEntry(Verdict.REDIRECT, "http"),
          PolicyKey(I, 0, 6, 9092, 9092): PolicyEntry(Verdict.REDIRECT, "kafka"),
          PolicyKey(E, 0, 6, 9092, 9092): PolicyEntry(Verdict.REDIRECT, "kafka")}
    got = {(k.direction, k.port): v.proxy_port for k, v in entries_for(1, ms, ports).items()}
    assert got == {(0, 80): 15001, (1, 80): 15002, (0, 9092): 15003, (1, 9092): 15004}


def test_redirect_falls_back_to_the_parser_port_and_to_none():
    ms = {PolicyKey(Direction.EGRESS, 0, 6, 80, 80): PolicyEntry(Verdict.REDIRECT, "http"),
          PolicyKey(I, 0, 6, 9092, 9092): PolicyEntry(Verdict.REDIRECT, "kafka")}
    got = {k.port: (v.verdict, v.proxy_port) for k, v in entries_for(1, ms, {"http": 15001}).items()}
    # no port for kafka: still a REDIRECT entry (the datapath refuses it), never an allow
    assert got == {80: (PolicyVerdict.REDIRECT, 15001), 9092: (PolicyVerdict.REDIRECT, 0)}
