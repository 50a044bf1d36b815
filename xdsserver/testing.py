"""Helpers for tests against the real Envoy: a local HTTP backend, a gRPC backend, an xDS server +
Envoy pair that is always cleaned up, a curl wrapper. Loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Iterator

from xdsserver.als import AccessLogReceiver, L7Record
from xdsserver.cache import Snapshot, SnapshotCache
from xdsserver.envoy import EnvoyConfig, EnvoyProcess, XdsMode
from xdsserver.server import XdsServer


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True   # headers and body are two writes: no 40 ms Nagle stall

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        self.server.seen.append((self.command, self.path))  # type: ignore[attr-defined]
        body = f"backend {self.command} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    def log_message(self, *args) -> None:  # quiet
        pass


@contextlib.contextmanager
def http_backend(host: str = "127.0.0.1") -> Iterator[http.server.ThreadingHTTPServer]:
    """A threaded HTTP/1.1 server answering `backend METHOD PATH`; `.seen` lists requests."""
    srv = http.server.ThreadingHTTPServer((host, 0), _Handler)
    srv.daemon_threads = True
    srv.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


@contextlib.asynccontextmanager
async def grpc_backend(host: str = "127.0.0.1") -> AsyncIterator[int]:
    """A grpcio server with raw-bytes methods /test.Echo/{Say,Secret}; yields its port."""
    import grpc

    async def echo(request: bytes, context) -> bytes:
        return b"echo:" + request

    handler = grpc.method_handlers_generic_handler("test.Echo", {
        "Say": grpc.unary_unary_rpc_method_handler(echo),
        "Secret": grpc.unary_unary_rpc_method_handler(echo),
    })
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(0)


@dataclass
class EnvoyHarness:
    cache: SnapshotCache
    server: XdsServer
    envoy: EnvoyProcess
    node_id: str
    records: list[L7Record] = field(default_factory=list)
    record_event: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_records(self, predicate, timeout: float = 10.0) -> list[L7Record]:
        """Wait until the access log records satisfy `predicate(records)`."""
        deadline = time.monotonic() + timeout
        while not predicate(self.records):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"access log records never matched; got {self.records!r}")
            self.record_event.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.record_event.wait(), remaining)
        return self.records


@contextlib.asynccontextmanager
async def envoy_harness(state_dir: Path, *, node_id: str = "test-node",
                        mode: XdsMode = XdsMode.DELTA, log_level: str = "info",
                        **envoy_kw) -> AsyncIterator[EnvoyHarness]:
    """xDS server + ALS receiver on 127.0.0.1 and a real Envoy; everything stopped on exit."""
    cache = SnapshotCache()
    server = XdsServer(cache)
    harness: EnvoyHarness

    def on_record(rec: L7Record) -> None:
        harness.records.append(rec)
        harness.record_event.set()

    als = AccessLogReceiver(on_record)
    target = await server.start(servicers=[als])
    envoy = EnvoyProcess(EnvoyConfig(Path(state_dir), node_id, target, xds_mode=mode,
                                     log_level=log_level, **envoy_kw))
    harness = EnvoyHarness(cache, server, envoy, node_id)
    # SotW never answers before a snapshot exists (an empty answer would wipe Envoy's config), and
    # Envoy is not ready before its first CDS/LDS answer: start from an empty snapshot, as the agent does.
    cache.set_snapshot(node_id, Snapshot.build({}))
    try:
        await envoy.start()
        yield harness
    finally:
        try:
            await envoy.stop()
        finally:
            await server.stop(0)


async def wait_port_open(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, w = await asyncio.open_connection(host, port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{host}:{port} never accepted a connection")
            await asyncio.sleep(0.01)  # poll interval for a condition with a deadline


@dataclass(frozen=True)
class CurlResult:
    status: int
    body: str


async def curl(url: str, *args: str, timeout: float = 10.0) -> CurlResult:
    """Run the real curl (no URL normalization: --path-as-is) and return status and body."""
    exe = shutil.which("curl")
    if not exe:
        raise RuntimeError("curl is not installed (scripts/apt-packages.txt)")
    proc = await asyncio.create_subprocess_exec(
        exe, "-sS", "--path-as-is", "--max-time", str(timeout), "-o", "-",
        "-w", "\n%{http_code}", *args, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"curl {url} failed ({proc.returncode}): {err.decode().strip()}")
    body, _, code = out.decode(errors="replace").rpartition("\n")
    return CurlResult(int(code), body)
