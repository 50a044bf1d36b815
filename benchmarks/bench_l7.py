"""L7 policy cost: HTTP/1.1, HTTP/2 and gRPC between two endpoints, direct vs through Envoy, same run.

A real agent (datapath + Envoy) in its own node netns (tests/agentproc.py). Endpoints: `web` runs nginx
(Debian's, on its own config: a 100-byte static file, HTTP/1.1 on :80, h2c on :8080), `grpc` runs the
grpcio Empire service (examples/grpc), `client` runs the load generators (wrk, h2load) in its netns and
cgroup. Scenarios, one after the other on the same endpoints:

  direct   L3/L4 policy only (client → web:80,8080 and grpc:50051 allowed; the kernel forwards)
  l7-1     the same ports with one HTTP rule each: every request goes through Envoy's RBAC
  l7-1000  1,000 HTTP rules per port (999 regex rules that do not match, the matching one last)
  envoy-plain  yardstick: a bare Envoy (router only, static cluster) on the client's loopback, same run
  l7-1 no-log  diagnostic: l7-1 on a second agent with Envoy's access log to the agent off
               (OSTIUM_ENVOY_ACCESS_LOG=off: no L7 flows), to show what per-request flow processing costs

Reported per scenario and workload: requests/s, p50/p99 latency, Envoy's RSS; ratios l7-1/direct and
l7-1000/l7-1; and apply-to-enforced at 1,000 rules: from the start of a policy apply (in-process: parse +
API call, as `ostium policy apply` does once started; and the CLI as a subprocess, Python start included)
to the first request whose verdict changed, seen by a client polling over one keep-alive connection.

Targets (issue 5): l7-1 keeps >= 35% of direct req/s; 1,000 rules cost < 10% of l7-1 req/s;
apply-to-enforced < 100 ms.

Run (root): .venv/bin/python benchmarks/bench_l7.py [--duration 3] [--connections 16] [--rounds 2]
       .venv/bin/python benchmarks/bench_l7.py --apply-only [--repeats 5]   (apply-to-enforced only, no load runs)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.agentproc import AgentProcess, wait_for  # noqa: E402

PYTHON = sys.executable
OSTIUM_CMD = str(Path(sys.executable).with_name("ostium"))   # the venv's console script
EMPIRE = REPO / "examples" / "grpc" / "empire.py"
GRPC_PATH = "/ostium.demo.Empire/RequestLanding"
BODY = b"x" * 99 + b"\n"
RULES = 1000

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
    uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
    keepalive_requests 1000000;
    server {{ listen 80; root {d}/www; }}
    server {{ listen 8080 http2; root {d}/www; }}
}}
"""


def plain_envoy_config(web: str) -> str:
    """A bare Envoy (router only, static cluster, no RBAC, no access log) on the client's loopback:
    127.0.0.1:18080 → web:80 (HTTP/1.1), 127.0.0.1:18081 → web:8080 (h2c). The same-run yardstick for what
    Envoy itself costs on this machine."""
    def listener(port: int, cluster: str) -> dict:
        return {"name": f"plain-{port}", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                             "HttpConnectionManager",
                    "stat_prefix": cluster, "codec_type": "AUTO",
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                    "route_config": {"virtual_hosts": [{"name": cluster, "domains": ["*"], "routes": [
                        {"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]}}}]}]}

    def cluster(name: str, port: int, h2: bool) -> dict:
        c = {"name": name, "type": "STATIC", "load_assignment": {"cluster_name": name, "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": web, "port_value": port}}}}]}]}}
        if h2:
            c["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}}
        return c
    return json.dumps({"static_resources": {
        "listeners": [listener(18080, "web_http1"), listener(18081, "web_h2")],
        "clusters": [cluster("web_http1", 80, False), cluster("web_h2", 8080, True)]}})


def manifest(nginx_conf: str, nginx_dir: str) -> str:
    return f"""
apiVersion: v1
kind: Namespace
metadata: {{name: bench}}
---
apiVersion: ostium.io/v1alpha1
kind: Endpoint
metadata: {{name: web, namespace: bench, labels: {{app: web}}}}
spec:
  command: ["nginx", "-e", "{nginx_dir}/error.log", "-c", "{nginx_conf}"]
---
apiVersion: ostium.io/v1alpha1
kind: Endpoint
metadata: {{name: grpc, namespace: bench, labels: {{app: grpc}}}}
spec:
  command: ["{PYTHON}", "{EMPIRE}", "serve", "--port", "50051"]
---
apiVersion: ostium.io/v1alpha1
kind: Endpoint
metadata: {{name: client, namespace: bench, labels: {{app: client}}}}
"""


def policy(http_rules: int, probe: str | None = None, only_web: bool = False) -> str:
    """CNPs for web and grpc: L3/L4 only (http_rules=0), or `http_rules` rules per port, the used one last.

    `probe`: one more allowed path on the web ports (apply-to-enforced: its verdict flips 403 → 404).
    `only_web`: just the web CNP (apply-to-enforced sends exactly one policy of `http_rules` rules)."""
    def rules(kind: str) -> str:
        if not http_rules:
            return ""
        if kind == "web":
            used = [("GET", "/index.html")] + ([("GET", probe)] if probe else [])
            filler = [("GET", f"/svc{i}/items/[0-9]+") for i in range(http_rules - len(used))]
        else:
            used = [("POST", GRPC_PATH)]
            filler = [("POST", f"/ostium.demo.Svc{i}/.*") for i in range(http_rules - 1)]
        items = "".join(f"\n        - {{method: {m}, path: \"{p}\"}}" for m, p in filler + used)
        return f"\n      rules:\n        http:{items}"

    def cnp(name: str, app: str, ports: list[int], kind: str) -> str:
        port_list = ", ".join(f'{{port: "{p}", protocol: TCP}}' for p in ports)
        return f"""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: {name}, namespace: bench}}
spec:
  endpointSelector: {{matchLabels: {{app: {app}}}}}
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: client}}}}]
    toPorts:
    - ports: [{port_list}]{rules(kind)}
"""
    web = cnp("bench-web", "web", [80, 8080], "web")
    return web if only_web else web + "---" + cnp("bench-grpc", "grpc", [50051], "grpc")


# --- load generators ------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")


def run_wrk(a: AgentProcess, url: str, duration: float, conns: int) -> dict:
    r = subprocess.run(a.raw_argv("bench.client", "wrk", "-t2", f"-c{conns}", f"-d{int(duration)}s", "--latency",
                                  url), capture_output=True, text=True, timeout=duration + 30)
    out = r.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if not rps or non2xx:
        raise RuntimeError(f"wrk {url}: {out}{r.stderr}")
    return {"rps": float(rps.group(1)), "p50_ms": _ms(p50.group(1)), "p99_ms": _ms(p99.group(1)),
            "errors": errors.group(1) if errors else ""}


def run_h2load(a: AgentProcess, url: str, duration: float, conns: int, streams: int, tmp: str,
               grpc: bool = False) -> dict:
    log = os.path.join(tmp, "h2load.log")
    argv = ["h2load", "-t2", f"-c{conns}", f"-m{streams}", "-D", str(duration), "--warm-up-time", "1",
            f"--log-file={log}", url]
    if grpc:
        from importlib import util
        spec = util.spec_from_file_location("empire", EMPIRE)
        empire = util.module_from_spec(spec)
        spec.loader.exec_module(empire)  # type: ignore[union-attr]
        body = os.path.join(tmp, "grpc-body.bin")
        Path(body).write_bytes(empire.grpc_frame(empire.encode("tiefighter")))
        argv[1:1] = ["-d", body, "-H", "content-type: application/grpc", "-H", "te: trailers"]
    r = subprocess.run(a.raw_argv("bench.client", *argv), capture_output=True, text=True, timeout=duration + 30)
    out = r.stdout
    rps = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not rps or not codes or int(codes.group(1)) == 0 or any(int(codes.group(i)) for i in (3, 4)):
        raise RuntimeError(f"h2load {url}: {out}{r.stderr}")
    lat = sorted(int(line.split("\t")[2]) / 1000 for line in Path(log).read_text().splitlines() if line.strip())
    os.unlink(log)
    return {"rps": float(rps.group(1)), "p50_ms": lat[len(lat) // 2], "p99_ms": lat[int(len(lat) * 0.99)],
            "errors": ""}


# --- agent helpers --------------------------------------------------------------------------------------

def envoy_rss_mb(a: AgentProcess, pid: int | None = None) -> float:
    pid = pid or a.cli_json("status")["components"]["envoy"].get("pid")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def applied(a: AgentProcess) -> bool:
    st = a.cli_json("status")["components"]
    return (st["envoy"]["applied_policy_revision"] == st["policy"]["revision"] == st["datapath"]
            ["applied_policy_revision"] and not st["envoy"]["xds_pending"])


def http_status(a: AgentProcess, url: str) -> str:
    return a.raw_exec("bench.client", "curl", "-s", "-o", "/dev/null", "--max-time", "2", "-w", "%{http_code}",
                      url).stdout


def apply_policy(a: AgentProcess, text: str, web: str, l7: bool) -> None:
    a.cli("policy", "apply", "-f", "-", input=text)
    wait_for(lambda: applied(a), 30, what="the policy applied by the datapath and Envoy")
    # Enforced end to end: an unlisted path is 403 from Envoy with L7 rules, nginx's 404 without.
    want = "403" if l7 else "404"
    wait_for(lambda: http_status(a, f"http://{web}/not-in-policy") == want, 20, what=f"/not-in-policy → {want}")


def wait_idle(a: AgentProcess, quiet: float = 0.5, timeout: float = 20.0) -> None:
    """Until the agent has drained Envoy's access logs of the last load run (it competes for the CPUs)."""
    last = [-1, time.monotonic()]

    def quiet_for() -> bool:
        n = a.cli_json("status")["components"]["envoy"].get("access_log_records", 0)
        if n != last[0]:
            last[:] = [n, time.monotonic()]
        return time.monotonic() - last[1] >= quiet
    try:
        wait_for(quiet_for, timeout, interval=0.1, what="the access log to drain")
    except TimeoutError:
        pass


def median_run(rs: list[dict]) -> dict:
    return {"rps": statistics.median(r["rps"] for r in rs), "p50_ms": statistics.median(r["p50_ms"] for r in rs),
            "p99_ms": statistics.median(r["p99_ms"] for r in rs),
            "errors": "; ".join(r["errors"] for r in rs if r["errors"]), "rounds": [round(r["rps"]) for r in rs]}


class _EnvAgent(AgentProcess):
    def __init__(self, extra_env: dict[str, str], **kw) -> None:
        super().__init__(**kw)
        self.extra_env = extra_env

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.extra_env}


def start_node(agents: list[AgentProcess], tmp: str, name: str, pod_cidr: str,
               env: dict[str, str]) -> tuple[AgentProcess, dict[str, str]]:
    """An agent with the bench endpoints (nginx on its own files under tmp/name), ready to serve."""
    d = os.path.join(tmp, name)
    for sub in ("www", "tmp"):
        os.makedirs(os.path.join(d, sub))
    Path(d, "www", "index.html").write_bytes(BODY)
    conf = os.path.join(d, "nginx.conf")
    Path(conf).write_text(NGINX_CONF.format(d=d))
    a = _EnvAgent(env, pod_cidr=pod_cidr)
    agents.append(a)
    a.start()
    a.cli("apply", "-f", "-", input=manifest(conf, d))
    ips = {e["name"]: e["ip"] for e in a.cli_json("endpoint", "list") if e.get("namespace") == "bench"}
    wait_for(lambda: http_status(a, f"http://{ips['web']}/index.html") == "200", 20, what="nginx")
    wait_for(lambda: a.raw_exec("bench.client", PYTHON, str(EMPIRE), "call", f"{ips['grpc']}:50051",
                                "RequestLanding", "--timeout", "1").returncode == 0, 30, what="the gRPC server")
    return a, ips


PROBER = r"""
import http.client, sys, time
host, path, pause = sys.argv[1], sys.argv[2], float(sys.argv[3]) / 1000
conn, ready = None, False
while True:
    try:
        if conn is None:
            conn = http.client.HTTPConnection(host, 80, timeout=2)
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
    except (OSError, http.client.HTTPException):
        conn = None
        continue
    if not ready:
        print("ready", resp.status, flush=True)
        ready = True
    if resp.status != 403:
        print(repr(time.time()), resp.status, flush=True)
        break
    if pause:
        time.sleep(pause)
"""


def apply_to_enforced(a: AgentProcess, web: str, text: str, probe: str, via_cli: bool,
                      probe_interval_ms: float = 0.0) -> float:
    """ms from the start of the apply to the first request on `probe` that Envoy no longer denies.

    The prober sends its requests back to back (`probe_interval_ms` 0), or pauses that long between them:
    back to back it keeps a CPU busy, and Envoy and the agent (an access-log record per request) with it."""
    from mesh.cli.policy import apply_policies
    from mesh.manifest_sources import read_sources

    prober = subprocess.Popen(a.raw_argv("bench.client", PYTHON, "-c", PROBER, web, probe,
                                                  str(probe_interval_ms)), stdout=subprocess.PIPE,
                              text=True)
    try:
        first = prober.stdout.readline().split()  # type: ignore[union-attr]
        if first[:2] != ["ready", "403"]:
            raise RuntimeError(f"prober: {first}")
        if via_cli:
            # The `ostium` command as installed (console script), with Python's bytecode cache allowed as
            # on any normal install (this sandbox sets PYTHONDONTWRITEBYTECODE, recompiling every module at
            # every start).
            env = {k: v for k, v in a.env().items() if k != "PYTHONDONTWRITEBYTECODE"}
            t0 = time.time()
            subprocess.run([OSTIUM_CMD, "--socket", a.socket, "policy", "apply", "-f", "-"], input=text,
                           capture_output=True, text=True, check=True, env=env, timeout=60)
        else:
            path = os.path.join(a.state_dir, "bench-policy.yaml")
            Path(path).write_text(text)
            t0 = time.time()
            sources = read_sources([path])  # as `ostium policy apply` does: the agent parses and validates
            t_parsed = time.time()
            apply_policies(a.socket, sources)
            t_answered = time.time()
        line = prober.stdout.readline().split()  # type: ignore[union-attr]
        t1, status = float(line[0]), line[1]
        if status != "404":
            raise RuntimeError(f"prober saw {status}")
        if not via_cli:
            print(f"  apply at {RULES} rules: client read {(t_parsed - t0) * 1000:.0f} ms, API call "
                  f"{(t_answered - t_parsed) * 1000:.0f} ms, answer → enforced {(t1 - t_answered) * 1000:.0f} ms",
                  file=sys.stderr)
        return (t1 - t0) * 1000
    finally:
        prober.kill()
        prober.wait()


def apply_only(repeats: int, probe_interval_ms: float = 0.0) -> int:
    """Apply-to-enforced alone (no load runs): one node, from the 1-rule policy to 1,000 rules, `repeats` times
    via the API and via the CLI, interleaved; a fresh probe path each time, so every apply is a new policy
    revision with a new regex (the filler rules are the full run's). The first apply is the agent's first
    sight of the filler regexes (its caches are cold), reported on its own and included in the median."""
    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="ostium-bench-l7-")
    os.chmod(tmp, 0o755)
    agents: list[AgentProcess] = []
    enforce: dict[str, list[float]] = {"api": [], "cli": []}
    try:
        a, ips = start_node(agents, tmp, "main", "10.221.0.0/24", {})
        web = ips["web"]
        for rep in range(repeats):
            for via in ("api", "cli"):
                apply_policy(a, policy(1), web, l7=True)  # untimed: back to the full run's l7-1 state
                probe = f"/probe-{via}-{rep}"
                ms = apply_to_enforced(a, web, policy(RULES, probe=probe, only_web=True), probe,
                                       via_cli=via == "cli", probe_interval_ms=probe_interval_ms)
                enforce[via].append(ms)
                print(f"  {via} apply {rep + 1}: {ms:.0f} ms" + ("  (cold agent caches)" if rep == 0 and
                                                                   via == "api" else ""), file=sys.stderr)
    finally:
        for node in agents:
            node.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    api, cli = statistics.median(enforce["api"]), statistics.median(enforce["cli"])
    paced = f", prober pausing {probe_interval_ms:g} ms between requests" if probe_interval_ms else ""
    print(f"\napply-to-enforced at {RULES} rules{paced}, median of {repeats}: {api:.0f} ms (API, as `ostium policy apply` "
          f"once started; first apply {enforce['api'][0]:.0f} ms), {cli:.0f} ms (CLI subprocess incl. Python start)"
          f"  (target < 100 ms: {'met' if max(api, cli) < 100 else 'NOT met'}); took {time.monotonic() - started:.0f} s")
    print(json.dumps({"apply_to_enforced_ms": enforce}))
    return 0


# --- main -----------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=int, default=3, help="seconds per load run")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2, help="rounds of direct, l7-1, l7-1000 (medians reported)")
    ap.add_argument("--apply-only", action="store_true",
                    help="measure apply-to-enforced at 1,000 rules only (API and CLI), no load runs")
    ap.add_argument("--repeats", type=int, default=5, help="--apply-only: applies per variant (median reported)")
    ap.add_argument("--probe-interval", type=float, default=1.0, metavar="MS",
                    help="pause between the apply-to-enforced prober's requests (default 1 ms: the figure's "
                         "resolution; 0 = back to back, which keeps one of the two CPUs busy, and Envoy and the "
                         "agent's access log with it, while the apply is measured)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_l7: run as root (network namespaces, BPF, Envoy's transparent listeners)", file=sys.stderr)
        return 1
    if args.apply_only:
        if not shutil.which("nginx"):
            print("bench_l7: nginx is missing (apt-get install nginx)", file=sys.stderr)
            return 1
        return apply_only(args.repeats, args.probe_interval)
    for tool in ("nginx", "wrk", "h2load"):
        if not shutil.which(tool):
            print(f"bench_l7: {tool} is missing (apt-get install nginx wrk nghttp2-client)", file=sys.stderr)
            return 1
    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="ostium-bench-l7-")
    os.chmod(tmp, 0o755)  # nginx reads its files as root, but keep them readable for its workers anyway
    agents: list[AgentProcess] = []
    helpers: list[subprocess.Popen] = []
    results: dict[str, dict[str, dict]] = {}
    rss: dict[str, float] = {}
    enforce: dict[str, list[float]] = {}
    try:
        a, ips = start_node(agents, tmp, "main", "10.221.0.0/24", {})
        # Diagnostic: the same L7 path with Envoy's access log to the agent turned off (no L7 flows): what
        # the agent's per-request flow processing costs on these shared CPUs.
        b, ips_b = start_node(agents, tmp, "nolog", "10.224.0.0/24", {"OSTIUM_ENVOY_ACCESS_LOG": "off"})
        web, grpc, web_b = ips["web"], ips["grpc"], ips_b["web"]
        apply_policy(b, policy(1), web_b, l7=True)
        workloads = {
            "http1 (wrk)": lambda n, w: run_wrk(n, f"http://{w}/index.html", args.duration, args.connections),
            "http2 (h2load)": lambda n, w: run_h2load(n, f"http://{w}:8080/index.html", args.duration,
                                                      args.connections, 10, tmp),
            "grpc (h2load)": lambda n, w: run_h2load(n, f"http://{grpc}:50051{GRPC_PATH}", args.duration, 8, 8,
                                                     tmp, grpc=True),
        }
        runs: dict[str, dict[str, list[dict]]] = {}

        plain_workloads = {
            "http1 (wrk)": lambda n, w: run_wrk(n, "http://127.0.0.1:18080/index.html", args.duration,
                                                args.connections),
            "http2 (h2load)": lambda n, w: run_h2load(n, "http://127.0.0.1:18081/index.html", args.duration,
                                                      args.connections, 10, tmp),
        }
        plain_conf = os.path.join(tmp, "plain-envoy.json")
        Path(plain_conf).write_text(plain_envoy_config(web))
        from xdsserver.envoy import find_envoy_binary
        plain = subprocess.Popen(a.raw_argv("bench.client", find_envoy_binary(), "-c", plain_conf, "--concurrency",
                                            str(os.cpu_count() or 2), "--disable-hot-restart", "-l", "error"),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        helpers.append(plain)
        wait_for(lambda: a.raw_exec("bench.client", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                    "http://127.0.0.1:18080/index.html").stdout == "200", 20, what="plain Envoy")

        def measure(scenario: str, node: AgentProcess, w: str, names: list[str], pid: int | None = None) -> None:
            for name in names:
                r = (plain_workloads if scenario == "envoy-plain" else workloads)[name](node, w)
                runs.setdefault(scenario, {}).setdefault(name, []).append(r)
                print(f"  round {rnd + 1} {scenario:13} {name:15} {r['rps']:>10.0f} req/s", file=sys.stderr)
            rss[scenario] = max(rss.get(scenario, 0.0), envoy_rss_mb(node, pid))

        for rnd in range(args.rounds):
            for scenario, n_rules in (("direct", 0), ("l7-1", 1), ("l7-1000", RULES)):
                if scenario == "l7-1000":
                    # From 1 rule to 1,000: the probe path's verdict flips from 403 to nginx's 404. Odd rounds
                    # apply in-process (what `ostium policy apply` does once started), even ones via the CLI.
                    wait_idle(a)
                    via = "cli" if rnd % 2 else "api"
                    enforce.setdefault(via, []).append(
                        apply_to_enforced(a, web, policy(RULES, probe=f"/probe-{rnd}", only_web=True),
                                          f"/probe-{rnd}", via_cli=via == "cli",
                                          probe_interval_ms=args.probe_interval))
                    apply_policy(a, policy(RULES, probe=f"/probe-{rnd}"), web, l7=True)  # and gRPC's
                else:
                    apply_policy(a, policy(n_rules), web, l7=n_rules > 0)
                wait_idle(a)
                measure(scenario, a, web, list(workloads))
                if scenario == "direct":
                    measure("envoy-plain", a, web, list(plain_workloads), pid=plain.pid)
                if scenario == "l7-1":
                    measure("l7-1 no-log", b, web_b, ["http1 (wrk)", "http2 (h2load)"])
        results = {sc: {name: median_run(rs) for name, rs in per.items()} for sc, per in runs.items()}
    finally:
        for proc in helpers:
            proc.kill()
            proc.wait()
        for node in agents:
            node.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nL7 policy benchmark (median of {args.rounds} rounds, {args.duration} s per run, {args.connections} "
          f"connections; Envoy concurrency {os.cpu_count()} (one worker per CPU); {os.cpu_count()} CPUs shared by client, Envoy, server and agent)")
    print(f"{'scenario':13} {'workload':15} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'Envoy RSS MB':>13}")
    for scenario, per in results.items():
        for name, r in per.items():
            print(f"{scenario:13} {name:15} {r['rps']:>10.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                  f"{rss[scenario]:>13.1f}   rounds {r['rounds']}"
                  + (f"  (socket errors: {r['errors']})" if r["errors"] else ""))
    print()
    ok = True
    for name in results["direct"]:
        keep = results["l7-1"][name]["rps"] / results["direct"][name]["rps"]
        cost = 1 - results["l7-1000"][name]["rps"] / results["l7-1"][name]["rps"]
        print(f"{name:15} l7-1/direct = {keep:6.1%} (target >= 35%)   1,000 rules cost {cost:6.1%} of l7-1 "
              f"(target < 10%)")
        if name == "http1 (wrk)":
            ok &= keep >= 0.35 and cost < 0.10
        if name in results.get("envoy-plain", {}):
            plain_keep = results["envoy-plain"][name]["rps"] / results["direct"][name]["rps"]
            print(f"{'':15} a bare Envoy (router only) on the client's loopback: {plain_keep:6.1%} of direct; "
                  f"Ostium's L7 path = {results['l7-1'][name]['rps'] / results['envoy-plain'][name]['rps']:6.1%} "
                  "of it")
        if name in results.get("l7-1 no-log", {}):
            nolog = results["l7-1 no-log"][name]["rps"] / results["direct"][name]["rps"]
            print(f"{'':15} without the access log to the agent: l7-1/direct = {nolog:6.1%} (diagnostic)")
    api, cli = statistics.median(enforce["api"]), statistics.median(enforce.get("cli", [float("nan")]))
    print(f"apply-to-enforced at {RULES} rules: {api:.0f} ms (API, as `ostium policy apply` once started), "
          f"{cli:.0f} ms (CLI subprocess incl. Python start)  (target < 100 ms)")
    ok &= api < 100
    print(f"\nbench_l7 took {time.monotonic() - started:.0f} s; targets {'met' if ok else 'NOT all met'} "
          "(throughput targets judged on HTTP/1.1)")
    print(json.dumps({"results": results, "envoy_rss_mb": rss, "apply_to_enforced_ms": enforce}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
