"""ipcache: longest-prefix match over IPv4 and IPv6, source precedence, deletes, notifications."""

from __future__ import annotations

import ipaddress
import random
import time

import pytest

from mesh.errors import ValidationError
from mesh.identity.ipcache import IPCache, Source

WORLD = 2


@pytest.fixture
def cache():
    return IPCache()


def test_unknown_addresses_are_world(cache):
    assert cache.lookup("192.0.2.1") == WORLD
    assert cache.lookup("2001:db8::1") == WORLD
    assert cache.lookup_entry("192.0.2.1") is None


@pytest.mark.parametrize("ip,expected", [
    ("10.1.2.3", 300),      # the /32
    ("10.1.2.4", 200),      # inside 10.1.2.0/24
    ("10.1.9.9", 100),      # inside 10.0.0.0/8 only
    ("10.255.255.255", 100),
    ("11.0.0.0", 50),       # only the default route
    ("0.0.0.0", 50),
])
def test_longest_prefix_wins_ipv4(cache, ip, expected):
    cache.upsert("0.0.0.0/0", 50, Source.CIDR_POLICY)
    cache.upsert("10.0.0.0/8", 100, Source.CIDR_POLICY)
    cache.upsert("10.1.2.0/24", 200, Source.CIDR_POLICY)
    cache.upsert("10.1.2.3", 300, Source.ENDPOINT)
    assert cache.lookup(ip) == expected


@pytest.mark.parametrize("ip,expected", [
    ("fd00:1::5", 600),
    ("fd00:1::6", 500),
    ("fd00:2::1", 400),
    ("2001:db8::1", WORLD),
])
def test_longest_prefix_wins_ipv6(cache, ip, expected):
    cache.upsert("fd00::/16", 400, Source.CIDR_POLICY)
    cache.upsert("fd00:1::/64", 500, Source.CIDR_POLICY)
    cache.upsert("fd00:1::5/128", 600, Source.ENDPOINT)
    assert cache.lookup(ip) == expected


def test_families_do_not_mix(cache):
    cache.upsert("0.0.0.0/0", 50, Source.CIDR_POLICY)
    assert cache.lookup("::1") == WORLD
    cache.upsert("::/0", 60, Source.CIDR_POLICY)
    assert cache.lookup("::1") == 60 and cache.lookup("127.0.0.1") == 50


def test_ipv4_mapped_ipv6_addresses_match_ipv4_prefixes(cache):
    cache.upsert("10.0.0.0/8", 100, Source.CIDR_POLICY)
    assert cache.lookup("::ffff:10.1.1.1") == 100


def test_deleting_a_longer_prefix_uncovers_the_shorter(cache):
    cache.upsert("10.0.0.0/8", 100, Source.CIDR_POLICY)
    cache.upsert("10.1.0.0/16", 200, Source.CIDR_POLICY)
    assert cache.lookup("10.1.0.1") == 200
    assert cache.delete("10.1.0.0/16", Source.CIDR_POLICY) is not None
    assert cache.lookup("10.1.0.1") == 100
    cache.delete("10.0.0.0/8", "cidr-policy")
    assert cache.lookup("10.1.0.1") == WORLD
    assert len(cache) == 0 and list(cache) == []


def test_higher_precedence_source_wins_and_removal_uncovers_the_other(cache):
    cache.upsert("10.0.1.5/32", 16777217, Source.CIDR_POLICY)
    cache.upsert("10.0.1.5/32", 4242, Source.ENDPOINT)
    assert cache.lookup("10.0.1.5") == 4242
    # A lower-precedence claim arriving later does not override.
    cache.upsert("10.0.1.5/32", 6, Source.NODE)
    assert cache.lookup("10.0.1.5") == 4242
    assert [e.source for e in cache.claims("10.0.1.5")] == [Source.ENDPOINT, Source.NODE, Source.CIDR_POLICY]
    cache.delete("10.0.1.5", Source.ENDPOINT)
    assert cache.lookup("10.0.1.5") == 6
    cache.upsert("10.0.1.5", 1, Source.RESERVED)
    assert cache.get("10.0.1.5/32").identity == 1


def test_deleting_another_sources_claim_is_a_no_op(cache):
    cache.upsert("10.0.0.1", 300, Source.ENDPOINT)
    assert cache.delete("10.0.0.1", Source.CIDR_POLICY) is None
    assert cache.delete("10.9.9.9", Source.ENDPOINT) is None
    assert cache.lookup("10.0.0.1") == 300


def test_listeners_see_every_effective_change_in_order(cache):
    seen = []
    cache.upsert("10.0.0.0/8", 100, Source.CIDR_POLICY)
    unsubscribe = cache.subscribe(lambda ch: seen.append(
        (str(ch.prefix), ch.old and ch.old.identity, ch.new and ch.new.identity)))
    cache.upsert("10.0.0.1", 300, Source.ENDPOINT)
    cache.upsert("10.0.0.1", 300, Source.ENDPOINT)      # same again: no change
    cache.upsert("10.0.0.1", 7, Source.CIDR_POLICY)     # hidden below the endpoint: no change
    cache.upsert("10.0.0.1", 301, Source.ENDPOINT)
    cache.delete("10.0.0.1", Source.ENDPOINT)           # uncovers the cidr-policy claim
    cache.delete("10.0.0.1", Source.CIDR_POLICY)
    unsubscribe()
    cache.upsert("10.0.0.2", 1, Source.RESERVED)
    assert seen == [
        ("10.0.0.0/8", None, 100),  # replayed on subscribe
        ("10.0.0.1/32", None, 300),
        ("10.0.0.1/32", 300, 301),
        ("10.0.0.1/32", 301, 7),
        ("10.0.0.1/32", 7, None),
    ]


def test_bad_input_is_rejected_and_changes_nothing(cache):
    cache.upsert("10.0.0.0/8", 100, Source.CIDR_POLICY)
    rev = cache.revision
    with pytest.raises(ValidationError, match=r"host bits set \(the network is 10\.0\.0\.0/8\)"):
        cache.upsert("10.1.2.3/8", 5, Source.CIDR_POLICY)
    with pytest.raises(ValidationError, match="not an IP address or CIDR"):
        cache.upsert("10.0.0.300", 5, Source.CIDR_POLICY)
    with pytest.raises(ValidationError, match="identity: must be an identity number"):
        cache.upsert("10.0.0.1", 0, Source.ENDPOINT)
    with pytest.raises(ValidationError, match="unknown ipcache source 'k8s'"):
        cache.upsert("10.0.0.1", 5, "k8s")
    with pytest.raises(ValidationError, match="not an IP address"):
        cache.lookup("web-1")
    with pytest.raises(ValidationError, match=r"\[1\]\.prefix"):
        cache.sync_source(Source.CIDR_POLICY, {"10.0.0.0/8": 100, "bogus": 3})
    assert cache.revision == rev and cache.dump() == [
        {"prefix": "10.0.0.0/8", "identity": 100, "source": "cidr-policy", "tunnelEndpoint": None}]


def test_sync_source_replaces_one_sources_claims_only(cache):
    cache.upsert("10.0.0.1", 300, Source.ENDPOINT)
    cache.sync_source(Source.CIDR_POLICY, {"10.0.0.0/8": 100, "192.168.0.0/16": 101})
    changes = cache.sync_source(Source.CIDR_POLICY, {"10.0.0.0/8": 100, "172.16.0.0/12": 102})
    assert {(str(c.prefix), c.new and c.new.identity) for c in changes} == {
        ("192.168.0.0/16", None), ("172.16.0.0/12", 102)}
    assert [str(e.prefix) for e in cache] == ["10.0.0.0/8", "10.0.0.1/32", "172.16.0.0/12"]


def test_iteration_is_sorted_and_covers_both_families(cache):
    cache.upsert("fd00::/8", 9, Source.CIDR_POLICY)
    cache.upsert("10.0.0.1", 3, Source.ENDPOINT, tunnel_endpoint="192.168.1.2")
    cache.upsert("10.0.0.0/8", 4, Source.CIDR_POLICY)
    assert [(str(e.prefix), e.identity) for e in cache] == [
        ("10.0.0.0/8", 4), ("10.0.0.1/32", 3), ("fd00::/8", 9)]
    assert cache.get("10.0.0.1").tunnel_endpoint == "192.168.1.2"
    assert cache.identities([3, 9]) == {3: [ipaddress.ip_network("10.0.0.1/32")],
                                        9: [ipaddress.ip_network("fd00::/8")]}


def test_matches_a_brute_force_reference_on_random_prefixes(cache):
    rng = random.Random(7)
    prefixes = {}
    for i in range(1500):
        plen = rng.choice([8, 12, 16, 20, 24, 28, 30, 32])
        net = ipaddress.ip_network((rng.getrandbits(32) & ~((1 << (32 - plen)) - 1), plen))
        prefixes[net] = 1000 + i
        cache.upsert(net, 1000 + i, Source.CIDR_POLICY)
    for net in rng.sample(sorted(prefixes), 300):
        cache.delete(net, Source.CIDR_POLICY)
        del prefixes[net]
    probes = [ipaddress.ip_address(rng.getrandbits(32)) for _ in range(200)]
    probes += [p.network_address for p in list(prefixes)[:200]]
    for ip in probes:
        best = max((n for n in prefixes if ip in n), key=lambda n: n.prefixlen, default=None)
        assert cache.lookup(ip) == (prefixes[best] if best else WORLD), ip


def test_ten_thousand_prefixes_stay_fast(cache):
    rng = random.Random(1)
    start = time.perf_counter()
    for i in range(10_000):
        cache.upsert(ipaddress.ip_network((rng.getrandbits(24) << 8, 24)), 256 + i % 60000,
                     Source.CIDR_POLICY)
    for i in range(2_000):
        cache.upsert(ipaddress.ip_network((rng.getrandbits(64) << 64, 64)), 300, Source.CIDR_POLICY)
    loaded = time.perf_counter() - start
    addrs = [ipaddress.ip_address(rng.getrandbits(32)) for _ in range(20_000)]
    start = time.perf_counter()
    for a in addrs:
        cache.lookup(a)
    per_lookup = (time.perf_counter() - start) / len(addrs)
    # Generous bounds (shared 2-core machine): a naive scan would be ~1000x slower per lookup.
    assert loaded < 3.0, loaded
    assert per_lookup < 50e-6, per_lookup
