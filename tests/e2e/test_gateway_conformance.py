"""Gateway API conformance tables (tests/data/gateway/*.yaml) against a real Envoy.

Each suite: a Gateway with one HTTP listener on 127.0.0.1, one route (HTTPRoute or GRPCRoute) with
the suite's rules, echo backends that say who they are. Manifests go through the same path as
`ostium apply` (parse → resolve → translate → xDS); every case is a real request through Envoy.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
import yaml

from mesh.gateway.resolve import GatewaySettings, resolve
from mesh.gateway.testing import echo_backend, grpc_echo_backend, http_request, load_objects
from xdsserver.cache import Snapshot
from xdsserver.testing import envoy_harness, free_port, wait_port_open
from xdsserver.translate.gateway import GatewayOptions, translate_gateway

pytestmark = pytest.mark.timeout(90)
DATA = Path(__file__).resolve().parents[1] / "data" / "gateway"
NS = "gateway-conformance-infra"


def _suites(name: str) -> list[dict]:
    return yaml.safe_load((DATA / name).read_text())["suites"]


HTTP_SUITES = _suites("httproute_conformance.yaml")
GRPC_SUITES = _suites("grpcroute_conformance.yaml")


def _manifests(kind: str, port: int, suite: dict) -> str:
    gateway = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "same-namespace", "namespace": NS},
               "spec": {"gatewayClassName": "ostium", "listeners": [
                   {"name": "http", "port": port, "protocol": "HTTP",
                    "allowedRoutes": {"namespaces": {"from": "Same"}}}]}}
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": kind,
             "metadata": {"name": suite["name"].lower(), "namespace": NS},
             "spec": {"parentRefs": [{"name": "same-namespace"}], "rules": yaml.safe_load(suite["rules"])}}
    if suite.get("hostnames"):
        route["spec"]["hostnames"] = suite["hostnames"]
    return yaml.safe_dump_all([gateway, route])


async def _program(h, manifests: str, backends: dict) -> tuple:
    objs = load_objects(manifests)
    res = resolve(objs, GatewaySettings(options=GatewayOptions(address="127.0.0.1", als_cluster=None)),
                  lambda ns, svc, port: backends.get((ns, svc, port)))
    snap = Snapshot.build(translate_gateway(res.input).by_type())
    h.cache.set_snapshot(h.node_id, snap)
    assert await h.server.wait_applied(h.node_id, snap) == []
    return res


def _check_http_case(case: dict, port: int) -> None:
    kw = dict(method=case.get("method", "GET"), headers=case.get("headers"), host_header=case.get("host"))
    if "weights" in case:
        n = case["n"]
        seen = Counter()
        for _ in range(n):
            r = http_request("127.0.0.1", port, case["path"], **kw)
            seen[r.json["backend"] if r.status == 200 else str(r.status)] += 1
        for who, share in case["weights"].items():
            got = seen[who] / n
            # ±0.12 at n ≥ 200 is over 3.5 standard deviations for these shares: a flake is unlikely.
            assert abs(got - share) <= 0.12, f"{who}: {got:.2f} of {n} requests, expected ~{share} ({dict(seen)})"
        assert sum(seen.values()) == n and set(seen) <= set(case["weights"]), dict(seen)
        return
    r = http_request("127.0.0.1", port, case["path"], **kw)
    if "backend" in case:
        assert r.status == 200, (case, r)
        got = r.json
        assert got["backend"] == case["backend"], (case, got)
        if "seen_path" in case:
            assert got["path"] == case["seen_path"], (case, got)
        for k, v in (case.get("seen_headers") or {}).items():
            assert got["headers"].get(k) == v, (case, got["headers"])
        for k in case.get("absent_headers") or ():
            assert k not in got["headers"], (case, got["headers"])
    else:
        assert r.status == case["status"], (case, r.status, r.body[:200])
        if "location" in case:
            assert r.headers.get("location") == case["location"], (case, r.headers)
    for k, v in (case.get("response_headers") or {}).items():
        assert r.headers.get(k) == v, (case, r.headers)
    for k in case.get("absent_response_headers") or ():
        assert k not in r.headers, (case, r.headers)


@pytest.mark.parametrize("suite", HTTP_SUITES, ids=[s["name"] for s in HTTP_SUITES])
async def test_httproute_conformance(suite, tmp_path):
    port = free_port()
    with echo_backend("infra-backend-v1") as v1, echo_backend("infra-backend-v2") as v2, \
            echo_backend("infra-backend-v3") as v3:
        backends = {(NS, b.backend_name, 8080): [("127.0.0.1", b.server_address[1])] for b in (v1, v2, v3)}
        async with envoy_harness(tmp_path, log_level="error") as h:
            await _program(h, _manifests("HTTPRoute", port, suite), backends)
            await wait_port_open(port)
            for case in suite["cases"]:
                await asyncio.to_thread(_check_http_case, case, port)


async def _grpc_call(port: int, method: str, metadata: dict | None) -> tuple[str, str]:
    import grpc

    from mesh.gateway.testing import encode_text

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary(f"/{method}")
        try:
            raw = await call(encode_text("hi"), metadata=tuple((metadata or {}).items()), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return "", exc.code().name
        return raw[2:].decode().split(" ")[0], "OK"


@pytest.mark.parametrize("suite", GRPC_SUITES, ids=[s["name"] for s in GRPC_SUITES])
async def test_grpcroute_conformance(suite, tmp_path):
    port = free_port()
    async with grpc_echo_backend("grpc-backend-v1") as p1, grpc_echo_backend("grpc-backend-v2") as p2, \
            grpc_echo_backend("grpc-backend-v3") as p3:
        backends = {(NS, f"grpc-backend-v{i}", 50051): [("127.0.0.1", p)] for i, p in ((1, p1), (2, p2), (3, p3))}
        async with envoy_harness(tmp_path, log_level="error") as h:
            await _program(h, _manifests("GRPCRoute", port, suite), backends)
            await wait_port_open(port)
            for case in suite["cases"]:
                backend, code = await _grpc_call(port, case["method"], case.get("metadata"))
                if "backend" in case:
                    assert (backend, code) == (case["backend"], "OK"), case
                else:
                    assert code == case["code"], (case, backend, code)
