"""What 1,000 HTTP rules cost in Envoy's RBAC: merged (Ostium's translation) vs one permission per rule.

One real Envoy (Ostium's bootstrap, xDS from Ostium's server) in front of nginx on loopback; wrk -t1
-c8 on GET /index.html. Configurations, interleaved round by round on the same Envoy:

  1 rule            GET /index.html
  1000 merged       999 regex rules `/svc{i}/items/[0-9]+` that do not match + the used one last,
                    as translate emits them (one permission, one RE2 alternation)
  1000 per-rule     the same 1,000 rules, one RBAC permission each (the baseline: what translate
                    emitted before merging; Envoy runs up to 1,000 regexes per request)

Reported: requests/s and Envoy CPU time per request (utime+stime / requests: steadier than req/s
on a shared machine), medians, and the cost of 1,000 rules relative to 1 rule.
Run: .venv/bin/python benchmarks/rbac_many_rules.py [--rounds 3] [--duration 3]  (needs nginx, wrk)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xdsserver.cache import Snapshot  # noqa: E402
from xdsserver.testing import envoy_harness, free_port, wait_port_open  # noqa: E402
from xdsserver.translate import (Direction, HTTPRule, PeerRule, PortPolicy, ProxyOptions,  # noqa: E402
                                 TranslateInput, translate)
from xdsserver.translate.build import _http_permission  # noqa: E402

NGINX = """daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp; keepalive_requests 1000000;
server {{ listen 127.0.0.1:{port}; root {d}/www; }} }}
"""
RBAC = "envoy.filters.http.rbac"


def rules(n: int) -> tuple[HTTPRule, ...]:
    return tuple(HTTPRule(method="GET", path=f"/svc{i}/items/[0-9]+") for i in range(n - 1)) + (
        HTTPRule(method="GET", path="/index.html"),)


def snapshot(port: int, backend: int, n: int, per_rule: bool) -> Snapshot:
    rs = rules(n)
    res = translate(TranslateInput(
        ports=(PortPolicy("127.0.0.1", Direction.INGRESS, port, port, (PeerRule(frozenset({1000}), rs),)),),
        ipcache={1000: ("127.0.0.1/32",)},
        options=ProxyOptions(transparent=False, static_upstream=("127.0.0.1", backend), als_cluster=None)))
    by_type = res.by_type()
    if per_rule:  # the baseline: the same policy with one permission per rule
        for route in by_type["type.googleapis.com/envoy.config.route.v3.RouteConfiguration"]:
            (policy,) = route["virtual_hosts"][0]["typed_per_filter_config"][RBAC]["rbac"]["rules"][
                "policies"].values()
            policy["permissions"] = [_http_permission(r) for r in rs]
    return Snapshot.build(by_type)


def envoy_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(port: int, seconds: int) -> float:
    out = subprocess.run(["wrk", "-t1", "-c8", f"-d{seconds}s", f"http://127.0.0.1:{port}/index.html"],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    if "Non-2xx" in out or "Requests/sec" not in out:
        raise RuntimeError(f"wrk: {out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=3)
    args = ap.parse_args()
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool):
            print(f"rbac_many_rules: {tool} is missing (apt-get install nginx wrk)", file=sys.stderr)
            return 1
    variants = [("1 rule", 1, False), ("1000 merged", 1000, False), ("1000 per-rule", 1000, True)]
    rps: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as d:
        for sub in ("www", "tmp"):
            os.makedirs(f"{d}/{sub}")
        Path(d, "www", "index.html").write_bytes(b"x" * 99 + b"\n")
        backend = free_port()
        Path(d, "nginx.conf").write_text(NGINX.format(d=d, port=backend))
        nginx = subprocess.Popen(["nginx", "-e", f"{d}/error.log", "-c", f"{d}/nginx.conf"])
        try:
            await wait_port_open(backend)
            async with envoy_harness(Path(d) / "envoy", log_level="error") as h:
                port = free_port()
                for rnd in range(args.rounds):
                    for name, n, per_rule in variants:
                        snap = snapshot(port, backend, n, per_rule)
                        h.cache.set_snapshot(h.node_id, snap)
                        nacked = await h.server.wait_applied(h.node_id, snap)
                        if nacked:
                            raise RuntimeError(f"Envoy rejected {name}: {nacked[0].nack_message[:200]}")
                        await wait_port_open(port)
                        wrk(port, 1)  # warm-up: connections, RE2 DFA states
                        c0 = envoy_cpu_seconds(h.envoy.pid)  # type: ignore[arg-type]
                        r = wrk(port, args.duration)
                        used = envoy_cpu_seconds(h.envoy.pid) - c0  # type: ignore[arg-type]
                        rps.setdefault(name, []).append(r)
                        cpu.setdefault(name, []).append(used / (r * args.duration) * 1e6)
                        print(f"  round {rnd + 1} {name:14} {r:8.0f} req/s {cpu[name][-1]:7.1f} us Envoy CPU/request",
                              file=sys.stderr)
        finally:
            nginx.kill()
            nginx.wait()
    base_rps, base_cpu = statistics.median(rps["1 rule"]), statistics.median(cpu["1 rule"])
    print(f"\nEnvoy RBAC with many HTTP rules (median of {args.rounds} rounds, {args.duration} s each, wrk -t1 -c8)")
    print(f"{'config':15} {'req/s':>8} {'cost':>7} {'CPU us/req':>11} {'CPU vs 1 rule':>14}")
    for name, _, _ in variants:
        r, c = statistics.median(rps[name]), statistics.median(cpu[name])
        print(f"{name:15} {r:8.0f} {1 - r / base_rps:7.1%} {c:11.1f} {c / base_cpu:13.2f}x")
    merged, per_rule = statistics.median(rps["1000 merged"]), statistics.median(rps["1000 per-rule"])
    print(f"1,000 rules merged cost {1 - merged / base_rps:.1%} of 1-rule req/s (target < 10%); "
          f"merged / per-rule req/s = {merged / per_rule:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
