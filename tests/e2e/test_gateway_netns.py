"""Ingress and egress gateways end to end, with test hosts in network namespaces the test creates.

Topology (all namespaces made here, deleted in `finally`):

    client 10.231.1.2 ──┐                          ┌── ext 10.231.9.2, 10.231.9.130 (echoes the peer address)
    pod-a  10.231.2.2 ──┼── node (Envoy, xDS; .1 on each link; ingress source 10.231.0.8/32 on lo;
    pod-b  10.231.3.2 ──┘         egress IP 10.231.9.100 on the ext link; forwarding on)

The node runs the scenario (this file with --inner under `ip netns exec`): L7Proxy (xDS + ALS +
Envoy) carrying the gateway resources beside the L7 policy's, exactly as the agent wires it.

Test scaffolding standing in for the datapath (another component), in the node's nft table
`gwtest`: (1) egress: prerouting `redirect` of TCP from pod-a to 10.231.9.0/24 port 80, except
10.231.9.128/25, to the egress gateway listener; (2) L7 policy on pod-a's port 8080 (the "with
policy" stage): output `redirect` of the gateway's upstream (source 10.231.0.8 = identity ingress)
to the L7 policy listener, skipping packets with Envoy's upstream mark.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NODE_IP, CLIENT_IP = "10.231.1.1", "10.231.1.2"
POD_A, POD_B = "10.231.2.2", "10.231.3.2"
EXT, EXT_EXCLUDED = "10.231.9.2", "10.231.9.130"
INGRESS_SRC, EGRESS_IP = "10.231.0.8", "10.231.9.100"
EGRESS_PORT, MARK = 15003, 0x1000


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.mark.root
@pytest.mark.timeout(150)
def test_ingress_and_egress_gateways_from_test_hosts(tmp_path):
    for tool in ("curl", "openssl", "nft"):
        if not subprocess.run(["which", tool], capture_output=True).returncode == 0:
            pytest.fail(f"{tool} is not installed (scripts/apt-packages.txt)")
    tag = uuid.uuid4().hex[:6]
    names = {k: f"gw{k}-{tag}" for k in ("node", "client", "a", "b", "ext")}
    try:
        for ns in names.values():
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        node = names["node"]
        links = {"client": (NODE_IP, CLIENT_IP), "a": ("10.231.2.1", POD_A), "b": ("10.231.3.1", POD_B),
                 "ext": ("10.231.9.1", EXT)}
        for peer, (node_addr, peer_addr) in links.items():
            ns = names[peer]
            _ip("link", "add", f"n{peer}-{tag}", "netns", node, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", node, "addr", "add", f"{node_addr}/24", "dev", f"n{peer}-{tag}")
            _ip("-n", node, "link", "set", f"n{peer}-{tag}", "up")
            _ip("-n", ns, "addr", "add", f"{peer_addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "route", "add", "default", "via", node_addr)
        _ip("-n", names["ext"], "addr", "add", f"{EXT_EXCLUDED}/24", "dev", "eth0")
        _ip("-n", node, "addr", "add", f"{INGRESS_SRC}/32", "dev", "lo")
        _ip("-n", node, "addr", "add", f"{EGRESS_IP}/24", "dev", f"next-{tag}")
        # Forwarding only inside the test's node namespace (a per-namespace setting).
        subprocess.run(["ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.run(["ip", "netns", "exec", node, sys.executable, __file__, "--inner", str(tmp_path),
                               json.dumps(names)], cwd=REPO, env=env, capture_output=True, text=True, timeout=130)
        assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
        assert "ALL OK" in proc.stdout
    finally:
        for ns in names.values():
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


# ---- the scenario, run inside the node namespace ----------------------------------------------


def _cert(d: Path, host: str) -> tuple[str, str]:
    key, crt = d / f"{host}.key", d / f"{host}.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "1", "-subj", f"/CN={host}",
                    "-addext", f"subjectAltName=DNS:{host}"], check=True, capture_output=True)
    return crt.read_text(), key.read_text()


def _secret(name: str, crt: str, key: str) -> str:
    b64 = lambda s: base64.b64encode(s.encode()).decode()  # noqa: E731
    return f"""---
apiVersion: v1
kind: Secret
metadata: {{name: {name}, namespace: shop}}
type: kubernetes.io/tls
data: {{tls.crt: {b64(crt)}, tls.key: {b64(key)}}}
"""


MANIFESTS = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  gatewayClassName: ostium
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - name: foo
    port: 443
    protocol: HTTPS
    hostname: foo.example.test
    tls: {certificateRefs: [{name: foo-cert}]}
  - name: bar
    port: 443
    protocol: HTTPS
    hostname: bar.example.test
    tls: {certificateRefs: [{name: bar-cert}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{name: edge}]
  hostnames: [www.example.test, foo.example.test, bar.example.test]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    backendRefs: [{name: web-v2, port: 8080}]
  - backendRefs: [{name: web-v1, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: shop}
spec:
  parentRefs: [{name: edge, sectionName: http}]
  hostnames: [grpc.example.test]
  rules:
  - matches: [{method: {service: test.Echo, method: Say}}]
    backendRefs: [{name: grpc-echo, port: 50051}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: shop}
spec:
  defaultBackend: {service: {name: web-v1, port: {number: 8080}}}
  tls: [{hosts: [shop.example.test], secretName: shop-cert}]
  rules:
  - host: shop.example.test
    http:
      paths:
      - {path: /cart, pathType: Prefix, backend: {service: {name: web-v2, port: {name: http}}}}
"""

EGRESS = """---
apiVersion: ostium.io/v1alpha1
kind: EgressGatewayPolicy
metadata: {name: egress-a, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  selectors: [{podSelector: {matchLabels: {app: client}}}]
  destinationCIDRs: [10.231.9.0/24]
  excludedCIDRs: [10.231.9.128/25]
  egressGateway: {egressIP: 10.231.9.100}
%s
---
apiVersion: ostium.io/v1alpha1
kind: EgressGatewayPolicy
metadata: {name: egress-overlap, creationTimestamp: "2026-02-01T00:00:00Z"}
spec:
  selectors: [{podSelector: {matchExpressions: [{key: app, operator: In, values: [client]}]}}]
  destinationCIDRs: [10.231.9.0/28]
  egressGateway: {interface: eth-missing}
"""


async def _inner(state_dir: Path, names: dict[str, str]) -> None:
    import asyncio
    import time

    from mesh.gateway.resolve import EgressEndpoint, GatewaySettings, resolve
    from mesh.gateway.testing import ECHO_PROTO, load_objects
    from xdsserver.proxy import L7Proxy, ProxyConfig
    from xdsserver.testing import wait_port_open
    from xdsserver.translate import Direction, HTTPRule, PeerRule, PortPolicy, ProxyOptions
    from xdsserver.translate.gateway import GatewayOptions, translate_gateway

    procs: list[subprocess.Popen] = []
    l7_port = 15101

    def spawn(ns: str, *argv: str) -> None:
        p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "mesh.gateway.testing", *argv],
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "ready", argv

    def sh(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", names[ns], *argv], capture_output=True, text=True,
                              check=check, timeout=20)

    def curl(ns: str, url: str, *args: str) -> tuple[int, str]:
        out = sh(ns, "curl", "-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}", *args, url).stdout
        body, _, code = out.rpartition("\n")
        return int(code), body

    certs = {h: _cert(state_dir, h) for h in ("foo.example.test", "bar.example.test", "shop.example.test")}
    (state_dir / "echo.proto").write_text(ECHO_PROTO)
    endpoints = {("shop", "web-v1", 8080): [(POD_A, 8080)], ("shop", "web-v1", "http"): [(POD_A, 8080)],
                 ("shop", "web-v2", 8080): [(POD_B, 8080)], ("shop", "web-v2", "http"): [(POD_B, 8080)],
                 ("shop", "grpc-echo", 50051): [(POD_A, 50051)]}
    settings = GatewaySettings(ingress_http_port=8000, ingress_https_port=8443, options=GatewayOptions(
        address=NODE_IP, upstream_source=INGRESS_SRC, egress_address="0.0.0.0", egress_port=EGRESS_PORT,
        egress_transparent=False, upstream_mark=MARK))
    pods = [EgressEndpoint(POD_A, "default", {"app": "client"}), EgressEndpoint(POD_B, "default", {"app": "other"})]
    secrets = "".join(_secret(f"{h.split('.')[0]}-cert", *certs[h]) for h in certs)

    def gateway_resources(egress_rules: str = ""):
        objs = load_objects(MANIFESTS + secrets + EGRESS % egress_rules)
        res = resolve(objs, settings, lambda ns, svc, port: endpoints.get((ns, svc, port)), endpoints=pods)
        return res, translate_gateway(res.input).by_type()

    for ns, argv in (("a", ("http", "web-v1", POD_A, "8080")), ("b", ("http", "web-v2", POD_B, "8080")),
                     ("a", ("grpc", "grpc-echo", POD_A, "50051")), ("ext", ("http", "external", "0.0.0.0", "80"))):
        spawn(names[ns], *argv)
    nft = f"""
table ip gwtest {{
  chain pre {{
    type nat hook prerouting priority -100; policy accept;
    ip saddr {POD_A} ip daddr 10.231.9.128/25 return
    ip saddr {POD_A} ip daddr 10.231.9.0/24 tcp dport 80 redirect to :{EGRESS_PORT}
  }}
  chain out {{
    type nat hook output priority -100; policy accept;
    meta mark & {MARK:#x} == {MARK:#x} return
    ip saddr {INGRESS_SRC} ip daddr {POD_A} tcp dport 8080 redirect to :{l7_port}
  }}
}}"""
    subprocess.run(["nft", "-f", "-"], input=nft, text=True, check=True)
    records = []
    proxy = L7Proxy(ProxyConfig(state_dir / "envoy", envoy_log_level="error",
                                options=ProxyOptions(upstream_mark=MARK)), on_record=records.append)
    try:
        await proxy.start()
        res, resources = gateway_resources()
        status = {(s.kind, s.name): s.to_api() for s in res.statuses}
        overlap = {c["type"]: c for c in status[("EgressGatewayPolicy", "egress-overlap")]["conditions"]}
        assert overlap["ResolvedRefs"]["reason"] == "InterfaceNotFound", overlap
        proxy.set_extra("gateway", resources)
        # pod-a:8080 is redirected to Envoy's L7 listener (the datapath's job); first without HTTP
        # rules: identity ingress (8) may send anything.
        ipcache = {8: [f"{INGRESS_SRC}/32"]}
        allow_ingress = PortPolicy(POD_A, Direction.INGRESS, 8080, l7_port, (PeerRule(frozenset({8})),))
        assert await proxy.apply([allow_ingress], ipcache) == []
        await wait_port_open(l7_port)
        for port in (80, 443, 8000, 8443):
            await wait_port_open(port, NODE_IP)

        # -- Ingress: Gateway API over HTTP from the client host --
        code, body = await asyncio.to_thread(curl, "client", f"http://{NODE_IP}/x", "-H", "Host: www.example.test")
        got = json.loads(body)
        assert code == 200 and got["backend"] == "web-v1", body
        code, body = await asyncio.to_thread(curl, "client", f"http://{NODE_IP}/v2/y", "-H", "Host: www.example.test")
        got = json.loads(body)
        # pod-b (no L7 redirect) sees the gateway's upstream source: the address of identity ingress.
        assert code == 200 and got["backend"] == "web-v2" and got["peer"] == INGRESS_SRC, body
        code, _ = await asyncio.to_thread(curl, "client", f"http://{NODE_IP}/", "-H", "Host: nope.example.test")
        assert code == 404
        # gRPC with grpcurl through the same listener.
        grpcurl = os.path.join(os.path.dirname(sys.executable), "grpcurl")
        out = await asyncio.to_thread(sh, "client", grpcurl, "-plaintext", "-import-path", str(state_dir), "-proto",
                                      "echo.proto", "-authority", "grpc.example.test", "-d", '{"text": "hi"}',
                                      f"{NODE_IP}:80", "test.Echo/Say")
        assert json.loads(out.stdout) == {"text": "grpc-echo test.Echo/Say"}, out
        out = await asyncio.to_thread(sh, "client", grpcurl, "-plaintext", "-import-path", str(state_dir), "-proto",
                                      "echo.proto", "-authority", "grpc.example.test", "-d", "{}",
                                      f"{NODE_IP}:80", "test.Echo/Secret", check=False)
        assert out.returncode != 0 and "Unimplemented" in out.stderr, out

        # -- TLS with SNI: each hostname gets its own certificate --
        for host in ("foo.example.test", "bar.example.test"):
            crt = state_dir / f"{host}.crt"
            code, body = await asyncio.to_thread(curl, "client", f"https://{host}/v2/z", "--cacert", str(crt),
                                                 "--resolve", f"{host}:443:{NODE_IP}")
            assert code == 200 and json.loads(body)["backend"] == "web-v2", (host, body)
        wrong = await asyncio.to_thread(sh, "client", "curl", "-sS", "--max-time", "5", "--cacert",
                                        str(state_dir / "foo.example.test.crt"), "--resolve",
                                        f"bar.example.test:443:{NODE_IP}", "https://bar.example.test/", check=False)
        assert wrong.returncode == 60, wrong   # bar's SNI gets bar's certificate, which foo's CA cannot verify

        # -- Kubernetes Ingress: HTTP and TLS ports, prefix paths, named service port, defaultBackend --
        for url, args, backend in ((f"http://{NODE_IP}:8000/cart/1", ("-H", "Host: shop.example.test"), "web-v2"),
                                   (f"http://{NODE_IP}:8000/cartoon", ("-H", "Host: shop.example.test"), "web-v1"),
                                   (f"http://{NODE_IP}:8000/", ("-H", "Host: other.test"), "web-v1"),
                                   ("https://shop.example.test:8443/cart", ("--cacert", str(state_dir / "shop.example.test.crt"),
                                    "--resolve", f"shop.example.test:8443:{NODE_IP}"), "web-v2")):
            code, body = await asyncio.to_thread(curl, "client", url, *args)
            assert code == 200 and json.loads(body)["backend"] == backend, (url, body)

        # -- L7 policy of the backend applies to gateway traffic as identity `ingress` (8) --
        policy = PortPolicy(POD_A, Direction.INGRESS, 8080, l7_port,
                            (PeerRule(frozenset({8}), (HTTPRule(method="GET", path="/public/.*"),)),))
        assert await proxy.apply([policy], ipcache) == []
        code, body = await asyncio.to_thread(curl, "client", f"http://{NODE_IP}/public/a", "-H", "Host: www.example.test")
        assert code == 200 and json.loads(body)["backend"] == "web-v1", body
        code, body = await asyncio.to_thread(curl, "client", f"http://{NODE_IP}/private", "-H", "Host: www.example.test")
        assert code == 403 and "Access denied" in body, body
        code, _ = await asyncio.to_thread(curl, "client", f"http://{NODE_IP}/v2/private", "-H", "Host: www.example.test")
        assert code == 200   # web-v2 has no L7 policy
        deadline = time.monotonic() + 10
        # The backend's L7 listener denied it by RBAC (its principal: direct remote 10.231.0.8 = identity 8).
        while not any(r.rbac_denied and r.log_name == f"ingress:{POD_A}:8080" for r in records):
            assert time.monotonic() < deadline, records
            await asyncio.sleep(0.05)   # poll for the access log flush (100 ms interval)
        assert await proxy.apply([allow_ingress], ipcache) == []   # HTTP rules removed: served again
        code, body = await asyncio.to_thread(curl, "client", f"http://{NODE_IP}/private", "-H", "Host: www.example.test")
        assert code == 200 and json.loads(body)["backend"] == "web-v1", body

        # -- Egress gateway: the external host sees the egress IP for selected pods only --
        def peer(ns: str, url: str, *args: str) -> tuple[int, str]:
            code, body = curl(ns, url, *args)
            return code, (json.loads(body)["peer"] if code == 200 else body)

        assert await asyncio.to_thread(peer, "a", f"http://{EXT}/") == (200, EGRESS_IP)
        assert await asyncio.to_thread(peer, "b", f"http://{EXT}/") == (200, POD_B)
        assert await asyncio.to_thread(peer, "a", f"http://{EXT_EXCLUDED}/") == (200, POD_A)   # excluded CIDR
        assert (await asyncio.to_thread(peer, "a", f"http://{EXT}/", "-X", "POST"))[0] == 200

        # -- with an HTTP rule: GET allowed, POST denied by the egress gateway --
        res, resources = gateway_resources("  rules: {http: [{method: GET}]}")
        proxy.set_extra("gateway", resources)
        assert await proxy.apply([allow_ingress], ipcache) == []
        assert await asyncio.to_thread(peer, "a", f"http://{EXT}/") == (200, EGRESS_IP)
        code, body = await asyncio.to_thread(curl, "a", f"http://{EXT}/", "-X", "POST")
        assert code == 403, body
        assert await asyncio.to_thread(peer, "b", f"http://{EXT}/", "-X", "POST") == (200, POD_B)
        print("ALL OK")
    finally:
        await proxy.stop()
        for p in procs:
            p.kill()
            p.wait()
        subprocess.run(["nft", "delete", "table", "ip", "gwtest"], check=False)


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--inner":
    import asyncio

    asyncio.run(_inner(Path(sys.argv[2]), json.loads(sys.argv[3])))
