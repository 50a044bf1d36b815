"""Policy change → enforced by Envoy, through Ostium's xDS server, at 1 and 1,000 HTTP rules.

Measures, per run: translate (pure), snapshot build (protobuf), push → ACK, and apply → the first
request that the new policy allows answered 200 by the real Envoy. Delta xDS (Ostium's default)
against State-of-the-World (the baseline: every change resends whole sets), same run.
Rounds of the two modes are interleaved. Runs in well under a minute: .venv/bin/python benchmarks/xds_apply.py
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xdsserver.cache import PackMemo, Snapshot  # noqa: E402
from xdsserver.envoy import XdsMode, http_get  # noqa: E402
from xdsserver.testing import envoy_harness, free_port, http_backend, wait_port_open  # noqa: E402
from xdsserver.translate import (Direction, HTTPRule, PeerRule, PortPolicy, ProxyOptions,  # noqa: E402
                                 TranslateInput, translate)

ROUNDS = 15


def policy(port: int, backend_port: int, nrules: int, generation: int,
           others: int = 0) -> TranslateInput:
    # nrules rules; the last one names a path that exists only in this generation. `others`
    # endpoints with 5 rules each share the listener and do not change.
    rules = tuple(HTTPRule(method="GET", path=f"/api/v1/item{i}(/.*)?") for i in range(nrules - 1))
    rules += (HTTPRule(method="GET", path=f"/gen{generation}"),)
    ports = [PortPolicy("127.0.0.1", Direction.INGRESS, port, port,
                        (PeerRule(frozenset({1000}), rules),))]
    ipcache = {1000: ("127.0.0.1",)}
    for e in range(others):
        ip = f"10.9.{e // 250}.{e % 250 + 1}"
        ipcache[2000 + e] = (ip,)
        ports.append(PortPolicy(ip, Direction.INGRESS, port, port, (PeerRule(
            frozenset({2000 + (e + 1) % others}),
            tuple(HTTPRule(method="GET", path=f"/svc/{k}/.*") for k in range(5))),)))
    return TranslateInput(
        ports=tuple(ports),
        ipcache=ipcache,
        options=ProxyOptions(transparent=False, static_upstream=("127.0.0.1", backend_port),
                             als_cluster=None))


async def scenario(nrules: int, others: int = 0) -> dict[XdsMode, dict[str, float]]:
    """Both modes side by side, rounds interleaved (Delta, SotW, Delta, ...) so that load from
    anything else on the machine hits both alike."""
    modes = (XdsMode.DELTA, XdsMode.SOTW)
    samples = {m: {"translate": [], "build": [], "push_ack": [], "enforced": []} for m in modes}
    memos = {m: PackMemo() for m in modes}   # as L7Proxy does: unchanged resources are reused
    with http_backend() as backend, tempfile.TemporaryDirectory() as d:
        async with contextlib.AsyncExitStack() as stack:
            harness, ports = {}, {}
            for m in modes:
                harness[m] = await stack.enter_async_context(
                    envoy_harness(Path(d) / m.value, mode=m, log_level="error"))
                ports[m] = free_port()
            for gen in range(ROUNDS + 1):
                for m in modes:
                    h, port = harness[m], ports[m]
                    t0 = time.perf_counter()
                    res = translate(policy(port, backend.server_address[1], nrules, gen, others))
                    t1 = time.perf_counter()
                    snap = Snapshot.build(res.by_type(), memo=memos[m])
                    t2 = time.perf_counter()
                    h.cache.set_snapshot(h.node_id, snap)
                    nacked = await h.server.wait_applied(h.node_id, snap)
                    t3 = time.perf_counter()
                    assert not nacked, nacked
                    if gen == 0:
                        await wait_port_open(port)
                    while (await http_get(f"127.0.0.1:{port}", f"/gen{gen}"))[0] != 200:
                        pass  # poll: each round trip is itself the wait
                    t4 = time.perf_counter()
                    if gen == 0:
                        continue  # the first one includes listener creation
                    for k, v in zip(samples[m], (t1 - t0, t2 - t1, t3 - t2, t4 - t0)):
                        samples[m][k].append(v * 1000)
    return {m: {k: statistics.median(v) for k, v in samples[m].items()} for m in modes}


async def main() -> None:
    results = {}
    for nrules in (1, 1000):
        for mode, r in (await scenario(nrules)).items():
            results[(mode, nrules)] = r
    scale = await scenario(5, others=500)
    print(f"median of {ROUNDS} policy changes, milliseconds")
    print(f"{'mode':6} {'rules':>12} {'translate':>10} {'build':>8} {'push→ACK':>9} {'apply→enforced':>15}")
    rows = [(m, f"{n}", r) for (m, n), r in results.items()]
    rows += [(m, "5 +500 eps", r) for m, r in scale.items()]
    for mode, label, r in rows:
        print(f"{mode.value:6} {label:>12} {r['translate']:10.2f} {r['build']:8.2f} "
              f"{r['push_ack']:9.2f} {r['enforced']:15.2f}")
    for nrules in (1, 1000):
        d, s = results[(XdsMode.DELTA, nrules)], results[(XdsMode.SOTW, nrules)]
        print(f"{nrules} rules: apply→enforced SotW/Delta ratio {s['enforced'] / d['enforced']:.2f}")
    d1, d1000 = results[(XdsMode.DELTA, 1)], results[(XdsMode.DELTA, 1000)]
    print(f"Delta: 1,000 rules / 1 rule apply→enforced ratio {d1000['enforced'] / d1['enforced']:.2f}"
          f" (target: 1,000 rules under 100 ms: {'met' if d1000['enforced'] < 100 else 'NOT met'})")


if __name__ == "__main__":
    asyncio.run(main())
