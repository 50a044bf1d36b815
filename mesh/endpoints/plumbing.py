"""Kernel plumbing for standalone endpoints: a network namespace, a veth pair into the node, an address,
routes and a cgroup v2.

Topology (like Cilium's): the pod has `IP/32` on `eth0` and a default route via the node's router IP;
the router IP lives on a dummy-like `ostium_host` device in the node, so the node answers the pod's ARP for
it on the veth (Linux answers ARP for any local address); the node routes `IP/32 dev lxcXXXX src ROUTER`.
Pod-to-pod traffic is routed by the node (ip_forward in the node's netns).

Everything is done with iproute2 in one `ip -batch` per step, so a failure names the command that failed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from mesh import kernel
from mesh.errors import EndpointError

HOST_DEVICE = "ostium_host"


@dataclass(frozen=True, slots=True)
class KernelEndpoint:
    key: str
    netns: str
    host_ifname: str
    host_ifindex: int
    ifname: str
    ip: str
    cgroup_path: str
    mac: str


def _run(argv: list[str], *, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, input=input_text)
    if check and proc.returncode != 0:
        raise EndpointError(f"`{' '.join(argv)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _batch(lines: list[str], netns: str | None = None) -> None:
    argv = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    proc = subprocess.run(argv, capture_output=True, text=True, input="\n".join(lines) + "\n")
    if proc.returncode != 0:
        raise EndpointError(f"ip -batch failed: {proc.stderr.strip()}")


class Plumbing:
    """Creates and removes endpoints' kernel objects in the current (node) network namespace."""

    def __init__(self, cgroup_root: str, netns_prefix: str = "ost-", router_ip: str = "10.200.0.1",
                 host_ifprefix: str = "lxc") -> None:
        self.cgroup_root = cgroup_root
        self.netns_prefix = netns_prefix
        self.router_ip = str(ipaddress.ip_address(router_ip))
        self.host_ifprefix = host_ifprefix

    # --- names -------------------------------------------------------------------------------------
    def netns_name(self, key: str) -> str:
        return f"{self.netns_prefix}{key}"

    def host_ifname(self, key: str) -> str:
        # IFNAMSIZ is 16: prefix + 8 hex characters of a hash of the netns name (unique per node).
        digest = hashlib.sha1(self.netns_name(key).encode()).hexdigest()[:15 - len(self.host_ifprefix)]
        return f"{self.host_ifprefix}{digest}"

    def cgroup_path(self, key: str) -> str:
        return os.path.join(self.cgroup_root, key)

    # --- node ---------------------------------------------------------------------------------------
    def setup_node(self) -> None:
        """Router address, forwarding and the parent cgroup; idempotent."""
        os.makedirs(self.cgroup_root, exist_ok=True)
        _run(["ip", "link", "set", "lo", "up"])  # Envoy and the proxies listen on loopback
        if _run(["ip", "link", "show", HOST_DEVICE], check=False).returncode != 0:
            # A veth pair whose peer stays down is available everywhere (the dummy module may not be).
            _run(["ip", "link", "add", HOST_DEVICE, "type", "veth", "peer", "name", HOST_DEVICE + "_p"])
        _run(["ip", "link", "set", HOST_DEVICE, "up"])
        have = _run(["ip", "-o", "-4", "addr", "show", "dev", HOST_DEVICE]).stdout
        if f" {self.router_ip}/" not in have:
            _run(["ip", "addr", "add", f"{self.router_ip}/32", "dev", HOST_DEVICE])
        kernel.sysctl_set("net.ipv4.ip_forward", "1")

    def node_addresses(self) -> set[str]:
        """The IPv4 addresses on the node device (router, gateway sources, egress IPs)."""
        out = _run(["ip", "-o", "-4", "addr", "show", "dev", HOST_DEVICE], check=False).stdout
        return {parts[parts.index("inet") + 1].split("/")[0] for parts in (line.split() for line in out.splitlines())
                if "inet" in parts}

    def add_node_address(self, ip: str) -> None:
        """An extra local address of the node (e.g. the source of gateway traffic); idempotent."""
        if ip not in self.node_addresses():
            _run(["ip", "addr", "add", f"{ip}/32", "dev", HOST_DEVICE])

    def del_node_address(self, ip: str) -> None:
        """Remove an address add_node_address added; tolerant of it being gone already."""
        _run(["ip", "addr", "del", f"{ip}/32", "dev", HOST_DEVICE], check=False)

    def teardown_node(self) -> None:
        _run(["ip", "link", "del", HOST_DEVICE], check=False)
        try:
            os.rmdir(self.cgroup_root)
        except OSError:
            pass

    # --- endpoints ----------------------------------------------------------------------------------
    def create(self, key: str, ip: str, prefixlen: int = 32) -> KernelEndpoint:
        """Create the endpoint's netns, veth, address, routes and cgroup. On failure nothing is left."""
        ns, host, tmp = self.netns_name(key), self.host_ifname(key), "t" + self.host_ifname(key)[1:]
        ip = str(ipaddress.ip_address(ip))
        try:
            _run(["ip", "netns", "add", ns])
            _batch([
                f"link add {host} type veth peer name {tmp}",
                f"link set {tmp} netns {ns}",
                f"link set {host} up",
            ])
            _batch([
                f"link set {tmp} name eth0",
                f"addr add {ip}/{prefixlen} dev eth0",
                "link set lo up",
                "link set eth0 up",
                f"route add {self.router_ip} dev eth0 scope link",
                f"route add default via {self.router_ip} dev eth0",
            ], netns=ns)
            _run(["ip", "route", "replace", f"{ip}/32", "dev", host, "scope", "link", "src", self.router_ip])
            os.makedirs(self.cgroup_path(key), exist_ok=True)
        except BaseException:
            self.delete(key)
            raise
        return self.describe(key, ip)

    def describe(self, key: str, ip: str) -> KernelEndpoint:
        host = self.host_ifname(key)
        # Not /sys/class/net: sysfs shows the netns that mounted it, which may not be ours.
        out = _run(["ip", "-o", "link", "show", host]).stdout
        ifindex = int(out.split(":", 1)[0])
        mac = out.split("link/ether", 1)[1].split()[0] if "link/ether" in out else ""
        return KernelEndpoint(key=key, netns=self.netns_name(key), host_ifname=host, host_ifindex=ifindex,
                              ifname="eth0", ip=ip, cgroup_path=self.cgroup_path(key), mac=mac)

    def missing_parts(self, key: str, ip: str) -> list[str]:
        """What of this endpoint's kernel objects is missing (empty when it is whole)."""
        missing = []
        ns, host = self.netns_name(key), self.host_ifname(key)
        if not os.path.exists(kernel.netns_path(ns)):
            missing.append(f"netns {ns}")
        if _run(["ip", "link", "show", host], check=False).returncode != 0:
            missing.append(f"veth {host}")
        elif f"{ip} " not in _run(["ip", "route", "show", f"{ip}/32"], check=False).stdout + " ":
            missing.append(f"route {ip}/32")
        if not missing and f" {ip}/" not in _run(["ip", "-n", ns, "-o", "addr", "show", "dev", "eth0"],
                                                 check=False).stdout:
            missing.append(f"address {ip} in {ns}")
        if not os.path.isdir(self.cgroup_path(key)):
            missing.append(f"cgroup {self.cgroup_path(key)}")
        return missing

    def delete(self, key: str, timeout: float = 5.0) -> None:
        """Remove everything of the endpoint; tolerant of parts already gone."""
        self.kill_processes(key, timeout=timeout)
        cg = self.cgroup_path(key)
        if os.path.isdir(cg):
            deadline = time.monotonic() + timeout
            while True:
                try:
                    os.rmdir(cg)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise EndpointError(f"cannot remove cgroup {cg}: {exc}") from None
                    time.sleep(0.01)  # processes are exiting after SIGKILL; poll until the cgroup empties
        _run(["ip", "link", "del", self.host_ifname(key)], check=False)
        _run(["ip", "netns", "del", self.netns_name(key)], check=False)

    def kill_processes(self, key: str, timeout: float = 5.0) -> None:
        cg = self.cgroup_path(key)
        procs = os.path.join(cg, "cgroup.procs")
        if not os.path.exists(procs):
            return
        kill_file = os.path.join(cg, "cgroup.kill")
        if os.path.exists(kill_file):
            with open(kill_file, "w") as fh:
                fh.write("1")
        else:
            for pid in self.pids(key):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        while self.pids(key) and time.monotonic() < deadline:
            time.sleep(0.01)

    def pids(self, key: str) -> list[int]:
        try:
            with open(os.path.join(self.cgroup_path(key), "cgroup.procs")) as fh:
                return [int(x) for x in fh.read().split()]
        except OSError:
            return []

    def spawn(self, key: str, argv: list[str], log_path: str) -> int:
        """Start a long-running command inside the endpoint (its netns and cgroup), detached."""
        ns_path, cg = kernel.netns_path(self.netns_name(key)), self.cgroup_path(key)

        def enter() -> None:
            kernel.join_cgroup(cg)
            kernel.setns_path(ns_path)

        # The agent's own interpreter comes first on PATH, so `python3 -m mesh.demo...` in a manifest finds
        # the same environment the agent runs in.
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "/usr/bin:/bin")])
        with open(log_path, "ab") as log:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                        preexec_fn=enter, start_new_session=True, close_fds=True, cwd="/")
            except (OSError, subprocess.SubprocessError) as exc:
                raise EndpointError(f"cannot start {argv[0]!r} in endpoint {key}: {exc}") from None
        return proc.pid

    def exec_argv(self, key: str, argv: list[str]) -> list[str]:
        """An argv that runs `argv` in the endpoint's netns (the cgroup is joined by `ostium endpoint exec`)."""
        return ["nsenter", f"--net={kernel.netns_path(self.netns_name(key))}", "--", *argv]

    def list_unknown(self, known_keys: set[str]) -> list[str]:
        """Kernel objects with our prefixes that no known endpoint owns."""
        unknown = []
        try:
            names = os.listdir(kernel.NETNS_RUN_DIR)
        except FileNotFoundError:
            names = []
        known_ns = {self.netns_name(k) for k in known_keys}
        for n in names:
            if n.startswith(self.netns_prefix) and n not in known_ns:
                unknown.append(f"netns {n}")
        known_if = {self.host_ifname(k) for k in known_keys}
        out = _run(["ip", "-o", "link", "show", "type", "veth"], check=False).stdout
        for line in out.splitlines():
            parts = line.split(":")
            if len(parts) > 1:
                name = parts[1].strip().split("@")[0]
                if name.startswith(self.host_ifprefix) and name not in known_if and len(name) == 15:
                    unknown.append(f"veth {name}")
        if os.path.isdir(self.cgroup_root):
            for n in os.listdir(self.cgroup_root):
                if os.path.isdir(os.path.join(self.cgroup_root, n)) and n not in known_keys:
                    unknown.append(f"cgroup {os.path.join(self.cgroup_root, n)}")
        return unknown
