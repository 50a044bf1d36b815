"""The agent's adapter to the kernel datapath: builds and loads the BPF objects, pins and adopts
maps and links, and turns services, the ipcache and policy into map entries.

Pin layout under `pin_dir`: maps/<map name>, links/cgroup_<program>, links/ep<ID>_{from,to}.
`close()` keeps everything pinned (agent restart: traffic keeps flowing, `start()` adopts it);
`purge()` detaches and unpins everything (uninstall, tests).
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterable

from bpf import build as bpf_build
from bpf import loader
from bpf.maps import (EP_F_EGRESS_ENFORCED, EP_F_INGRESS_ENFORCED, LAYOUTS, EgressGwKey, EgressGwValue,
                      EndpointInfo, Event, IfindexKey, IpcacheKey, IpcacheValue, IpKey, PolicyMapEntry, PolicyMapKey, decode_entry,
                      policy_class)
from mesh import kernel
from mesh.datapath import lbmap, policymap, redirect
from mesh.errors import DatapathError, NotFoundError
from mesh.services.model import Frontend

SOCK_PROGRAMS = (
    ("ost_sock4_connect", loader.BPF_CGROUP_INET4_CONNECT),
    ("ost_sock4_sendmsg", loader.BPF_CGROUP_UDP4_SENDMSG),
    ("ost_sock4_recvmsg", loader.BPF_CGROUP_UDP4_RECVMSG),
    ("ost_sock4_getpeername", loader.BPF_CGROUP_INET4_GETPEERNAME),
    ("ost_sock6_connect", loader.BPF_CGROUP_INET6_CONNECT),
    ("ost_sock6_sendmsg", loader.BPF_CGROUP_UDP6_SENDMSG),
    ("ost_sock6_recvmsg", loader.BPF_CGROUP_UDP6_RECVMSG),
    ("ost_sock6_getpeername", loader.BPF_CGROUP_INET6_GETPEERNAME),
    ("ost_sock_release", loader.BPF_CGROUP_INET_SOCK_RELEASE),
)
# tc ingress of the host veth sees what the endpoint sends; tc egress what it receives.
EP_PROGRAMS = (
    ("from", "ost_lxc_from_endpoint", loader.BPF_TCX_INGRESS),
    ("to", "ost_lxc_to_endpoint", loader.BPF_TCX_EGRESS),
)

DEFAULT_MAP_SIZES = {
    "ost_lb4_svc": 65536, "ost_lb4_backend": 65536, "ost_lb4_affinity": 65536,
    "ost_lb4_revnat": 65536, "ost_ipcache": 65536, "ost_ipcache_host": 65536, "ost_endpoints": 4096,
    "ost_ep_by_ip": 4096,
    "ost_policy": 65536,
    "ost_ct4": 131072,
    "ost_egress_gw": 16384,
}


@dataclass(frozen=True, slots=True)
class DatapathConfig:
    cgroup_root: str                       # parent cgroup of every endpoint cgroup
    pin_dir: str = "/sys/fs/bpf/ostium"
    build_dir: str = bpf_build.DEFAULT_BUILD_DIR
    map_sizes: dict[str, int] = field(default_factory=dict)
    # "<parser>-<direction>" ("http-ingress", "kafka-egress", ...) or "<parser>" -> the proxy's
    # transparent listener port on 127.0.0.1. A redirected flow without a port is refused.
    proxy_ports: dict[str, int] = field(default_factory=dict)
    # The node's routing/nft half of the L7 redirect (mesh.datapath.redirect); off only for tests
    # that must not touch the namespace's routing.
    l7_redirect: bool = True
    redirect_config: redirect.RedirectConfig = field(default_factory=redirect.RedirectConfig)
    max_slots_per_service: int = 256


@dataclass(frozen=True, slots=True)
class StartReport:
    adopted_links: int
    created_links: int
    adopted_endpoints: int
    adopted_services: int
    objects: dict[str, str]


@dataclass(slots=True)
class _EndpointState:
    ep_id: int
    ifindex: int
    ip: str
    identity: int
    ifname: str = ""
    flags: int = 0
    policy: dict[bytes, bytes] = field(default_factory=dict)
    # prefix classes in use: (ingress, ingress any-identity, egress, egress any-identity)
    plens: tuple[int, int, int, int] = (0, 0, 0, 0)

    def info(self) -> EndpointInfo:
        return EndpointInfo(self.ep_id, self.identity, self.ip, self.flags, *self.plens)


class Datapath:
    def __init__(self, config: DatapathConfig, libbpf: loader.LibBPF | None = None) -> None:
        self.config = config
        self._libbpf = libbpf
        self._objects: dict[str, loader.BPFObject] = {}
        self._maps: dict[str, loader.Map] = {}
        self._cgroup_links: dict[str, int] = {}
        self._endpoints: dict[int, _EndpointState] = {}
        self._ep_links: dict[tuple[int, str], int] = {}
        # Entries in ost_lb4_svc / ost_lb4_backend: exactly those of the frontends in _fe.
        self._svc_count = 0
        self._be_count = 0
        self._adopted_services = 0
        self._rev_ids = lbmap.IdAllocator(limit=0xFFFF)
        self._backend_ids = lbmap.IdAllocator()
        self._frontends: list[Frontend] = []
        # Per programmed frontend: the Frontend its entries were planned from (after a sync this
        # is index_frontends' dict itself: no per-frontend bookkeeping), or AdoptedEntries.
        self._fe: dict[lbmap.FrontendKey, lbmap.FrontendRecord] = {}
        self.map_full_errors: dict[str, int] = {}
        self._lock = threading.RLock()
        self._started = False
        self.redirect_status: dict[str, Any] = {}
        self._egress_gw: dict[bytes, bytes] | None = None  # None: not read from the pinned map yet

    # ---- paths ----
    @property
    def map_dir(self) -> str:
        return os.path.join(self.config.pin_dir, "maps")

    @property
    def link_dir(self) -> str:
        return os.path.join(self.config.pin_dir, "links")

    @property
    def bpf(self) -> loader.LibBPF:
        if self._libbpf is None:
            self._libbpf = loader.LibBPF()
        return self._libbpf

    # ---- lifecycle ----
    def start(self) -> StartReport:
        """Build (if stale), load, pin/adopt maps and links, rebuild the in-memory mirrors."""
        with self._lock:
            self._ensure_bpffs()
            objects = bpf_build.build(self.config.build_dir)
            sizes = {**DEFAULT_MAP_SIZES, **self.config.map_sizes}
            os.makedirs(self.map_dir, exist_ok=True)
            os.makedirs(self.link_dir, exist_ok=True)
            for name, path in objects.items():
                self._objects[name] = loader.BPFObject(self.bpf, str(path), self.map_dir, sizes)
            for name in LAYOUTS.keys() | {"ost_events"}:
                self._maps[name] = loader.Map(self.bpf, os.dup(self._objects["lxc"].map_fd(name)), name)
            adopted, created = self._attach_cgroup()
            self._adopt_endpoints()
            a2, c2 = self._attach_pinned_endpoint_links()
            self._adopt_services()
            if self.config.l7_redirect:
                self.redirect_status = redirect.install(self.config.redirect_config)
            self._started = True
            return StartReport(adopted + a2, created + c2, len(self._endpoints), self._adopted_services,
                               {k: str(v) for k, v in objects.items()})

    def _ensure_bpffs(self) -> None:
        root = "/sys/fs/bpf"
        if self.config.pin_dir.startswith(root + "/") and not kernel.bpffs_mounted(root):
            try:
                kernel.mount_bpffs(root)
            except Exception as exc:  # noqa: BLE001 - reported with what it disables
                raise DatapathError(
                    f"bpffs is not mounted at {root} and mounting it failed ({exc}): without it "
                    "BPF objects cannot be pinned and the datapath would stop when the agent "
                    "stops; run `mount -t bpf bpf /sys/fs/bpf`") from None

    def _attach_cgroup(self) -> tuple[int, int]:
        adopted = created = 0
        try:
            cg_fd = os.open(self.config.cgroup_root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise DatapathError(
                f"cannot open the agent cgroup {self.config.cgroup_root}: {exc.strerror}; socket "
                "load balancing (services) needs a cgroup v2 directory") from None
        try:
            for prog, attach_type in SOCK_PROGRAMS:
                prog_fd = self._objects["sock"].prog_fd(prog)
                pin = os.path.join(self.link_dir, f"cgroup_{prog}")
                fd = loader.open_pinned(self.bpf, pin)
                if fd is not None:
                    try:
                        loader.link_update(self.bpf, fd, prog_fd)
                        self._cgroup_links[prog] = fd
                        adopted += 1
                        continue
                    except DatapathError:
                        os.close(fd)
                        os.unlink(pin)   # a defunct link (its cgroup is gone): attach anew
                try:
                    fd = loader.link_create(self.bpf, prog_fd, cg_fd, attach_type)
                except DatapathError as exc:
                    raise DatapathError(
                        f"the kernel refused to attach {prog} to cgroup {self.config.cgroup_root} "
                        f"({exc}): cgroup socket-address BPF (Linux >= 5.8 for bpf_link) is missing, "
                        "so service load balancing is disabled") from None
                loader.pin_fd(self.bpf, fd, pin)
                self._cgroup_links[prog] = fd
                created += 1
        finally:
            os.close(cg_fd)
        return adopted, created

    def _adopt_endpoints(self) -> None:
        m = self._maps["ost_endpoints"]
        for k, v in m.items():
            ifindex = IfindexKey.unpack(k).ifindex
            info = EndpointInfo.unpack(v)
            self._endpoints[info.ep_id] = _EndpointState(info.ep_id, ifindex, info.address,
                                                         info.identity, flags=info.flags,
                                                         plens=info.plens)
        # ost_ep_by_ip mirrors ost_endpoints; rebuilt here (it may be new after an upgrade).
        by_ip = self._maps["ost_ep_by_ip"]
        want = {IpKey(e.ip).pack(): e.info().pack() for e in self._endpoints.values()}
        for k in [k for k in by_ip.keys() if k not in want]:
            by_ip.delete(k)
        for k, v in want.items():
            by_ip.update(k, v)
        pol = self._maps["ost_policy"]
        for k, v in pol.items():
            ep = self._endpoints.get(PolicyMapKey.unpack(k).ep_id)
            if ep is not None:
                ep.policy[k] = v[:4] + b"\0" * 12   # counters are not part of the desired state

    def _attach_pinned_endpoint_links(self) -> tuple[int, int]:
        adopted = 0
        for ep in list(self._endpoints.values()):
            for tag, prog, _ in EP_PROGRAMS:
                pin = self._ep_pin(ep.ep_id, tag)
                fd = loader.open_pinned(self.bpf, pin)
                if fd is None:
                    continue
                try:
                    loader.link_update(self.bpf, fd, self._objects["lxc"].prog_fd(prog))
                    self._ep_links[(ep.ep_id, tag)] = fd
                    adopted += 1
                except DatapathError:
                    os.close(fd)
                    os.unlink(pin)
        return adopted, 0

    def _adopt_services(self) -> None:
        svc = dict(self._maps["ost_lb4_svc"].items())
        backends = dict(self._maps["ost_lb4_backend"].items())
        lbmap.adopt(svc, backends, self._rev_ids, self._backend_ids)
        groups = lbmap.group_by_frontend(svc, backends)
        orphans = lbmap.orphan_backends(backends, groups)
        self._maps["ost_lb4_backend"].delete_many(orphans)
        # The Frontend objects are not known after a restart: the first sync re-plans each
        # frontend and writes only entries that differ.
        self._fe = {fk: lbmap.AdoptedEntries(s, be, bks) for fk, (s, be, bks) in groups.items()}
        self._svc_count, self._be_count = len(svc), len(backends) - len(orphans)
        self._adopted_services = sum(1 for k in svc if k[8:10] == b"\0\0")

    def close(self) -> None:
        """Release this process's handles; everything pinned keeps working (agent restart)."""
        with self._lock:
            for fd in [*self._cgroup_links.values(), *self._ep_links.values()]:
                os.close(fd)
            self._cgroup_links.clear()
            self._ep_links.clear()
            for m in self._maps.values():
                m.close()
            self._maps.clear()
            for o in self._objects.values():
                o.close()
            self._objects.clear()
            self._started = False

    def purge(self) -> None:
        """Detach every program and remove every pinned object (uninstall)."""
        with self._lock:
            for fd in [*self._cgroup_links.values(), *self._ep_links.values()]:
                loader.link_detach(self.bpf, fd)
            self.close()
            for sub in (self.link_dir, self.map_dir):
                if os.path.isdir(sub):
                    for n in os.listdir(sub):
                        path = os.path.join(sub, n)
                        if sub == self.link_dir:
                            fd = loader.open_pinned(self.bpf, path)
                            if fd is not None:
                                loader.link_detach(self.bpf, fd)
                                os.close(fd)
                        os.unlink(path)
                    os.rmdir(sub)
            try:
                os.rmdir(self.config.pin_dir)
            except OSError:
                pass
            if self.config.l7_redirect:
                redirect.remove(self.config.redirect_config)

    # ---- endpoints ----
    def _ep_pin(self, ep_id: int, tag: str) -> str:
        return os.path.join(self.link_dir, f"ep{ep_id}_{tag}")

    def attach_endpoint(self, ep_id: int, host_ifname: str, host_ifindex: int, ip: str, identity: int,
                        netns: str | None = None) -> None:
        """Program the endpoint's host-side veth (tcx ingress + egress, in this process's netns,
        which must be the node's) and record it in the endpoint and ipcache maps."""
        self._require_started()
        if not 0 < ep_id <= 0xFFFF:
            raise DatapathError(f"endpoint id {ep_id} is outside 1..65535")
        with self._lock:
            old = self._endpoints.get(ep_id)
            flags = old.flags if old else 0
            if old and old.ifindex != host_ifindex:
                self._maps["ost_endpoints"].delete(IfindexKey(old.ifindex).pack())
            if old and old.ip != ip:
                self._maps["ost_ep_by_ip"].delete(IpKey(old.ip).pack())
            st = _EndpointState(ep_id, host_ifindex, ip, identity, host_ifname, flags,
                                old.policy if old else {}, old.plens if old else (0, 0, 0, 0))
            self._write_endpoint(st)
            self.upsert_ipcache(f"{ip}/32", identity)
            self._endpoints[ep_id] = st
            for tag, prog, attach_type in EP_PROGRAMS:
                key = (ep_id, tag)
                prog_fd = self._objects["lxc"].prog_fd(prog)
                if key in self._ep_links and not (old and old.ifindex != host_ifindex):
                    loader.link_update(self.bpf, self._ep_links[key], prog_fd)
                    continue
                if key in self._ep_links:
                    loader.link_detach(self.bpf, self._ep_links.pop(key))
                pin = self._ep_pin(ep_id, tag)
                if os.path.exists(pin):
                    os.unlink(pin)
                try:
                    fd = loader.link_create(self.bpf, prog_fd, host_ifindex, attach_type)
                except DatapathError as exc:
                    if "No such device" in str(exc):
                        raise DatapathError(f"endpoint {ep_id}: no device with ifindex {host_ifindex} "
                                            f"({host_ifname}) in the agent's network namespace") from None
                    raise DatapathError(
                        f"endpoint {ep_id}: attaching the policy program to {host_ifname} failed "
                        f"({exc}); tcx links need Linux >= 6.6: without them policy enforcement "
                        "is disabled") from None
                loader.pin_fd(self.bpf, fd, pin)
                self._ep_links[key] = fd

    def _write_endpoint(self, st: _EndpointState) -> None:
        info = st.info().pack()
        self._maps["ost_ep_by_ip"].update(IpKey(st.ip).pack(), info)
        self._maps["ost_endpoints"].update(IfindexKey(st.ifindex).pack(), info)

    def detach_endpoint(self, ep_id: int) -> None:
        self._require_started()
        with self._lock:
            st = self._endpoints.pop(ep_id, None)
            for tag, _, _ in EP_PROGRAMS:
                fd = self._ep_links.pop((ep_id, tag), None)
                if fd is not None:
                    loader.link_detach(self.bpf, fd)
                    os.close(fd)
                pin = self._ep_pin(ep_id, tag)
                if os.path.exists(pin):
                    os.unlink(pin)
            if st is None:
                return
            self._maps["ost_endpoints"].delete(IfindexKey(st.ifindex).pack())
            self._maps["ost_ep_by_ip"].delete(IpKey(st.ip).pack())
            pol = self._maps["ost_policy"]
            for k in st.policy:
                pol.delete(k)
            self.delete_ipcache(f"{st.ip}/32")

    def endpoints(self) -> list[dict[str, Any]]:
        return [{"id": e.ep_id, "ifindex": e.ifindex, "ip": e.ip, "identity": e.identity,
                 "ingress_enforced": bool(e.flags & EP_F_INGRESS_ENFORCED),
                 "egress_enforced": bool(e.flags & EP_F_EGRESS_ENFORCED),
                 "policy_entries": len(e.policy)} for e in sorted(self._endpoints.values(), key=lambda e: e.ep_id)]

    # ---- ipcache ----
    def upsert_ipcache(self, cidr: str, identity: int) -> None:
        """IP or CIDR -> identity. /32s go to the exact-match hash map, shorter prefixes to the
        LPM trie (looked up only when the hash map has no entry)."""
        self._require_started()
        key = self._ipcache_key(cidr)
        if key.prefixlen == 32:
            self._maps["ost_ipcache_host"].update(IpKey(key.address).pack(), IpcacheValue(identity).pack())
        else:
            self._maps["ost_ipcache"].update(key.pack(), IpcacheValue(identity).pack())

    def delete_ipcache(self, cidr: str) -> bool:
        self._require_started()
        key = self._ipcache_key(cidr)
        if key.prefixlen == 32:
            return self._maps["ost_ipcache_host"].delete(IpKey(key.address).pack())
        return self._maps["ost_ipcache"].delete(key.pack())

    @staticmethod
    def _ipcache_key(cidr: str) -> IpcacheKey:
        try:
            return IpcacheKey.from_cidr(cidr if "/" in cidr else f"{cidr}/32")
        except ValueError as exc:
            raise DatapathError(f"ipcache: {cidr!r} is not an IPv4 address or CIDR ({exc})") from None

    # ---- policy ----
    def sync_policy(self, ep_id: int, endpoint_policy: Any) -> int:
        """Make the endpoint's policy entries and enforcement flags equal to the engine's output
        (objects with `map_state`, `ingress_enforced`, `egress_enforced`). Returns the number of
        map entries. Entries are written before enforcement is switched on, and enforcement is
        switched off before entries are removed, so no packet sees a half-written policy."""
        self._require_started()
        with self._lock:
            st = self._endpoints.get(ep_id)
            if st is None:
                raise NotFoundError(f"endpoint {ep_id} is not attached to the datapath")
            entries = policymap.entries_for(ep_id, getattr(endpoint_policy, "map_state", {}) or {},
                                            self.config.proxy_ports)
            desired = {k.pack(): v.pack() for k, v in entries.items()}
            flags_obj = policymap.flags_of(endpoint_policy)
            flags = ((EP_F_INGRESS_ENFORCED if flags_obj.ingress_enforced else 0)
                     | (EP_F_EGRESS_ENFORCED if flags_obj.egress_enforced else 0))
            plens = [0, 0, 0, 0]
            for k in entries:
                plens[(k.direction & 1) * 2 + (k.identity == 0)] |= 1 << policy_class(k.prefixlen)
            pol = self._maps["ost_policy"]
            upserts = {k: v for k, v in desired.items() if st.policy.get(k) != v}
            deletes = [k for k in st.policy if k not in desired]
            self._check_capacity(pol, self._policy_fill() + len([k for k in upserts if k not in st.policy]))
            self._apply(pol, upserts, [], st.policy)
            st.policy.update(upserts)
            # While old and new entries coexist the program probes both sets of prefix classes.
            st.flags = flags
            st.plens = tuple(a | b for a, b in zip(st.plens, plens))  # type: ignore[assignment]
            self._write_endpoint(st)
            for k in deletes:
                pol.delete(k)
                st.policy.pop(k, None)
            if st.plens != tuple(plens):
                st.plens = tuple(plens)  # type: ignore[assignment]
                self._write_endpoint(st)
            return len(desired)

    # ---- ingress gateway ----
    def gateway_l7_targets(self, identity: int) -> list[tuple[str, int, int, int]]:
        """(endpoint IP, first port, last port, proxy port) of every TCP ingress L7 redirect that
        applies to `identity` (the gateway's reserved identity `ingress`): an entry naming the
        identity, or a wildcard-peer entry where no entry names it on the same ports. The gateway's
        upstream leaves the node's own stack, where sk_assign cannot reach it (tc ingress only):
        mesh.datapath.redirect sends these to the L7 listener with an nft redirect instead."""
        from bpf.maps import PolicyVerdict
        from bpf.maps import Direction as MapDirection

        out: set[tuple[str, int, int, int]] = set()
        with self._lock:
            for st in self._endpoints.values():
                named: dict[tuple[int, int], PolicyMapEntry] = {}
                wild: dict[tuple[int, int], PolicyMapEntry] = {}
                for kb, vb in st.policy.items():
                    k = PolicyMapKey.unpack(kb)
                    if k.direction != MapDirection.INGRESS or k.proto not in (0, 6):
                        continue
                    if k.identity == identity:
                        named[k.port_range] = PolicyMapEntry.unpack(vb)
                    elif k.identity == 0:
                        wild[k.port_range] = PolicyMapEntry.unpack(vb)
                # A deny of either kind wins in the program: never redirect ports it covers (the
                # proxy's upstream skips the backend's policy, so that would bypass the deny).
                denies = [r for r, e in [*named.items(), *wild.items()] if e.verdict == PolicyVerdict.DENY]
                for rng, e in [*named.items(), *((r, e) for r, e in wild.items() if r not in named)]:
                    if e.verdict != PolicyVerdict.REDIRECT or not e.proxy_port:
                        continue
                    if any(lo <= rng[1] and rng[0] <= hi for lo, hi in denies):
                        continue
                    out.add((st.ip, rng[0], rng[1], e.proxy_port))
        return sorted(out)

    # ---- egress gateway ----
    def sync_egress_gateway(self, redirects: Iterable[Any]) -> int:
        """Make ost_egress_gw equal to these redirects (the full set; objects with `sources`,
        `destinations`, `excluded`, `proxy_port`, i.e. mesh.gateway.resolve.EgressRedirect): TCP
        from each source to each destination CIDR goes to 127.0.0.1:proxy_port, excluded CIDRs
        (longer prefixes, port 0) bypass it. New entries are written before stale ones are removed.
        Returns the number of entries."""
        self._require_started()
        desired = egress_gw_entries(redirects)
        with self._lock:
            m = self._maps["ost_egress_gw"]
            if self._egress_gw is None:
                self._egress_gw = dict(m.items())
            old = self._egress_gw
            upserts = {k: v for k, v in desired.items() if old.get(k) != v}
            self._check_capacity(m, len(old) + sum(1 for k in upserts if k not in old))
            self._apply(m, upserts, [k for k in old if k not in desired], old)
            self._egress_gw = desired
            return len(desired)

    def _policy_fill(self) -> int:
        return sum(len(e.policy) for e in self._endpoints.values())

    # ---- services ----
    def sync_services(self, frontends: Iterable[Frontend]) -> dict[str, Any]:
        """Make the socket-LB maps equal to these frontends (the full set). Only frontends that
        changed since the last call are planned and written, so the agent can call this on every
        service or endpoint change. Conflicting VIPs and a full map are rejected before anything
        is written; a failure half-way is rolled back."""
        self._require_started()
        frontends = list(frontends)
        # gc_paused: the tens of thousands of acyclic containers of a full load would trigger
        # collections that rescan them (and the whole heap) many times over for nothing.
        with self._lock, lbmap.gc_paused():
            t0 = time.perf_counter()
            new = lbmap.index_frontends(frontends)
            rev_ids, be_ids = self._rev_ids.copy(), self._backend_ids.copy()
            plan = lbmap.plan_sync(self._fe, new, rev_ids, be_ids, self.config.max_slots_per_service)
            slots, masters, be_up = plan.slots, plan.masters, plan.be_up
            svc_map, be_map = self._maps["ost_lb4_svc"], self._maps["ost_lb4_backend"]
            svc_count, be_count = self._svc_count, self._be_count
            svc_peak, be_peak = svc_count + plan.svc_added, be_count + plan.be_added
            self._check_capacity(svc_map, svc_peak - len(plan.removed_svc) - len(plan.stale_svc))
            self._check_capacity(be_map, be_peak - len(plan.removed_be) - len(plan.stale_be))
            t1 = time.perf_counter()
            early, early_deleted = False, 0
            if svc_peak > svc_map.info.max_entries or be_peak > be_map.info.max_entries:
                # Room is only there once removed services are gone: remove them first.
                svc_map.delete_batch_raw(plan.removed_svc.array(), len(plan.removed_svc))
                be_map.delete_batch_raw(plan.removed_be.array(), len(plan.removed_be))
                self._svc_count = svc_count = svc_count - len(plan.removed_svc)
                self._be_count = be_count = be_count - len(plan.removed_be)
                # That much is done even if what follows fails: forget them, free their ids.
                self._fe = {fk: rec for fk, rec in self._fe.items() if fk in new}
                self._rev_ids, self._backend_ids = self._rev_ids.copy(), self._backend_ids.copy()
                self._rev_ids.release_many(plan.removed)
                self._backend_ids.release_many(plan.removed_bks)
                early, early_deleted = True, len(plan.removed_svc) + len(plan.removed_be)
            # Backends before the slots naming them, slots before the master entry counting them.
            self._write_batch(be_map, be_up, plan.overwritten_be)
            try:
                self._write_batch(svc_map, slots, plan.overwritten_svc)
                self._write_batch(svc_map, masters, plan.overwritten_svc)
            except DatapathError:
                self._write_batch(svc_map, _restore(slots, plan.overwritten_svc), {},
                                  deletes=_added(slots, plan.overwritten_svc))
                self._write_batch(be_map, _restore(be_up, plan.overwritten_be), {},
                                  deletes=_added(be_up, plan.overwritten_be))
                raise
            # Removal after, in the reverse order: master entries first (svc_del is in that
            # order), so no lookup finds a hole.
            svc_del = _joined(plan.stale_svc if early else (plan.removed_svc, plan.stale_svc))
            be_del = _joined(plan.stale_be if early else (plan.removed_be, plan.stale_be))
            svc_map.delete_batch_raw(*svc_del)
            be_map.delete_batch_raw(*be_del)
            t2 = time.perf_counter()
            self._svc_count = svc_count + plan.svc_added - svc_del[1]
            self._be_count = be_count + plan.be_added - be_del[1]
            self._fe = new
            self._rev_ids, self._backend_ids = rev_ids, be_ids
            self._frontends = frontends
            return {"frontends": len(frontends), "changed": len(plan.changed), "removed": len(plan.removed),
                    "service_entries": self._svc_count, "backends": self._be_count,
                    "written": len(slots) + len(masters) + len(be_up), "deleted": svc_del[1] + be_del[1] + early_deleted,
                    "plan_ms": round((t1 - t0) * 1000, 2), "write_ms": round((t2 - t1) * 1000, 2)}

    def frontends(self) -> list[Frontend]:
        return list(self._frontends)

    def _check_capacity(self, m: loader.Map, peak: int, final: int | None = None) -> None:
        if (final if final is not None else peak) > m.info.max_entries:
            self.map_full_errors[m.name] = self.map_full_errors.get(m.name, 0) + 1
            raise loader.MapFullError(m.name, m.info.max_entries)

    def _apply(self, m: loader.Map, upserts: dict[bytes, bytes], deletes: list[bytes],
               old: dict[bytes, bytes]) -> None:
        """Write a batch; on failure restore what had been written and re-raise."""
        if not upserts and not deletes:
            return
        try:
            if m.info.type == "lpm_trie":
                written: list[bytes] = []
                try:
                    for k, v in upserts.items():
                        m.update(k, v)
                        written.append(k)
                except DatapathError:
                    for k in written:
                        if k in old:
                            m.update(k, old[k])
                        else:
                            m.delete(k)
                    raise
            else:
                try:
                    m.update_batch_dict(upserts)
                except DatapathError:
                    for k in upserts:
                        if k in old:
                            m.update(k, old[k])
                        else:
                            m.delete(k)
                    raise
            m.delete_many(deletes)
        except loader.MapFullError:
            self.map_full_errors[m.name] = self.map_full_errors.get(m.name, 0) + 1
            raise

    def _write_batch(self, m: loader.Map, ups: lbmap.Upserts, old: dict[bytes, bytes],
                     deletes: Iterable[bytes] = ()) -> None:
        """_apply for a batch given as key and value lists (the socket-LB planner's output):
        written in one syscall; on failure what had been written is restored from `old`."""
        if ups:
            try:
                if not m.update_batch_raw(*ups.arrays(), len(ups)):
                    for k, v in ups.items():      # a map type without batch updates
                        m.update(k, v)
            except DatapathError as exc:
                for k, v in ups.items():
                    if k in old:
                        m.update(k, old[k])
                    else:
                        m.delete(k)
                if isinstance(exc, loader.MapFullError):
                    self.map_full_errors[m.name] = self.map_full_errors.get(m.name, 0) + 1
                raise
        m.delete_many(list(deletes))

    # ---- events ----
    def event_reader(self) -> loader.RingBuffer:
        self._require_started()
        return loader.RingBuffer(self.bpf, self._maps["ost_events"].fd)

    async def raw_events(self) -> AsyncIterator[bytes]:
        """Raw trace/drop records as they happen (the flow observer decodes only what it needs).
        One consumer per Datapath (the ring has one read position); the agent fans them out."""
        rb = self.event_reader()
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        fd = rb.epoll_fd
        loop.add_reader(fd, ready.set)
        try:
            while True:
                for raw in rb.consume():
                    yield raw
                await ready.wait()
                ready.clear()
        finally:
            loop.remove_reader(fd)
            rb.close()

    async def events(self) -> AsyncIterator[Event]:
        """Decoded trace and drop events (see raw_events)."""
        async for raw in self.raw_events():
            yield Event.unpack(raw)

    # ---- introspection ----
    def maps_info(self) -> list[dict[str, Any]]:
        self._require_started()
        out = []
        for name in sorted(self._maps):
            m = self._maps[name]
            fill: int | None
            if m.info.type == "ringbuf":
                fill = None
            elif m.info.type.endswith("array"):
                fill = m.info.max_entries
            else:
                fill = m.count()
            out.append({"name": name, "type": m.info.type, "max_entries": m.info.max_entries,
                        "entries": fill, "key_size": m.info.key_size, "value_size": m.info.value_size,
                        "fill_percent": None if fill is None else round(100.0 * fill / m.info.max_entries, 2),
                        "map_full_errors": self.map_full_errors.get(name, 0),
                        "pinned": os.path.join(self.map_dir, name)})
        return out

    def dump_map(self, name: str) -> list[dict[str, Any]]:
        self._require_started()
        if name not in LAYOUTS:
            known = ", ".join(sorted(LAYOUTS))
            raise NotFoundError(f"no map named {name!r}; maps: {known}")
        m = self._maps[name]
        return [decode_entry(name, k, v) for k, v in m.items()]

    def metrics(self) -> dict[str, int]:
        from bpf.maps import MetricValue, Reason
        m = self._maps["ost_metrics"]
        out = {}
        for r in Reason:
            raw = m.lookup(r.value.to_bytes(4, "little"))
            if raw is not None:
                out[r.name] = MetricValue.unpack(raw).count
        return out

    def _require_started(self) -> None:
        if not self._started:
            raise DatapathError("the datapath is not started (call start() first)")


def egress_gw_entries(redirects: Iterable[Any]) -> dict[bytes, bytes]:
    """ost_egress_gw's packed entries for these EgressRedirects. Pure. Overlapping policies: the first
    (the resolver orders them oldest first) keeps a (source, prefix); excluded CIDRs win over the
    same prefix of any policy of that source (an exclusion is never turned back into a redirect)."""
    redirects = list(redirects)
    out: dict[bytes, bytes] = {}
    for r in redirects:
        for src in r.sources:
            for cidr in r.destinations:
                out.setdefault(EgressGwKey.of(src, cidr).pack(), EgressGwValue(int(r.proxy_port)).pack())
    for r in redirects:
        for src in r.sources:
            for cidr in r.excluded:
                out[EgressGwKey.of(src, cidr).pack()] = EgressGwValue(0).pack()
    return out


def _joined(keys: lbmap.Keys | tuple[lbmap.Keys, ...]) -> tuple[bytes, int]:
    """(key array, count) of one or more Keys, in order."""
    parts = (keys,) if isinstance(keys, lbmap.Keys) else keys
    return b"".join(k.array() for k in parts), sum(len(k) for k in parts)


def _restore(ups: lbmap.Upserts, old: dict[bytes, bytes]) -> lbmap.Upserts:
    """The entries that put back what `ups` overwrote."""
    return lbmap.Upserts.of(ups.key_size, ups.val_size, ((k, old[k]) for k in ups.keys if k in old))


def _added(ups: lbmap.Upserts, old: dict[bytes, bytes]) -> list[bytes]:
    """The keys `ups` added (not in `old`): a rollback deletes them."""
    return [k for k in ups.keys if k not in old]


def is_enoent(exc: OSError) -> bool:
    return exc.errno == errno.ENOENT
