"""Bad input through the agent-side component, a real Envoy and the CLI: routes to missing services
or ports, conflicting listeners, invalid certificates, overlapping egress policies are reported in
status conditions and `ostium gateway status`; valid routes keep serving. Loopback only.

The agent is reduced to what GatewayComponent uses (state store, endpoint list, L7 proxy); the
component, L7Proxy, Envoy, the API route and the CLI are the real ones.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from mesh.api.server import make_app, serve_unix
from mesh.cli.main import main as cli_main
from mesh.components.gateway import GatewayComponent
from mesh.gateway.resolve import GatewaySettings
from mesh.gateway.testing import echo_backend, http_request
from mesh.manifests import parse_documents, parse_yaml_text
from mesh.state.store import StateStore
from xdsserver.proxy import L7Proxy, ProxyConfig
from xdsserver.testing import free_port, wait_port_open
from xdsserver.translate.gateway import GatewayOptions

pytestmark = pytest.mark.timeout(90)


class _L7:
    """What GatewayComponent needs of the agent's L7ProxyComponent: .proxy, .push(), .last_error."""

    def __init__(self, proxy: L7Proxy) -> None:
        self.proxy = proxy
        self.last_error = ""
        self.nacked: list = []

    async def push(self) -> None:
        self.nacked = await self.proxy.apply([], {})


def _endpoint(name: str, ip: str, labels: dict) -> SimpleNamespace:
    spec = SimpleNamespace(namespace="shop", name=name, labels=labels, ports=())
    return SimpleNamespace(spec=spec, ip=ip, state="ready", namespace="shop", name=name)


def _cert(d: Path, host: str) -> tuple[str, str]:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(d / f"{host}.key"), "-out", str(d / f"{host}.crt"), "-days", "1",
                    "-subj", f"/CN={host}", "-addext", f"subjectAltName=DNS:{host}"], check=True, capture_output=True)
    return (d / f"{host}.crt").read_text(), (d / f"{host}.key").read_text()


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


async def test_bad_references_are_reported_and_valid_routes_keep_serving(tmp_path):
    http_port, https_port = free_port(), free_port()
    good_crt, good_key = _cert(tmp_path, "good.test")
    other_crt, other_key = _cert(tmp_path, "other.test")
    with echo_backend("web") as web:
        web_port = web.server_address[1]
        manifests = f"""
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec: {{clusterIP: 10.96.0.10, selector: {{app: web}}, ports: [{{port: 80, targetPort: {web_port}}}]}}
---
apiVersion: v1
kind: Secret
metadata: {{name: good, namespace: shop}}
type: kubernetes.io/tls
data: {{tls.crt: {_b64(good_crt)}, tls.key: {_b64(good_key)}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: mismatched, namespace: shop}}
type: kubernetes.io/tls
data: {{tls.crt: {_b64(good_crt)}, tls.key: {_b64(other_key)}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z"}}
spec:
  gatewayClassName: ostium
  listeners:
  - {{name: http, port: {http_port}, protocol: HTTP}}
  - {{name: good, port: {https_port}, protocol: HTTPS, hostname: good.test, tls: {{certificateRefs: [{{name: good}}]}}}}
  - {{name: bad, port: {https_port}, protocol: HTTPS, hostname: bad.test, tls: {{certificateRefs: [{{name: mismatched}}]}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: late, namespace: shop, creationTimestamp: "2026-02-01T00:00:00Z"}}
spec:
  gatewayClassName: ostium
  listeners: [{{name: clash, port: {http_port}, protocol: HTTPS, tls: {{certificateRefs: [{{name: good}}]}}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: shop}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - matches: [{{path: {{value: /gone}}}}]
    backendRefs: [{{name: missing, port: 80}}]
  - matches: [{{path: {{value: /badport}}}}]
    backendRefs: [{{name: web, port: 8081}}]
  - backendRefs: [{{name: web, port: 80}}]
---
apiVersion: ostium.io/v1alpha1
kind: EgressGatewayPolicy
metadata: {{name: first, creationTimestamp: "2026-01-01T00:00:00Z"}}
spec: {{selectors: [{{podSelector: {{matchLabels: {{app: web}}}}}}], destinationCIDRs: [192.0.2.0/24],
        egressGateway: {{egressIP: 127.0.0.1}}}}
---
apiVersion: ostium.io/v1alpha1
kind: EgressGatewayPolicy
metadata: {{name: second, creationTimestamp: "2026-02-01T00:00:00Z"}}
spec: {{selectors: [{{podSelector: {{}}}}], destinationCIDRs: [192.0.2.128/25], egressGateway: {{egressIP: 127.0.0.1}}}}
"""
        store = StateStore(str(tmp_path / "state.db"))
        proxy = L7Proxy(ProxyConfig(tmp_path / "envoy", envoy_log_level="error"))
        eps = [_endpoint("web-0", "127.0.0.1", {"app": "web"})]
        agent = SimpleNamespace(store=store, endpoints=SimpleNamespace(list=lambda: eps), l7proxy=_L7(proxy))
        comp = GatewayComponent(agent, GatewaySettings(options=GatewayOptions(
            address="127.0.0.1", egress_address="127.0.0.1", egress_port=free_port(), egress_transparent=False)))
        runner = None
        try:
            await proxy.start()
            await comp.start()
            for item in parse_documents(parse_yaml_text(manifests, "bad.yaml")):
                if item.kind == "Service":
                    store.put(item.kind, item.namespace, item.name, item.doc.body)
                else:
                    assert await comp.apply(item) == "created"
            assert agent.l7proxy.nacked == []          # nothing invalid reached Envoy
            await wait_port_open(http_port)

            # Valid routes keep serving; the broken rules answer 500.
            r = await asyncio.to_thread(http_request, "127.0.0.1", http_port, "/ok")
            assert r.status == 200 and r.json["backend"] == "web"
            for path in ("/gone", "/badport"):
                assert (await asyncio.to_thread(http_request, "127.0.0.1", http_port, path)).status == 500
            # The valid HTTPS listener serves; the one with a mismatched key is not programmed.
            ok = subprocess.run(["curl", "-sS", "--max-time", "5", "--cacert", str(tmp_path / "good.test.crt"),
                                 "--resolve", f"good.test:{https_port}:127.0.0.1", f"https://good.test:{https_port}/x"],
                                capture_output=True, text=True)
            assert ok.returncode == 0 and json.loads(ok.stdout)["backend"] == "web", ok
            bad = subprocess.run(["curl", "-sS", "-k", "--max-time", "5", "--resolve",
                                  f"bad.test:{https_port}:127.0.0.1", f"https://bad.test:{https_port}/x"],
                                 capture_output=True, text=True)
            # No filter chain for SNI bad.test (and no default chain on the port): the handshake is refused.
            assert bad.returncode == 35, bad

            # The status, through the real API route and the CLI.
            sock = str(tmp_path / "api.sock")
            runner = await serve_unix(make_app(comp.routes()), sock)
            for fmt in ("json", "table"):
                out_path = tmp_path / f"out.{fmt}"

                def run_cli() -> int:
                    import contextlib
                    with open(out_path, "w") as fh, contextlib.redirect_stdout(fh):
                        return cli_main(["--socket", sock, "gateway", "status", "-o", fmt])

                assert await asyncio.to_thread(run_cli) == 0
            data = json.loads((tmp_path / "out.json").read_text())
            by = {(o["kind"], o["name"]): o for o in data["objects"]}

            def conds(conditions):
                return {c["type"]: (c["status"], c["reason"]) for c in conditions}

            listeners = {lst["name"]: conds(lst["conditions"]) for lst in by[("Gateway", "edge")]["listeners"]}
            assert listeners["bad"]["ResolvedRefs"] == ("False", "InvalidCertificateRef")
            assert listeners["bad"]["Programmed"][0] == "False" and listeners["good"]["Programmed"][0] == "True"
            clash = conds(by[("Gateway", "late")]["listeners"][0]["conditions"])
            assert clash["Conflicted"] == ("True", "ProtocolConflict")
            parent = conds(by[("HTTPRoute", "web")]["parents"][0]["conditions"])
            assert parent == {"Accepted": ("True", "Accepted"), "ResolvedRefs": ("False", "BackendNotFound")}
            second = conds(by[("EgressGatewayPolicy", "second")]["conditions"])
            assert second["Conflicted"] == ("True", "Overlapping")
            table = (tmp_path / "out.table").read_text()
            for text in ("InvalidCertificateRef", "ProtocolConflict", "BackendNotFound", "Overlapping"):
                assert text in table, table

            # Fixing the reference heals the route without touching anything else.
            fix = parse_documents(parse_yaml_text(manifests.replace("name: missing, port: 80", "name: web, port: 80"),
                                                  "fix.yaml"))
            assert await comp.apply(next(i for i in fix if i.kind == "HTTPRoute")) == "configured"
            assert (await asyncio.to_thread(http_request, "127.0.0.1", http_port, "/gone")).status == 200
            assert await comp.delete("HTTPRoute", "shop", "web")
            assert (await asyncio.to_thread(http_request, "127.0.0.1", http_port, "/ok")).status == 404
        finally:
            if runner is not None:
                await runner.cleanup()
            await proxy.stop()
            store.close()
