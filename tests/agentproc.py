"""A real agent in its own "node" network namespace, for root tests.

The node netns keeps the machine's own namespace untouched (ip_forward, routes, the router device are per
netns). Endpoint netns names, the cgroup root and the state dir are unique per test. `cleanup()` removes
everything the agent or the test created, also after a failure or a `kill -9`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from mesh.kernel import cgroup2_mount

REPO = Path(__file__).resolve().parent.parent
OSTIUM = [sys.executable, "-m", "mesh.cli.main"]


def wait_for(cond, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll `cond()` until truthy; return its value or raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = cond()
            if value:
                return value
        except Exception as exc:  # the condition may fail until the thing is up
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


def _rmdir(path: str) -> bool:
    try:
        os.rmdir(path)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


class AgentProcess:
    def __init__(self, pod_cidr: str = "10.210.0.0/24", extra_args: list[str] | None = None,
                 tag: str | None = None) -> None:
        self.tag = tag or uuid.uuid4().hex[:6]
        self.node_ns = f"ostt-node-{self.tag}"
        self.prefix = f"ostt{self.tag}-"
        self.state_dir = tempfile.mkdtemp(prefix=f"ostium-test-{self.tag}-")
        self.socket = os.path.join(self.state_dir, "ostium.sock")
        self.cgroup_name = f"ostium-test-{self.tag}"
        self.cgroup_root = os.path.join(cgroup2_mount() or "/sys/fs/cgroup", self.cgroup_name)
        self.pod_cidr = pod_cidr
        self.pin_name = f"ostium-test-{self.tag}"
        self.extra_args = list(extra_args or [])
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.state_dir, "agent.log")
        subprocess.run(["ip", "netns", "add", self.node_ns], check=True)
        subprocess.run(["ip", "-n", self.node_ns, "link", "set", "lo", "up"], check=True)

    # --- process ----------------------------------------------------------------------------------
    def start(self, wait: bool = True) -> "AgentProcess":
        argv = ["nsenter", f"--net=/var/run/netns/{self.node_ns}", *OSTIUM, "--socket", self.socket, "agent",
                "--state-dir", self.state_dir, "--cgroup-root", self.cgroup_name, "--netns-prefix", self.prefix,
                "--pod-cidr", self.pod_cidr, "--log-format", "json", "--bpf-pin-dir", self.pin_name,
                *self.extra_args]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, cwd=REPO, env=self.env())
        log.close()
        if wait:
            self.wait_ready()
        return self

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("OSTIUM_CONFIG", None)
        return env

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}: {self.log_tail()}")
            return self.cli("status", "-o", "json", check=False).returncode == 0
        try:
            wait_for(ready, timeout, what="the agent API")
        except RuntimeError as exc:
            raise AssertionError(str(exc)) from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        rc = self.proc.returncode
        self.proc = None
        return rc

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # --- CLI --------------------------------------------------------------------------------------
    def cli(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60.0,
            netns: bool = False) -> subprocess.CompletedProcess:
        argv = [*OSTIUM, "--socket", self.socket, *args]
        if netns:
            argv = ["nsenter", f"--net=/var/run/netns/{self.node_ns}", *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout, cwd=REPO,
                              env=self.env())
        if check and proc.returncode != 0:
            raise AssertionError(f"ostium {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def cli_json(self, *args: str):
        return json.loads(self.cli(*args, "-o", "json").stdout)

    def node_exec(self, *argv: str, timeout: float = 30.0, check: bool = False) -> subprocess.CompletedProcess:
        """Run a command in the node's netns (as a process on the "host")."""
        return subprocess.run(["nsenter", f"--net=/var/run/netns/{self.node_ns}", *argv], capture_output=True,
                              text=True, timeout=timeout, check=check)

    def raw_exec(self, key: str, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run a command in endpoint `NAMESPACE.NAME`'s netns and cgroup without asking the agent (it may be
        down). The cgroup matters: socket-level service translation applies to the endpoints' cgroups."""
        return subprocess.run(self.raw_argv(key, *argv), capture_output=True, text=True, timeout=timeout)

    def raw_argv(self, key: str, *argv: str) -> list[str]:
        cg = os.path.join(self.cgroup_root, key, "cgroup.procs")
        return ["sh", "-c", f'echo $$ > {cg} && exec nsenter --net=/var/run/netns/{self.prefix}{key} "$@"', "sh",
                *argv]

    def ep_exec(self, name: str, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        return self.cli("endpoint", "exec", name, "--", *argv, check=False, timeout=timeout)

    # --- cleanup ----------------------------------------------------------------------------------
    def leftovers(self) -> list[str]:
        """Kernel objects of this test still present (used by tests to prove a clean delete)."""
        left = [f"netns {n}" for n in os.listdir("/var/run/netns") if n.startswith(self.prefix)] \
            if os.path.isdir("/var/run/netns") else []
        if os.path.isdir(self.cgroup_root):
            left += [f"cgroup {d}" for d in os.listdir(self.cgroup_root)
                     if os.path.isdir(os.path.join(self.cgroup_root, d))]
        out = self.node_exec("ip", "-o", "link", "show", "type", "veth").stdout
        left += [f"veth {line.split(':')[1].strip().split('@')[0]}" for line in out.splitlines()
                 if line.split(":")[1].strip().startswith("lxc")]
        routes = self.node_exec("ip", "route", "show").stdout
        left += [f"route {r}" for r in routes.splitlines() if r.strip() and "dev lxc" in r]
        return left

    def cleanup(self) -> None:
        self.stop(signal.SIGKILL if self.proc and self.proc.poll() is None else signal.SIGTERM, timeout=5)
        # Envoy outlives the agent on purpose (the next agent adopts it): stop this test's Envoy.
        subprocess.run(["pkill", "-KILL", "-f", self.state_dir], capture_output=True)
        if os.path.isdir(self.cgroup_root):
            for d in os.listdir(self.cgroup_root):
                path = os.path.join(self.cgroup_root, d)
                if os.path.isdir(path):
                    try:
                        with open(os.path.join(path, "cgroup.kill"), "w") as fh:
                            fh.write("1")
                    except OSError:
                        pass
                    try:  # killed processes take a moment to leave: retry until the cgroup can go
                        wait_for(lambda p=path: _rmdir(p), 10, what=f"{path} to be removable")
                    except TimeoutError:
                        pass
            _rmdir(self.cgroup_root)
        if os.path.isdir("/var/run/netns"):
            for n in os.listdir("/var/run/netns"):
                if n.startswith(self.prefix):
                    subprocess.run(["ip", "netns", "del", n], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.node_ns], capture_output=True)
        # Pinned BPF objects (links to the test cgroup and veths, maps): unpinning releases them.
        shutil.rmtree(os.path.join("/sys/fs/bpf", self.pin_name), ignore_errors=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)
