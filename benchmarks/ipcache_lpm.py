"""ipcache longest-prefix match: Ostium's per-length dict tables vs a naive scan of every prefix.

Loads N prefixes (mixed /8../32 IPv4 and /48../128 IPv6, as endpoint /32s plus policy CIDRs), then
looks up random addresses (half of them inside a known prefix). Prints load time, lookups per
second for both, and the ratio. Bounded: the naive scan runs on a small sample.

    .venv/bin/python benchmarks/ipcache_lpm.py [N]
"""

from __future__ import annotations

import ipaddress
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mesh.identity.ipcache import IPCache, Source  # noqa: E402


def build(n: int, rng: random.Random) -> list[tuple[ipaddress._BaseNetwork, int]]:
    out = []
    for i in range(n):
        if i % 10 == 9:
            plen = rng.choice([48, 56, 64, 96, 128])
            net = ipaddress.ip_network(((0xFD << 120) | (rng.getrandbits(120) >> (128 - plen) << (128 - plen)), plen))
        else:
            plen = rng.choice([32, 32, 32, 32, 24, 16, 28, 8, 20])
            net = ipaddress.ip_network((rng.getrandbits(32) >> (32 - plen) << (32 - plen), plen))
        out.append((net, 256 + i % 60000))
    return out


def naive_lookup(prefixes: list[tuple[ipaddress._BaseNetwork, int]], ip) -> int:
    best, ident = -1, 2
    for net, i in prefixes:
        if net.version == ip.version and ip in net and net.prefixlen >= best:  # later upserts replace earlier ones
            best, ident = net.prefixlen, i
    return ident


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    rng = random.Random(42)
    prefixes = build(n, rng)
    cache = IPCache()
    t0 = time.perf_counter()
    for net, ident in prefixes:
        cache.upsert(net, ident, Source.CIDR_POLICY if net.prefixlen < 32 else Source.ENDPOINT)
    load = time.perf_counter() - t0

    probes = []
    for _ in range(50_000):
        if rng.random() < 0.5:
            net, _ = rng.choice(prefixes)
            probes.append(net.network_address + rng.randrange(net.num_addresses) if net.num_addresses > 1
                          else net.network_address)
        else:
            probes.append(ipaddress.ip_address(rng.getrandbits(32)))

    t0 = time.perf_counter()
    for ip in probes:
        cache.lookup(ip)
    ours = (time.perf_counter() - t0) / len(probes)

    sample = probes[:200]
    t0 = time.perf_counter()
    for ip in sample:
        naive_lookup(prefixes, ip)
    naive = (time.perf_counter() - t0) / len(sample)
    mismatches = sum(cache.lookup(ip) != naive_lookup(prefixes, ip) for ip in sample[:100])

    print(f"prefixes: {n} (v4 {sum(p.version == 4 for p, _ in prefixes)}, "
          f"v6 {sum(p.version == 6 for p, _ in prefixes)}), effective entries {len(cache)}")
    print(f"load: {load * 1e3:.1f} ms ({load / n * 1e6:.2f} us per upsert)")
    print(f"lookup, ipcache (per-length dicts): {ours * 1e6:.2f} us  ({1 / ours:,.0f}/s)")
    print(f"lookup, naive scan of all prefixes: {naive * 1e6:.1f} us  ({1 / naive:,.0f}/s)")
    print(f"ratio naive/ipcache: {naive / ours:,.0f}x   (results differ on {mismatches}/100 checked: must be 0)")
    if mismatches:
        sys.exit(1)


if __name__ == "__main__":
    main()
