"""Fixtures for datapath tests: a node network namespace the test process enters, endpoints made
by the real Plumbing inside it, a cgroup and a bpffs pin directory of the test's own, and a
started Datapath. Everything is removed on teardown, also when the test fails."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pytest

from mesh import kernel
from mesh.endpoints.plumbing import KernelEndpoint, Plumbing
from tests.datapath import progs

BUILD_DIR = "/tmp/ostium-test-bpf-build"


def wait_for(cond: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


@dataclass
class Node:
    """The node namespace (entered by the test's main thread) and its endpoints."""

    name: str
    plumbing: Plumbing
    tmp: str
    endpoints: dict[str, KernelEndpoint] = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def add_endpoint(self, key: str, ip: str) -> KernelEndpoint:
        ep = self.plumbing.create(key, ip)
        self.endpoints[key] = ep
        return ep

    def _enter(self, key: str) -> Callable[[], None]:
        ep = self.endpoints[key]
        return lambda: kernel.enter_endpoint(ep.netns, ep.cgroup_path)

    def start_server(self, key: str, name: str, port: int) -> None:
        ready = os.path.join(self.tmp, f"ready-{key}-{port}")
        log = open(os.path.join(self.tmp, f"server-{key}-{port}.log"), "wb")
        p = subprocess.Popen([sys.executable, "-c", progs.SERVER, name, str(port), ready],
                             stdout=log, stderr=log, preexec_fn=self._enter(key))
        self.procs.append(p)
        wait_for(lambda: os.path.exists(ready) or p.poll() is not None, 10, f"server {name}")
        assert p.poll() is None, open(log.name).read()

    def client(self, key: str, mode: str, host: str, port: int, count: int = 1,
               timeout: float = 2.0) -> list[dict]:
        out = subprocess.run([sys.executable, "-c", progs.CLIENT, mode, host, str(port), str(count),
                              str(timeout)], capture_output=True, text=True,
                             preexec_fn=self._enter(key), timeout=60)
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    def run(self, key: str, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, preexec_fn=self._enter(key),
                              timeout=timeout)

    def popen(self, key: str, argv: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(argv, preexec_fn=self._enter(key), **kw)
        self.procs.append(p)
        return p


class FakeProxy:
    """A transparent listener on 127.0.0.1:port in the node's netns: greets each connection with the
    address it was really for (getsockname), then echoes."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT: sk_assign'ed flows need it
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.seen: list[tuple[tuple, tuple]] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                c, peer = self.sock.accept()
            except OSError:
                return
            local = c.getsockname()
            self.seen.append((local, peer))
            threading.Thread(target=self._conn, args=(c, local), daemon=True).start()

    @staticmethod
    def _conn(c: socket.socket, local: tuple) -> None:
        # Greets like the test servers (progs.SERVER), then echoes until the peer closes.
        try:
            c.sendall(f"proxy {local[0]}:{local[1]}\n".encode())
            while d := c.recv(65536):
                c.sendall(d)
        except OSError:
            pass
        finally:
            c.close()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(2)


def client_and_backends(node: Node, datapath, client_ip: str, backends: dict[str, str], port: int = 8080) -> Node:
    """A client endpoint (identity 1001) and one server per backend (identity 1002, answering with its key
    on `port`), all attached to the datapath: the socket-LB tests' setup."""
    client = node.add_endpoint("client", client_ip)
    datapath.attach_endpoint(1, client.host_ifname, client.host_ifindex, client.ip, 1001)
    for i, (key, ip) in enumerate(backends.items(), start=2):
        ep = node.add_endpoint(key, ip)
        datapath.attach_endpoint(i, ep.host_ifname, ep.host_ifindex, ip, 1002)
        node.start_server(key, key, port)
    return node


@pytest.fixture
def proxy() -> Iterator[Callable[[int], FakeProxy]]:
    """Starts stand-in proxies (transparent listeners in the node netns the test is in)."""
    proxies: list[FakeProxy] = []
    yield lambda port: proxies.append(FakeProxy(port)) or proxies[-1]
    for p in proxies:
        try:
            p.close()
        except OSError:
            pass


@pytest.fixture
def node(tmp_path) -> Iterator[Node]:
    tag = secrets.token_hex(3)
    ns = f"ostt-node-{tag}"
    cg2 = kernel.cgroup2_mount()
    if not cg2:
        pytest.fail("no cgroup v2 mount found in /proc/self/mountinfo")
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    node = None
    try:
        kernel.setns_path(kernel.netns_path(ns))
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        plumbing = Plumbing(cgroup_root=os.path.join(cg2, f"ostium-test-{tag}"),
                            netns_prefix=f"ostt{tag}-", router_ip="10.213.0.1")
        plumbing.setup_node()
        node = Node(ns, plumbing, str(tmp_path))
        yield node
    finally:
        if node is not None:
            for p in node.procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for key in list(node.endpoints):
                node.plumbing.delete(key)
            node.plumbing.teardown_node()
        kernel._libc.setns(orig, kernel.CLONE_NEWNET)
        os.close(orig)
        subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.fixture
def pin_dir() -> Iterator[str]:
    kernel.mount_bpffs()
    path = f"/sys/fs/bpf/ostium-test-{secrets.token_hex(3)}"
    yield path
    if os.path.exists(path):   # a test's Datapath.purge() normally removed it
        subprocess.run(["rm", "-rf", path], check=False)


@pytest.fixture
def datapath(node, pin_dir):
    from mesh.datapath import Datapath, DatapathConfig

    dp = Datapath(DatapathConfig(cgroup_root=node.plumbing.cgroup_root, pin_dir=pin_dir,
                                 build_dir=BUILD_DIR))
    try:
        dp.start()
        yield dp
    finally:
        dp.purge()
