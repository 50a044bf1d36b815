"""Test helpers for gateways: named echo backends (HTTP and gRPC), manifests → objects, request tools.

Loopback or test-namespace addresses only. The HTTP echo answers JSON naming the backend and what
it received (method, path, headers), so a test can tell which backend a gateway picked.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import threading
from dataclasses import dataclass
from typing import Iterator

from mesh.gateway.model import (KIND_EGRESS, KIND_GATEWAY, KIND_GRPCROUTE, KIND_HTTPROUTE, KIND_INGRESS,
                                KIND_INGRESS_CLASS, KIND_SECRET)
from mesh.gateway.resolve import GatewayObjects


class _Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        headers: dict[str, str] = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = f"{headers[k]},{v}" if k in headers else v
        body = json.dumps({"backend": self.server.backend_name,  # type: ignore[attr-defined]
                           "method": self.command, "path": self.path, "headers": headers,
                           "peer": self.client_address[0]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def echo_backend(name: str, host: str = "127.0.0.1", port: int = 0) -> Iterator[http.server.ThreadingHTTPServer]:
    srv = http.server.ThreadingHTTPServer((host, port), _Echo)
    srv.daemon_threads = True
    srv.backend_name = name  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def encode_text(text: str) -> bytes:
    """protobuf `message Msg { string text = 1; }` by hand (grpcurl sends/reads it with echo.proto)."""
    raw = text.encode()
    return b"\x0a" + _varint(len(raw)) + raw


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


ECHO_PROTO = """syntax = "proto3";
package test;
message Msg { string text = 1; }
service Echo { rpc Say(Msg) returns (Msg); rpc Secret(Msg) returns (Msg); rpc Other(Msg) returns (Msg); }
service Admin { rpc Reset(Msg) returns (Msg); }
"""


@contextlib.asynccontextmanager
async def grpc_echo_backend(name: str, host: str = "127.0.0.1"):
    """gRPC server for test.Echo/{Say,Secret,Other} and test.Admin/Reset answering Msg{text: "<name> <method>"}."""
    import grpc

    def handler(method: str):
        async def call(request: bytes, context) -> bytes:
            return encode_text(f"{name} {method}")
        return grpc.unary_unary_rpc_method_handler(call)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler("test.Echo", {m: handler(f"test.Echo/{m}") for m in ("Say", "Secret", "Other")}),
        grpc.method_handlers_generic_handler("test.Admin", {"Reset": handler("test.Admin/Reset")})))
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


def load_objects(text: str, source: str = "<test>") -> GatewayObjects:
    """Multi-document YAML → GatewayObjects (all-or-nothing validation, as `ostium apply`)."""
    import mesh.gateway.kinds  # noqa: F401  (registers the kinds)
    from mesh.manifests import parse_documents, parse_yaml_text

    objs = GatewayObjects()
    for p in parse_documents(parse_yaml_text(text, source)):
        if p.kind == KIND_GATEWAY:
            objs.gateways.append(p.obj)
        elif p.kind in (KIND_HTTPROUTE, KIND_GRPCROUTE):
            objs.routes.append(p.obj)
        elif p.kind == KIND_INGRESS:
            objs.ingresses.append(p.obj)
        elif p.kind == KIND_INGRESS_CLASS:
            objs.ingress_classes.append(p.obj)
        elif p.kind == KIND_SECRET:
            objs.secrets[(p.obj.namespace, p.obj.name)] = p.obj
        elif p.kind == KIND_EGRESS:
            objs.egress_policies.append(p.obj)
    return objs


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body)


def http_request(host: str, port: int, path: str, *, method: str = "GET", headers: dict[str, str] | None = None,
                 host_header: str | None = None, timeout: float = 5.0) -> Response:
    """One plain HTTP/1.1 request, no redirect following, no path normalization."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        if host_header is not None:
            hdrs["Host"] = host_header
        conn.request(method, path, headers=hdrs)
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def _serve_main(argv: list[str]) -> None:
    """`python -m mesh.gateway.testing http|grpc NAME HOST PORT`: a backend process for a test netns.
    Prints "ready" once listening; runs until killed."""
    import asyncio
    import signal
    import sys

    mode, name, host, port = argv[0], argv[1], argv[2], int(argv[3])
    if mode == "http":
        srv = http.server.ThreadingHTTPServer((host, port), _Echo)
        srv.daemon_threads = True
        srv.backend_name = name  # type: ignore[attr-defined]
        print("ready", flush=True)
        srv.serve_forever()
        return

    async def grpc_main() -> None:
        import grpc

        def handler(method: str):
            async def call(request: bytes, context) -> bytes:
                return encode_text(f"{name} {method}")
            return grpc.unary_unary_rpc_method_handler(call)

        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "test.Echo", {m: handler(f"test.Echo/{m}") for m in ("Say", "Secret", "Other")}),))
        server.add_insecure_port(f"{host}:{port}")
        await server.start()
        print("ready", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(0)

    asyncio.run(grpc_main())
    sys.exit(0)


if __name__ == "__main__":
    import sys

    _serve_main(sys.argv[1:])
