"""Synthetic flows for demos, tests and benchmarks: the Star Wars scenario as the sources would
report it (raw datapath records, Envoy access-log-like records, Kafka proxy records), and a helper
that serves an aiohttp app from a background thread (for blocking clients: browsers, Prometheus).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Mapping

from mesh.flows.model import Enricher
from mesh.flows.observer import _RAW, Observer

# identity → (namespace, pod, ip, labels)
PODS: dict[int, tuple[str, str, str, dict[str, str]]] = {
    256: ("default", "deathstar-6fb5694d-q2x7z", "10.200.0.10", {"app": "deathstar", "org": "empire"}),
    257: ("default", "xwing-7d9f8b6c4-abcde", "10.200.0.11", {"app": "xwing", "org": "alliance"}),
    258: ("default", "tiefighter-5d8c7f9b6-fghij", "10.200.0.12", {"app": "tiefighter", "org": "empire"}),
    259: ("kafka", "kafka-0", "10.200.0.20", {"app": "kafka"}),
    260: ("kafka", "empire-hq-7b9d-klmno", "10.200.0.21", {"app": "empire-hq"}),
    261: ("kafka", "outpost-8-pqrst", "10.200.0.22", {"app": "outpost"}),
}
BY_IP = {ip: (ns, pod, labels) for _id, (ns, pod, ip, labels) in PODS.items()}
IPCACHE = {ip: ident for ident, (_ns, _pod, ip, _l) in PODS.items()}


def enricher(node_name: str = "node-1") -> Enricher:
    def identity_labels(ident: int) -> Mapping[str, str] | None:
        p = PODS.get(ident)   # as the identity allocator has them (mesh/identity/labels.py)
        return {**{f"k8s:{k}": v for k, v in p[3].items()}, "k8s:io.kubernetes.pod.namespace": p[0]} if p else None

    return Enricher(identity_labels=identity_labels, endpoint_by_ip=BY_IP.get, identity_by_ip=IPCACHE.get,
                    service_by_ip_port=lambda ip, port: ("default", "deathstar")
                    if (ip, port) == ("10.200.0.10", 80) else None,
                    node_name=node_name)


def raw_event(src: int, dst: int, dport: int, *, drop: bool = False, sport: int = 40000, proto: int = 6,
              flags: int = 0x02, ingress: bool = True, reason: int | None = None, ts_ns: int | None = None,
              src_ip: str | None = None) -> bytes:
    """A struct trace_event record as the BPF ring buffer delivers it."""
    sip = src_ip or (PODS[src][2] if src in PODS else "192.0.2.1")
    dip = PODS[dst][2] if dst in PODS else "192.0.2.2"
    return _RAW.pack(ts_ns if ts_ns is not None else time.monotonic_ns(), 2 if drop else 1,
                     reason if reason is not None else (11 if drop else 1), 0 if ingress else 1, proto, 3, 0,
                     src, dst, socket.inet_aton(sip), socket.inet_aton(dip), socket.htons(sport),
                     socket.htons(dport), 9, 3 if drop else 1, flags, 0, 60)


def http_record(src: int, dst: int, method: str, path: str, code: int, denied: bool = False,
                duration_ms: float = 2.0) -> SimpleNamespace:
    return SimpleNamespace(time=time.time(), source_ip=PODS[src][2], source_port=41000,
                           destination_ip=PODS[dst][2], destination_port=80, method=method,
                           authority="deathstar.default.svc.cluster.local", path=path, protocol="HTTP/1.1",
                           response_code=code, rbac_denied=denied, duration_ms=duration_ms, grpc_status=None,
                           tags={"ostium.direction": "ingress"}, node_id="node-1")


def kafka_record(src: int, api: str, topic: str, allowed: bool) -> dict[str, Any]:
    return {"api_key": api, "api_version": 9 if api == "produce" else 13, "topics": [topic],
            "client_id": PODS[src][3]["app"], "verdict": "allowed" if allowed else "denied",
            "latency_ms": 1.5, "src": (PODS[src][2], 50000), "dst": (PODS[259][2], 9092), "correlation_id": 1}


def star_wars(obs: Observer, repeat: int = 1) -> None:
    """Allowed and denied traffic of the Star Wars and Kafka demos, into `obs`."""
    for i in range(repeat):
        obs.ingest_datapath_raw(raw_event(258, 256, 80, sport=40000 + i))           # tiefighter → deathstar
        obs.ingest_http_record(http_record(258, 256, "POST", "/v1/request-landing", 200))
        obs.ingest_datapath_raw(raw_event(257, 256, 80, sport=41000 + i))           # xwing → deathstar
        obs.ingest_http_record(http_record(257, 256, "POST", "/v1/request-landing", 200))
        obs.ingest_http_record(http_record(257, 256, "PUT", "/v1/exhaust-port", 403, denied=True))
        obs.ingest_datapath_raw(raw_event(257, 256, 22, drop=True, sport=42000 + i))  # xwing → ssh: dropped
        obs.ingest_kafka_record(kafka_record(260, "produce", "empire-announce", True))
        obs.ingest_kafka_record(kafka_record(261, "produce", "empire-announce", False))
        obs.ingest_kafka_record(kafka_record(261, "fetch", "deathstar-plans", True))
        obs.ingest_datapath_raw(raw_event(2, 257, 53, proto=17, flags=0, sport=5353))  # world → xwing udp


@dataclass
class ThreadedApp:
    """Serve an aiohttp Application on 127.0.0.1 from a thread with its own event loop."""

    app: Any
    host: str = "127.0.0.1"
    port: int = 0
    unix_path: str | None = None        # serve on this unix socket instead of TCP
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None
    _runner: Any = None

    def start(self) -> str:
        from aiohttp import web
        ready = threading.Event()
        errors: list[BaseException] = []

        async def setup() -> None:
            self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
            await self._runner.setup()
            if self.unix_path:
                await web.UnixSite(self._runner, self.unix_path).start()
                return
            site = web.TCPSite(self._runner, self.host, self.port)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(setup())
            except BaseException as exc:  # surfaced to the caller below
                errors.append(exc)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, name="flows-http", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        if self.unix_path:
            return self.unix_path
        return f"http://{self.host}:{self.port}"

    def call(self, fn, *args) -> Any:
        """Run fn(*args) on the server's loop thread (the observer is not thread-safe)."""
        done = threading.Event()
        out: list[Any] = []

        def wrapper() -> None:
            try:
                out.append(fn(*args))
            finally:
                done.set()

        self.loop.call_soon_threadsafe(wrapper)
        if not done.wait(10):
            raise TimeoutError("server loop did not run the call")
        return out[0] if out else None

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self.loop.close()


class KernelDropSource:
    """Real datapath drop events from the kernel, for tests and benchmarks (root only).

    Builds a network namespace with a veth, the real eBPF datapath with one enforced endpoint
    (10.251.0.1, identity 2001) that no rule allows, and runs the endpoint's tc program on a
    crafted TCP SYN from `src_ip` (identity `src_identity` in the ipcache) with
    BPF_PROG_TEST_RUN: every run is a policy drop with a trace_event in the real ring buffer.
    Everything is removed on close(), also after a failure half-way.
    """

    EP_IP = "10.251.0.1"
    EP_IDENTITY = 2001

    def __init__(self, src_ip: str = "10.252.0.7", src_identity: int = 3001, dport: int = 8080) -> None:
        self.src_ip, self.src_identity, self.dport = src_ip, src_identity, dport
        self.dp: Any = None
        self._ns = self._cg = self._tmp = None
        self._orig: int | None = None
        self.reader: Any = None

    def __enter__(self) -> "KernelDropSource":
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _open(self) -> None:
        import os
        import secrets
        import subprocess
        import tempfile
        from types import SimpleNamespace as NS

        from mesh import kernel
        from mesh.datapath import Datapath, DatapathConfig

        tag = secrets.token_hex(3)
        cg_root = kernel.cgroup2_mount()
        if cg_root is None:
            raise RuntimeError("cgroup2 is not mounted")
        kernel.mount_bpffs()
        self._tmp = tempfile.mkdtemp(prefix="ostium-flows-")
        self._cg = os.path.join(cg_root, f"ostium-flows-{tag}")
        os.makedirs(self._cg)
        self._orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        self._ns = f"ostfl-{tag}"
        subprocess.run(["ip", "netns", "add", self._ns], check=True)
        kernel.setns_path(kernel.netns_path(self._ns))
        subprocess.run(["ip", "link", "add", "ostf0", "type", "veth", "peer", "name", "ostf1"], check=True)
        subprocess.run(["ip", "link", "set", "ostf0", "up"], check=True)
        self.ifindex = socket.if_nametoindex("ostf0")
        self.dp = Datapath(DatapathConfig(cgroup_root=self._cg, pin_dir=f"/sys/fs/bpf/ostium-flows-{tag}",
                                          build_dir=os.path.join(self._tmp, "bpf")))
        self.dp.start()
        self.dp.attach_endpoint(1, "ostf0", self.ifindex, self.EP_IP, self.EP_IDENTITY)
        self.dp.upsert_ipcache(f"{self.src_ip}/32", self.src_identity)
        self.dp.sync_policy(1, NS(map_state={}, ingress_enforced=True, egress_enforced=False))
        self.prog = self.dp._objects["lxc"].prog_fd("ost_lxc_to_endpoint")
        self.packet = _tcp_syn(self.src_ip, self.EP_IP, 40000, self.dport)
        ctx = bytearray(48)          # struct __sk_buff up to ifindex (offset 40)
        struct_pack_into_ifindex(ctx, self.ifindex)
        self.ctx = bytes(ctx)
        self.reader = self.dp.event_reader()

    def fire(self, n: int) -> None:
        """Run the program n times in the kernel: n drop events in the ring buffer."""
        from bpf import loader
        loader.prog_test_run(self.dp.bpf, self.prog, self.packet, self.ctx, n)

    def read(self) -> list[bytes]:
        """Every raw record waiting in the ring buffer."""
        return self.reader.consume()

    def close(self) -> None:
        import os
        import shutil
        import subprocess

        from mesh import kernel
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self.dp is not None:
            try:
                self.dp.purge()
            finally:
                self.dp = None
        if self._orig is not None:
            kernel._libc.setns(self._orig, kernel.CLONE_NEWNET)
            os.close(self._orig)
            self._orig = None
        if self._ns:
            subprocess.run(["ip", "netns", "del", self._ns], check=False)
            self._ns = None
        if self._cg:
            try:
                os.rmdir(self._cg)
            except OSError:
                pass
            self._cg = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def struct_pack_into_ifindex(ctx: bytearray, ifindex: int) -> None:
    import struct
    struct.pack_into("<I", ctx, 40, ifindex)


def _tcp_syn(src: str, dst: str, sport: int, dport: int) -> bytes:
    import struct

    def checksum(data: bytes) -> int:
        if len(data) % 2:
            data += b"\0"
        s = sum(struct.unpack(f"!{len(data) // 2}H", data))
        s = (s >> 16) + (s & 0xFFFF)
        s += s >> 16
        return ~s & 0xFFFF

    eth = b"\x02\0\0\0\0\x01" + b"\x02\0\0\0\0\x02" + b"\x08\x00"
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)  # SYN
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, socket.inet_aton(src),
                     socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return eth + ip + tcp
