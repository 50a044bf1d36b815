"""A real etcd for tests: the Debian etcd-server binary on 127.0.0.1, free ports, a temporary data dir.

Use the `etcd_server` fixture (import it into a test module or a conftest), or `EtcdServer` directly:

    from tests.etcd_fixture import etcd_server  # noqa: F401  (pytest finds the fixture by name)

    async def test_x(etcd_server):
        url = etcd_server.client_url          # "http://127.0.0.1:PORT"
        etcd_server.stop(); etcd_server.start()   # restart on the same data dir

Teardown kills the process (also when the test fails) and removes the data dir.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

ETCD_BINARY = "/usr/bin/etcd"
HEALTH_TIMEOUT = 20.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdServer:
    """One single-member etcd cluster. Ports are chosen once, so a restart keeps the same URLs."""

    def __init__(self, data_dir: Path, binary: str = ETCD_BINARY, name: str = "ostium-test") -> None:
        self.binary = binary
        self.name = name
        self.data_dir = data_dir
        self.client_port = _free_port()
        self.peer_port = _free_port()
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = HEALTH_TIMEOUT) -> None:
        if self.running:
            raise RuntimeError("etcd is already running")
        self._log = open(self.log_path, "ab")
        cmd = [
            self.binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", f"{self.name}={self.peer_url}",
            "--initial-cluster-state", "new",
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]
        # Own process group: teardown kills exactly this etcd, nothing else.
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        self._wait_healthy(timeout)

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self._proc.returncode}; log: {self.tail_log()}")
            try:
                with urllib.request.urlopen(self.client_url + "/health", timeout=1) as resp:
                    body = json.loads(resp.read() or b"{}")
                if body.get("health") in ("true", True):
                    return
                last = f"health={body}"
            except (OSError, urllib.error.URLError, ValueError) as exc:
                last = str(exc)
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd not healthy after {timeout}s ({last}); log: {self.tail_log()}")

    def stop(self) -> None:
        """Stop etcd (SIGTERM, then SIGKILL); the data dir stays for a restart."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def tail_log(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"


@pytest.fixture
def etcd_server() -> Iterator[EtcdServer]:
    if not os.access(ETCD_BINARY, os.X_OK):
        pytest.skip(f"{ETCD_BINARY} is missing: install the Debian package etcd-server "
                    "(scripts/apt-packages.txt; scripts/setup.sh does it)")
    tmp = Path(tempfile.mkdtemp(prefix="ostium-etcd-"))
    server = EtcdServer(tmp / "data")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
