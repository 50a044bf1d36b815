"""Policy resolution: full resolution and the incremental update after one endpoint's labels change.

Workload: 1,000 local endpoints in 20 namespaces (50 apps × 2 versions per namespace, so every
endpoint has its own identity), 1,000 more identities of remote endpoints (2,000 identities plus the
reserved ones and the CIDR identities the policies create), 500 CiliumNetworkPolicies: per app an
ingress rule from two other apps on 8080/TCP (some with HTTP rules), egress to the app's
dependencies and DNS, metrics (9090/TCP) from the whole namespace, one in ten with a CIDR egress with except, one in twenty with a deny.

Baseline: the naive way to pick up a change, a full recompute (a fresh repository with the same
input, resolving every endpoint). Ours: the repository's incremental path (new identity, endpoint
update, old identity released, then reading just the endpoints `changed_endpoints_since` names).

Targets (issue 3): full < 2 s, incremental < 20 ms, peak RSS < 400 MB.
Run: .venv/bin/python benchmarks/bench_policy.py [--endpoints N --policies N --identities N]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from mesh.identity.labels import security_labels  # noqa: E402
from mesh.manifests import Document  # noqa: E402
from mesh.policy.parse import parse_policy  # noqa: E402
from mesh.policy.resolve import EndpointInfo, PolicyRepository  # noqa: E402
from mesh.policy.model import Protocol  # noqa: E402

NAMESPACES = 20
APPS = 50


def build_input(n_endpoints: int, n_policies: int, n_identities: int, seed: int = 7):
    rng = random.Random(seed)
    endpoints: list[EndpointInfo] = []
    identities: dict[int, dict[str, str]] = {}
    next_id = 256
    for i in range(n_endpoints):
        ns = f"ns{i % NAMESPACES}"
        app = f"app{(i // NAMESPACES) % APPS}"
        labels = security_labels({"app": app, "version": f"v{i}", "tier": rng.choice(["web", "api", "db"])}, ns)
        identities[next_id] = labels
        endpoints.append(EndpointInfo(f"pod{i}", ns, labels, f"10.{i // 250}.{i % 250}.10", next_id,
                                      {"http": (8080, Protocol.TCP)}))
        next_id += 1
    while len(identities) < n_identities:  # remote endpoints: same apps, other versions
        i = len(identities)
        ns = f"ns{rng.randrange(NAMESPACES)}"
        identities[next_id] = security_labels({"app": f"app{rng.randrange(APPS)}", "version": f"r{i}"}, ns)
        next_id += 1
    policies = []
    for p in range(n_policies):
        ns = f"ns{p % NAMESPACES}"
        app = f"app{(p // NAMESPACES) % APPS}"
        peers = [f"app{rng.randrange(APPS)}" for _ in range(2)]
        port: dict = {"ports": [{"port": "8080", "protocol": "TCP"}]}
        if p % 4 == 0:
            port["rules"] = {"http": [{"method": "GET", "path": "/api/.*"}, {"method": "POST", "path": "/submit"}]}
        spec: dict = {
            "endpointSelector": {"matchLabels": {"app": app}},
            "ingress": [{"fromEndpoints": [{"matchExpressions": [{"key": "app", "operator": "In", "values": peers}]}],
                         "toPorts": [port]},
                        # metrics scraping from the whole namespace: ~100 identities per rule
                        {"fromEndpoints": [{}], "toPorts": [{"ports": [{"port": "9090", "protocol": "TCP"}]}]}],
            "egress": [
                {"toEndpoints": [{"matchLabels": {"app": f"app{rng.randrange(APPS)}"}}],
                 "toPorts": [{"ports": [{"port": "http", "protocol": "TCP"}]}]},
                {"toEndpoints": [{"matchLabels": {"k8s:io.kubernetes.pod.namespace": "ns0", "app": "app0"}}],
                 "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}]}]},
            ],
        }
        if p % 10 == 0:
            spec["egress"].append({"toCIDRSet": [{"cidr": f"172.{16 + p % 16}.0.0/16",
                                                  "except": [f"172.{16 + p % 16}.{p % 200}.0/24"]}],
                                   "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]})
        if p % 20 == 0:
            spec["ingressDeny"] = [{"fromEntities": ["world"]}]
        body = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                "metadata": {"name": f"pol{p}", "namespace": ns}, "spec": spec}
        policies.append(parse_policy(Document("bench", p, body)))
    return endpoints, identities, policies


def full_resolution(endpoints, identities, policies) -> tuple[PolicyRepository, int]:
    repo = PolicyRepository(identities=identities)
    for ep in endpoints:
        repo.upsert_endpoint(ep)
    for pol in policies:
        repo.upsert_policy(pol)
    resolved = repo.resolve_all()
    return repo, sum(len(p.map_state) for p in resolved.values())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoints", type=int, default=1000)
    ap.add_argument("--policies", type=int, default=500)
    ap.add_argument("--identities", type=int, default=2000)
    ap.add_argument("--changes", type=int, default=20, help="label changes to time (median reported)")
    ap.add_argument("--baselines", type=int, default=3, help="naive full recomputes to time")
    args = ap.parse_args()

    endpoints, identities, policies = build_input(args.endpoints, args.policies, args.identities)
    print(f"workload: {len(endpoints)} endpoints, {len(identities)} identities, {len(policies)} policies")

    t0 = time.perf_counter()
    repo, keys = full_resolution(endpoints, identities, policies)
    full = time.perf_counter() - t0
    print(f"full resolution:        {full * 1000:8.1f} ms  ({keys} map-state keys, "
          f"{len(repo.cidr_identities())} CIDR identities)")

    rng = random.Random(1)
    inc_times = []
    naive_times = []
    current = {e.key: e for e in endpoints}
    table = dict(identities)
    next_id = max(table) + 1
    for n in range(args.changes):
        ep = current[rng.choice(sorted(current))]
        new_labels = dict(ep.labels)
        new_labels["k8s:app"] = f"app{rng.randrange(APPS)}"
        new = EndpointInfo(ep.name, ep.namespace, new_labels, ep.ip, next_id, ep.named_ports)
        rev = repo.revision
        t0 = time.perf_counter()
        repo.upsert_identity(next_id, new_labels)
        repo.upsert_endpoint(new)
        repo.delete_identity(ep.identity)
        changed, _deleted = repo.changed_endpoints_since(rev)
        for key in changed:
            repo.endpoint_policy(*key)
        inc_times.append(time.perf_counter() - t0)
        del table[ep.identity]
        table[next_id] = new_labels
        current[ep.key] = new
        next_id += 1
        if n < args.baselines:
            t0 = time.perf_counter()
            fresh, _ = full_resolution(list(current.values()), table, policies)
            naive_times.append(time.perf_counter() - t0)
            # Same answer both ways for the changed endpoint (up to CIDR identity numbering).
            a, b = repo.endpoint_policy(*ep.key), fresh.endpoint_policy(*ep.key)
            assert len(a.map_state) == len(b.map_state), (len(a.map_state), len(b.map_state))
    inc = statistics.median(inc_times)
    naive = statistics.median(naive_times)
    print(f"incremental label change: median {inc * 1000:6.2f} ms, max {max(inc_times) * 1000:6.2f} ms "
          f"over {len(inc_times)} changes")
    print(f"naive full recompute:     median {naive * 1000:8.1f} ms over {len(naive_times)} runs")
    print(f"ratio (naive / incremental): {naive / inc:,.0f}x")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {rss_mb:.0f} MB")
    ok = full < 2.0 and inc < 0.020 and rss_mb < 400
    print("targets (full < 2 s, incremental < 20 ms, RSS < 400 MB):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
