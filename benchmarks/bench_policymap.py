"""Policy lookup cost in the endpoint program with 10 vs 10,000 rules (target: flat).

Runs the real tc program (ost_lxc_to_endpoint) on a crafted TCP packet with BPF_PROG_TEST_RUN
(in-kernel loop, no network noise) for: the endpoint not enforced (the floor), enforced with 10
rules, and enforced with 10,000 rules (distinct identities, ports and port ranges), matching the
last rule. Everything lives in a network namespace, cgroup and pin directory made here.

    .venv/bin/python benchmarks/bench_policymap.py [--repeat 200000]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bpf import loader  # noqa: E402
from mesh import kernel  # noqa: E402
from mesh.datapath import Datapath, DatapathConfig  # noqa: E402

EP_IP = "10.251.0.1"


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def tcp_packet(src: str, dst: str, sport: int, dport: int) -> bytes:
    eth = b"\x02\0\0\0\0\x01" + b"\x02\0\0\0\0\x02" + b"\x08\x00"
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x10, 65535, 0, 0)  # ACK
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, socket.inet_aton(src),
                     socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return eth + ip + tcp


def ctx_with_ifindex(ifindex: int) -> bytes:
    ctx = bytearray(48)          # struct __sk_buff up to ifindex (offset 40)
    struct.pack_into("<I", ctx, 40, ifindex)
    return bytes(ctx)


def remote(i: int) -> str:
    return f"10.252.{i // 250}.{i % 250 + 1}"


def map_state(n: int) -> dict:
    from mesh.policy.model import Direction, Verdict
    from mesh.policy.resolve import PolicyEntry, PolicyKey
    ms = {}
    for i in range(n):
        port = 1024 + (i % 50000)
        hi = port + (i % 3) * 7          # a third exact ports, the rest small ranges
        ms[PolicyKey(Direction.INGRESS, 3000 + i, 6, port, hi)] = PolicyEntry(Verdict.ALLOW)
    return ms


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=200000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root")
    tag = secrets.token_hex(3)
    ns = f"ostbp-{tag}"
    tmp = tempfile.mkdtemp(prefix="ostium-bench-")
    cg = os.path.join(kernel.cgroup2_mount() or sys.exit("no cgroup2"), f"ostium-benchp-{tag}")
    os.makedirs(cg)
    kernel.mount_bpffs()
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    dp = None
    try:
        kernel.setns_path(kernel.netns_path(ns))
        subprocess.run(["ip", "link", "add", "ostp0", "type", "veth", "peer", "name", "ostp1"], check=True)
        subprocess.run(["ip", "link", "set", "ostp0", "up"], check=True)
        ifindex = socket.if_nametoindex("ostp0")
        dp = Datapath(DatapathConfig(cgroup_root=cg, pin_dir=f"/sys/fs/bpf/ostium-benchp-{tag}",
                                     build_dir=os.path.join(tmp, "bpf")))
        dp.start()
        dp.attach_endpoint(1, "ostp0", ifindex, EP_IP, 2001)
        prog = dp._objects["lxc"].prog_fd("ost_lxc_to_endpoint")
        ctx = ctx_with_ifindex(ifindex)

        def run(label: str, n: int, enforced: bool) -> float:
            ms = map_state(n) if n else {}
            for i in range(n):
                dp.upsert_ipcache(f"{remote(i)}/32", 3000 + i)
            dp.sync_policy(1, SimpleNamespace(map_state=ms, ingress_enforced=enforced, egress_enforced=False))
            last = n - 1 if n else 0
            port = 1024 + (last % 50000)
            pkt = tcp_packet(remote(last), EP_IP, 40000, port)
            verdicts, times = set(), []
            for _ in range(args.rounds):
                rv, ns_per_run = loader.prog_test_run(dp.bpf, prog, pkt, ctx, args.repeat)
                verdicts.add(rv)
                times.append(ns_per_run)
            t = statistics.median(times)
            entries = len([e for e in dp.dump_map("ost_policy") if e["key"]["ep_id"] == 1])
            verdict = "pass" if verdicts == {-1} else f"retval {verdicts}"
            print(f"{label:<28} {n:>6} rules {entries:>6} map entries  {t:6.0f} ns/packet  ({verdict})")
            return t

        print(f"tc program per-packet cost, BPF_PROG_TEST_RUN x{args.repeat}, median of {args.rounds}")
        floor = run("not enforced (floor)", 0, False)
        t10 = run("enforced", 10, True)
        t10k = run("enforced", 10000, True)
        print()
        print(f"10,000 vs 10 rules: {t10k / t10:.2f}x (target: flat, <= 1.10); "
              f"policy lookup adds {t10 - floor:+.0f} ns over the unenforced path")
        return 0
    finally:
        if dp is not None:
            dp.purge()
        kernel._libc.setns(orig, kernel.CLONE_NEWNET)
        os.close(orig)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        try:
            os.rmdir(cg)
        except OSError:
            pass
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
