"""The gateways' datapath half, pure parts: ost_egress_gw entries and the ingress gateway's nft rules."""

from __future__ import annotations

from bpf.maps import EgressGwKey, EgressGwValue
from mesh.datapath.datapath import egress_gw_entries
from mesh.datapath.redirect import gateway_ingress_script
from mesh.gateway.resolve import EgressRedirect


def decoded(entries: dict[bytes, bytes]) -> dict[tuple[str, str, int], int]:
    out = {}
    for k, v in entries.items():
        key = EgressGwKey.unpack(k)
        out[(key.source, key.dest, key.prefixlen - 32)] = EgressGwValue.unpack(v).proxy_port
    return out


def test_egress_entries_sources_destinations_and_exclusions():
    old = EgressRedirect("default/a", ("10.0.0.2", "10.0.0.3"), ("192.0.2.0/24", "198.51.100.7/32"),
                         ("192.0.2.128/25",), "10.9.9.9", 15005)
    newer = EgressRedirect("default/b", ("10.0.0.2",), ("192.0.2.0/24", "203.0.113.0/24"), (), "10.9.9.8", 15005)
    got = decoded(egress_gw_entries([old, newer]))
    assert got == {
        ("10.0.0.2", "192.0.2.0", 24): 15005, ("10.0.0.3", "192.0.2.0", 24): 15005,
        ("10.0.0.2", "198.51.100.7", 32): 15005, ("10.0.0.3", "198.51.100.7", 32): 15005,
        ("10.0.0.2", "192.0.2.128", 25): 0, ("10.0.0.3", "192.0.2.128", 25): 0,   # excluded: bypass
        ("10.0.0.2", "203.0.113.0", 24): 15005,
    }
    assert egress_gw_entries([]) == {}


def test_egress_key_normalises_the_destination_prefix():
    assert EgressGwKey.of("10.0.0.2", "192.0.2.77/24") == EgressGwKey(56, "10.0.0.2", "192.0.2.0")
    k = EgressGwKey.of("10.0.0.2", "0.0.0.0/0")
    assert EgressGwKey.unpack(k.pack()) == k and k.prefixlen == 32


def test_ingress_gateway_rules_skip_the_proxies_upstream_and_name_each_target():
    script = gateway_ingress_script("10.0.0.254", [("10.0.0.2", 80, 80, 15001), ("10.0.0.3", 8000, 8007, 15001)])
    lines = [ln.strip() for ln in script.splitlines()]
    mark = lines.index("meta mark & 0x1000 == 0x1000 return")
    r1 = lines.index("ip saddr 10.0.0.254 ip daddr 10.0.0.2 tcp dport 80 redirect to :15001")
    r2 = lines.index("ip saddr 10.0.0.254 ip daddr 10.0.0.3 tcp dport 8000-8007 redirect to :15001")
    assert mark < r1 < r2
    assert script.startswith("table ip ostium_gw {}\ndelete table ip ostium_gw\n")  # atomic replace


def _datapath_with(policy: dict):
    """A Datapath that was never started, holding one endpoint's mirrored policy entries."""
    from bpf.maps import PolicyMapEntry, PolicyMapKey
    from mesh.datapath.datapath import Datapath, DatapathConfig, _EndpointState

    dp = Datapath(DatapathConfig(cgroup_root="/nonexistent"))
    st = _EndpointState(1, 10, "10.0.0.2", 300)
    for (ident, port, plen), (verdict, proxy_port) in policy.items():
        st.policy[PolicyMapKey(1, 0, ident, 6, port, plen).pack()] = PolicyMapEntry(verdict, plen, proxy_port).pack()
    dp._endpoints[1] = st
    return dp


def test_ingress_gateway_targets_follow_the_programs_precedence():
    from bpf.maps import PolicyVerdict as V

    exact = 64 + 8 + 16
    # identity ingress (8) named with a redirect on 80; a wildcard redirect on 8080
    dp = _datapath_with({(8, 80, exact): (V.REDIRECT, 15001), (0, 8080, exact): (V.REDIRECT, 15001)})
    assert dp.gateway_l7_targets(8) == [("10.0.0.2", 80, 80, 15001), ("10.0.0.2", 8080, 8080, 15001)]
    assert dp.gateway_l7_targets(9) == [("10.0.0.2", 8080, 8080, 15001)]
    # a named allow on the same ports wins over the wildcard redirect: plain L3/L4 for the gateway
    dp = _datapath_with({(8, 8080, exact): (V.ALLOW, 0), (0, 8080, exact): (V.REDIRECT, 15001)})
    assert dp.gateway_l7_targets(8) == []
    # a deny covering the ports wins: never redirected (the proxy's upstream would skip the deny)
    dp = _datapath_with({(8, 80, exact): (V.REDIRECT, 15001), (0, 0, 64 + 8): (V.DENY, 0)})
    assert dp.gateway_l7_targets(8) == []
