"""Ingress gateway throughput and tail latency: wrk through Envoy's gateway listener vs straight to the backend.

Backend: nginx (Debian) on 127.0.0.1, one worker, `return 200` with a 13-byte body (its own cost is
near zero, so the gateway's cost shows). Ours: a Gateway (HTTP listener on 127.0.0.1) with an
HTTPRoute matching a path prefix and a header, forwarding to the nginx Service: configured the way the
agent does it (manifests → mesh.gateway.resolve → xdsserver.translate.gateway → xDS → Envoy 1.40,
2 worker threads). Baseline: the same wrk run straight at nginx, interleaved with ours (2 rounds
each) in the same run. wrk -t2 -c16, keep-alive; requests/s and p99 from wrk --latency.

Both load generator and servers share this VM's 2 cores: read the ratio, not the absolute numbers.
Run: .venv/bin/python benchmarks/bench_gateway.py [--seconds 5]   (under a minute with defaults)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from mesh.gateway.resolve import GatewaySettings, resolve  # noqa: E402
from mesh.gateway.testing import load_objects  # noqa: E402
from xdsserver.cache import Snapshot  # noqa: E402
from xdsserver.testing import envoy_harness, free_port, wait_port_open  # noqa: E402
from xdsserver.translate.gateway import GatewayOptions, translate_gateway  # noqa: E402

NGINX_CONF = """
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log stderr error;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "hello, world\\n"; }} }}
}}
"""

MANIFESTS = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: bench}}
spec: {{gatewayClassName: ostium, listeners: [{{name: http, port: {port}, protocol: HTTP}}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: bench}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [bench.example]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /api}}, headers: [{{name: x-tenant, value: blue}}]}}]
    backendRefs: [{{name: nginx, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /}}}}]
    backendRefs: [{{name: nginx, port: 80}}]
"""


def wrk(url: str, seconds: int, host: str | None = None) -> tuple[float, float]:
    args = ["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency", url]
    if host:
        args[1:1] = ["-H", f"Host: {host}", "-H", "x-tenant: blue"]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    p99_ms = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        raise RuntimeError(f"{url}: {non2xx.group(1)} failed responses:\n{out}")
    return rps, p99_ms


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (scripts/apt-packages.txt)")
    with tempfile.TemporaryDirectory(prefix="bench-gw-") as d:
        backend_port, gw_port = free_port(), free_port()
        Path(d, "nginx.conf").write_text(NGINX_CONF.format(d=d, port=backend_port))
        nginx = subprocess.Popen(["nginx", "-c", f"{d}/nginx.conf", "-p", d], stderr=subprocess.PIPE)
        try:
            await wait_port_open(backend_port)
            async with envoy_harness(Path(d), log_level="error") as h:
                res = resolve(load_objects(MANIFESTS.format(port=gw_port)),
                              GatewaySettings(options=GatewayOptions(address="127.0.0.1", als_cluster=None)),
                              lambda ns, svc, port: [("127.0.0.1", backend_port)] if svc == "nginx" else None)
                snap = Snapshot.build(translate_gateway(res.input).by_type())
                h.cache.set_snapshot(h.node_id, snap)
                assert await h.server.wait_applied(h.node_id, snap) == []
                await wait_port_open(gw_port)
                direct, gateway = [], []
                for _ in range(args.rounds):
                    direct.append(await asyncio.to_thread(wrk, f"http://127.0.0.1:{backend_port}/api/x", args.seconds))
                    gateway.append(await asyncio.to_thread(wrk, f"http://127.0.0.1:{gw_port}/api/x", args.seconds,
                                                           "bench.example"))
        finally:
            nginx.terminate()
            nginx.wait(10)
    best = lambda runs: (max(r[0] for r in runs), min(r[1] for r in runs))  # noqa: E731
    (d_rps, d_p99), (g_rps, g_p99) = best(direct), best(gateway)
    print(f"wrk -t2 -c16 -d{args.seconds}s, {args.rounds} interleaved rounds each, best of rounds")
    print(f"{'path':<34}{'req/s':>12}{'p99 ms':>10}")
    print(f"{'direct to nginx (baseline)':<34}{d_rps:>12,.0f}{d_p99:>10.2f}")
    print(f"{'through the ingress gateway':<34}{g_rps:>12,.0f}{g_p99:>10.2f}")
    print(f"ratio gateway/direct: throughput {g_rps / d_rps:.2f}x, p99 {g_p99 / d_p99:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
