"""kill -9 of the process owning the datapath: pinned programs keep enforcing, a new process adopts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest

from mesh.datapath import Datapath, DatapathConfig
from mesh.policy.model import Direction, Verdict
from mesh.policy.resolve import PolicyEntry, PolicyKey
from mesh.services.model import Backend, Frontend
from tests.datapath import progs
from tests.datapath.conftest import BUILD_DIR, wait_for

pytestmark = pytest.mark.root

VIP, A, B, C = "10.96.0.77", "10.213.3.1", "10.213.3.2", "10.213.3.3"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Lines:
    """Collects a child's stdout lines in a thread."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.lines.append(line.strip())

    def more_than(self, n: int, what: str) -> int:
        wait_for(lambda: len(self.lines) > n, 10, what)
        return len(self.lines)


class Progress:
    """Reads the streaming client's byte counter from its stdout in a thread."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.total = 0
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.strip())
            if line.strip().isdigit():
                self.total = int(line)

    def advances(self, what: str) -> None:
        start = self.total
        wait_for(lambda: self.total > start + 1_000_000, 10, f"transfer to advance {what} ({self.lines[-3:]})")


def test_kill_9_keeps_established_flows_and_policy_then_new_process_adopts(node, pin_dir):
    eps = []
    for i, (key, ip, ident) in enumerate((("a", A, 1001), ("b", B, 1002), ("c", C, 1003)), start=1):
        ep = node.add_endpoint(key, ip)
        eps.append({"id": i, "ifname": ep.host_ifname, "ifindex": ep.host_ifindex, "ip": ip, "identity": ident})
    node.start_server("b", "b", 8080)
    cfg = {"cgroup_root": node.plumbing.cgroup_root, "pin_dir": pin_dir, "build_dir": BUILD_DIR,
           "endpoints": eps, "vip": VIP, "backend": B, "allowed_identity": 1001, "policy_ep": 2}
    owner = subprocess.Popen([sys.executable, "-c", progs.OWNER, json.dumps(cfg)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    node.procs.append(owner)
    dp = None
    try:
        line = owner.stdout.readline()
        assert line.strip() == "ready", owner.stderr.read()
        stream = node.popen("a", [sys.executable, "-u", "-c", progs.STREAM, VIP, "80"],
                            stdout=subprocess.PIPE, text=True)
        progress = Progress(stream)
        progress.advances("before the kill")
        assert progress.lines[0] == "hello b"
        # New connections being made all the time, allowed (a -> VIP) and denied (c -> b).
        allowed = Lines(node.popen("a", [sys.executable, "-u", "-c", progs.CONNLOOP, VIP, "80"],
                                   stdout=subprocess.PIPE, text=True))
        denied = Lines(node.popen("c", [sys.executable, "-u", "-c", progs.CONNLOOP, B, "8080"],
                                  stdout=subprocess.PIPE, text=True))
        at_kill = allowed.more_than(20, "connections before the kill")
        denied_at_kill = denied.more_than(0, "a denied attempt before the kill")

        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
        progress.advances("after kill -9")
        allowed.more_than(at_kill + 50, "connections after the kill")
        denied.more_than(denied_at_kill + 1, "denied attempts after the kill")
        # New connections follow the pinned service and policy with no process owning them.
        assert node.client("a", "tcp", VIP, 80)[0].get("backend") == "b"
        assert node.client("c", "tcp", VIP, 80, timeout=0.6)[0].get("error")
        assert node.client("c", "tcp", B, 8080, timeout=0.6)[0].get("error")

        # A new process adopts what is pinned: links are swapped in place, state is known.
        dp = Datapath(DatapathConfig(cgroup_root=node.plumbing.cgroup_root, pin_dir=pin_dir,
                                     build_dir=BUILD_DIR))
        report = dp.start()
        assert report.adopted_links == 9 + 2 * 3 and report.created_links == 0
        assert report.adopted_endpoints == 3 and report.adopted_services == 1
        progress.advances("after adoption")
        again = dp.sync_services([Frontend(VIP, 80, "TCP", (Backend(B, 8080),), 0, "default/web")])
        assert again["written"] == 0 and again["deleted"] == 0
        ms = {PolicyKey(Direction.INGRESS, 1001, 6, 8080, 8080): PolicyEntry(Verdict.ALLOW)}
        dp.sync_policy(2, SimpleNamespace(map_state=ms, ingress_enforced=True, egress_enforced=False))
        assert node.client("a", "tcp", VIP, 80)[0].get("backend") == "b"
        assert node.client("c", "tcp", B, 8080, timeout=0.6)[0].get("error")
        progress.advances("after the new process reconciled")
        assert stream.poll() is None
        n = len(allowed.lines)
        allowed.more_than(n + 20, "connections after adoption")
        assert allowed.lines and all(line == "ok b" for line in allowed.lines), \
            [line for line in allowed.lines if line != "ok b"][:5]
        assert denied.lines and all(line == "err timeout" for line in denied.lines), denied.lines[:5]
    finally:
        if dp is None:
            dp = Datapath(DatapathConfig(cgroup_root=node.plumbing.cgroup_root, pin_dir=pin_dir,
                                         build_dir=BUILD_DIR))
            try:
                dp.start()
            except Exception:  # noqa: BLE001 - purge what can be purged below
                pass
        dp.purge()
