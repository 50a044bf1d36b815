"""The node's half of the L7 redirect: policy routing for sk_assign'ed packets and the reject rule
that makes a missing proxy fail closed. Runs in the node's network namespace (the agent's).

The tc program (bpf/lxc.bpf.c) marks a packet it handed to a proxy socket with 0x200/0xf00: the
fwmark rule sends it to a table whose only route is `local 0.0.0.0/0 dev lo`, so the kernel delivers
it locally to that socket instead of forwarding it (ENVIRONMENT.md, "L7 redirect"). A packet that
needs a proxy when none listens is marked 0x300/0xf00: nft answers it with a TCP reset in the
forward and input hooks, before it could reach anyone unenforced. Without nft the fallback is an
`ip rule ... prohibit` (ICMP administratively prohibited: new connections still fail at once).

`src_valid_mark=1` makes the kernel validate the source with the mark, i.e. against the local
table: every redirected packet becomes a martian and is dropped. It is reported, not changed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass

from mesh.errors import DatapathError

MARK_TO_PROXY = 0x200
MARK_PROXY_REFUSE = 0x300
MARK_MASK = 0xF00
MARK_PROXY_UPSTREAM = 0x1000  # what the proxies set with SO_MARK on their upstream sockets


@dataclass(frozen=True, slots=True)
class RedirectConfig:
    table: int = 100              # routing table with the local default route
    priority: int = 9             # before the main table's rule (32766), like Cilium's proxy rule
    nft_table: str = "ostium_l7"  # `inet` family table holding the reject rules


def _run(argv: list[str], input_text: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, input=input_text, timeout=10)
    except FileNotFoundError:
        raise DatapathError(f"{argv[0]} is not installed: the L7 redirect needs iproute2 "
                            "(apt-get install iproute2)") from None


def _rules(mark: int, cfg: RedirectConfig) -> list[dict]:
    out = _run(["ip", "-j", "-4", "rule", "show"])
    if out.returncode != 0:
        raise DatapathError(f"`ip rule show` failed: {out.stderr.strip()}")
    rules = json.loads(out.stdout or "[]")
    return [r for r in rules if r.get("priority") == cfg.priority and _int(r.get("fwmark")) == mark
            and _int(r.get("fwmask")) == MARK_MASK]


def _int(v: object) -> int | None:
    if v is None:
        return None
    try:
        return int(str(v), 0)
    except ValueError:
        return None


def _ip(args: list[str], what: str) -> None:
    r = _run(["ip", *args])
    if r.returncode != 0:
        raise DatapathError(f"L7 redirect: {what} failed (`ip {' '.join(args)}`: {r.stderr.strip()}); "
                            "without it flows under L7 rules cannot reach the proxy")


def _nft_script(cfg: RedirectConfig) -> str:
    match = f"meta mark & {MARK_MASK:#x} == {MARK_PROXY_REFUSE:#x}"
    chains = "".join(
        f"  chain {hook} {{\n    type filter hook {hook} priority filter - 10; policy accept;\n"
        f"    {match} meta l4proto tcp reject with tcp reset\n    {match} drop\n  }}\n"
        for hook in ("forward", "input"))
    # Declaring then deleting makes the replacement atomic and idempotent in one transaction.
    return (f"table inet {cfg.nft_table} {{}}\ndelete table inet {cfg.nft_table}\n"
            f"table inet {cfg.nft_table} {{\n{chains}}}\n")


def install(cfg: RedirectConfig = RedirectConfig()) -> dict[str, object]:
    """Idempotent. Returns what `ostium status` shows about the redirect."""
    if not _rules(MARK_TO_PROXY, cfg):
        _ip(["-4", "rule", "add", "fwmark", f"{MARK_TO_PROXY:#x}/{MARK_MASK:#x}", "lookup", str(cfg.table),
             "priority", str(cfg.priority)], "the fwmark rule for proxy delivery")
    _ip(["-4", "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", str(cfg.table)],
        "the local route for proxy delivery")
    reject = "nft-tcp-reset"
    nft = shutil.which("nft")
    r = _run([nft, "-f", "-"], _nft_script(cfg)) if nft else None
    if r is not None and r.returncode == 0:
        for old in _rules(MARK_PROXY_REFUSE, cfg):  # a fallback rule from an earlier start
            _ip(["-4", "rule", "del", "priority", str(old["priority"]), "fwmark",
                 f"{MARK_PROXY_REFUSE:#x}/{MARK_MASK:#x}"], "removing the fallback reject rule")
    else:
        # Still fail closed: the routing decision itself refuses the packet.
        reject = "ip-rule-prohibit (nft unavailable: " + (r.stderr.strip() if r else "not installed") + ")"
        if not _rules(MARK_PROXY_REFUSE, cfg):
            _ip(["-4", "rule", "add", "fwmark", f"{MARK_PROXY_REFUSE:#x}/{MARK_MASK:#x}", "priority",
                 str(cfg.priority), "prohibit"], "the fallback reject rule")
    out: dict[str, object] = {"fwmark": f"{MARK_TO_PROXY:#x}/{MARK_MASK:#x}", "table": cfg.table,
                              "reject": reject}
    if src_valid_mark():
        out["warning"] = ("net.ipv4.conf.{all,default}.src_valid_mark=1 breaks the L7 redirect (redirected "
                          "packets are dropped as martians): flows under L7 rules will time out")
    return out


GATEWAY_NFT_TABLE = "ostium_gw"


def gateway_ingress_script(source: str, targets: list[tuple[str, int, int, int]],
                           table: str = GATEWAY_NFT_TABLE) -> str:
    """The ingress gateway's half of the L7 redirect, as one atomic nft transaction.

    Envoy's gateway upstream leaves the node's stack from `source` (identity `ingress`) unmarked,
    so that the backend's policy applies; tc cannot sk_assign it there (egress hook). For each
    (endpoint IP, ports) under an ingress L7 rule the connection is redirected in nat output to
    the L7 listener instead: its original_dst filter reads the endpoint back with SO_ORIGINAL_DST.
    The proxies' own upstream (mark 0x1000) is never redirected. With no listener the redirect
    meets a closed port: the connection is reset (fail closed), never delivered unenforced."""
    rules = "".join(
        f"    ip saddr {source} ip daddr {ip} tcp dport {lo if lo == hi else f'{lo}-{hi}'} "
        f"redirect to :{port}\n" for ip, lo, hi, port in targets)
    return (f"table ip {table} {{}}\ndelete table ip {table}\n"
            f"table ip {table} {{\n  chain gw_out {{\n"
            f"    type nat hook output priority -110; policy accept;\n"
            f"    meta mark & {MARK_PROXY_UPSTREAM:#x} == {MARK_PROXY_UPSTREAM:#x} return\n{rules}"
            f"  }}\n}}\n")


def sync_gateway_ingress(source: str, targets: list[tuple[str, int, int, int]]) -> None:
    """Replace the gateway redirect rules (idempotent, atomic); no targets removes the table."""
    nft = shutil.which("nft")
    if nft is None:
        if targets:
            raise DatapathError("nft is not installed: gateway traffic to endpoints under ingress L7 rules "
                                "cannot reach the L7 proxy (apt-get install nftables)")
        return
    script = (gateway_ingress_script(source, targets) if targets else
              f"table ip {GATEWAY_NFT_TABLE} {{}}\ndelete table ip {GATEWAY_NFT_TABLE}\n")
    r = _run([nft, "-f", "-"], script)
    if r.returncode != 0:
        raise DatapathError(f"gateway L7 redirect: nft failed ({r.stderr.strip()})")


def close_bypassing_connections(source: str, targets: list[tuple[str, int, int, int]]) -> None:
    """Destroy (SOCK_DESTROY, `ss -K`) the node's established connections from `source` to newly
    redirected targets that did not go through the proxy: the gateway's pooled upstream connections
    opened before an ingress L7 rule appeared. Their next packet would be dropped at the backend
    (PROXY_BYPASS) and fail one request; closed now, the gateway reconnects through the redirect.
    Proxy upstream sockets (mark 0x1000) are kept. Best effort: without ss or INET_DIAG_DESTROY the
    drop still keeps them out (fail closed)."""
    ss = shutil.which("ss")
    if ss is None:
        return
    for ip, lo, hi, _port in targets:
        _run([ss, "-K", "-t", "state", "established", "src", source, "dst", ip,
              f"( dport >= :{lo} and dport <= :{hi} )", "!", "fwmark", "=",
              f"{MARK_PROXY_UPSTREAM:#x}/{MARK_PROXY_UPSTREAM:#x}"])


def remove(cfg: RedirectConfig = RedirectConfig()) -> None:
    """Undo install() (uninstall, tests); missing pieces are fine."""
    for mark in (MARK_TO_PROXY, MARK_PROXY_REFUSE):
        for _ in _rules(mark, cfg):
            _run(["ip", "-4", "rule", "del", "priority", str(cfg.priority), "fwmark",
                  f"{mark:#x}/{MARK_MASK:#x}"])
    _run(["ip", "-4", "route", "flush", "table", str(cfg.table)])
    if shutil.which("nft"):
        _run(["nft", "delete", "table", "inet", cfg.nft_table])
        _run(["nft", "delete", "table", "ip", GATEWAY_NFT_TABLE])


def src_valid_mark() -> bool:
    """On for all devices, or for new ones (the endpoints' veths)."""
    for dev in ("all", "default"):
        try:
            with open(f"/proc/sys/net/ipv4/conf/{dev}/src_valid_mark", encoding="ascii") as fh:
                if fh.read().strip() == "1":
                    return True
        except OSError:
            pass
    return False
