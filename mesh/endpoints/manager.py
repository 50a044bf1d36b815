"""The endpoint manager: standalone endpoints' lifecycle, persisted in the state store and reconciled with
the kernel on start. Blocking (iproute2, sysfs): the agent calls it from a worker thread, one call at a time.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import replace
from typing import Iterable

from mesh.endpoints.model import Endpoint, EndpointSpec
from mesh.endpoints.plumbing import Plumbing
from mesh.errors import ConflictError, EndpointError, IPAMError, NotFoundError, ValidationError
from mesh.state.ipam import IPAM
from mesh.state.store import StateStore

KIND = "Endpoint"  # state-store kind for endpoint records
log = logging.getLogger("ostium.endpoints")

IMMUTABLE = ("ip", "command")


class EndpointManager:
    def __init__(self, store: StateStore, ipam: IPAM, plumbing: Plumbing, log_dir: str) -> None:
        self.store = store
        self.ipam = ipam
        self.plumbing = plumbing
        self.log_dir = log_dir
        self._endpoints: dict[str, Endpoint] = {}
        for _ns, _name, body in store.list(KIND):
            ep = Endpoint.from_json(body)
            self._endpoints[ep.key] = ep

    # --- queries ------------------------------------------------------------------------------------
    def list(self, namespace: str | None = None) -> list[Endpoint]:
        eps = sorted(self._endpoints.values(), key=lambda e: (e.namespace, e.name))
        return [e for e in eps if namespace is None or e.namespace == namespace]

    def get(self, namespace: str, name: str) -> Endpoint:
        ep = self._endpoints.get(f"{namespace}.{name}")
        if ep is None:
            raise NotFoundError(f"endpoint {namespace}/{name} not found")
        return ep

    def find(self, ref: str, namespace: str | None = None) -> Endpoint:
        """Resolve `NAME`, `NS/NAME` or an endpoint IP."""
        if "/" in ref:
            ns, name = ref.split("/", 1)
            return self.get(ns, name)
        if namespace:
            return self.get(namespace, ref)
        matches = [e for e in self._endpoints.values() if e.name == ref or e.ip == ref]
        if not matches:
            raise NotFoundError(f"endpoint {ref} not found")
        if len(matches) > 1:
            raise ValidationError(f"endpoint name {ref!r} is ambiguous: use one of "
                                  + ", ".join(f"{e.namespace}/{e.name}" for e in matches))
        return matches[0]

    def by_ip(self, ip: str) -> Endpoint | None:
        for e in self._endpoints.values():
            if e.ip == ip:
                return e
        return None

    # --- changes ------------------------------------------------------------------------------------
    def check(self, specs: Iterable[EndpointSpec], *, allow_existing: bool) -> None:
        """Validate a batch against current state before any kernel change (all or nothing)."""
        wanted_ips: dict[str, str] = {}
        for spec in specs:
            cur = self._endpoints.get(spec.key)
            if cur is not None:
                if not allow_existing:
                    raise ConflictError(f"endpoint {spec.namespace}/{spec.name} already exists")
                for field in IMMUTABLE:
                    new, old = getattr(spec, field), getattr(cur.spec, field)
                    if field == "ip" and new is None:
                        continue
                    if new != old:
                        raise ValidationError(f"cannot change spec.{field} of existing endpoint "
                                              f"{spec.namespace}/{spec.name} ({old!r} → {new!r}): "
                                              "delete it and create it again", path=f"spec.{field}")
                continue
            if spec.ip:
                owner = self.ipam.owner_of(spec.ip)
                if owner is not None and owner != spec.key:
                    raise IPAMError(f"{spec.ip} is already allocated to {owner.replace('.', '/', 1)}")
                if spec.ip in wanted_ips:
                    raise IPAMError(f"{spec.ip} is requested by both {wanted_ips[spec.ip]} and {spec.key}")
                addr = ipaddress.ip_address(spec.ip)
                if addr not in self.ipam.pool:
                    raise IPAMError(f"{spec.ip} is outside the pod CIDR {self.ipam.pool}")
                if not self.ipam.usable(addr):
                    raise IPAMError(f"{spec.ip} is reserved in {self.ipam.pool} (network, broadcast or router)")
                wanted_ips[spec.ip] = spec.key
        new = [s for s in specs if s.key not in self._endpoints]
        free = self.ipam.capacity - len(self.ipam.allocated())
        if len(new) > free:
            raise IPAMError(f"pod CIDR {self.ipam.pool} has {free} free addresses, {len(new)} endpoints asked")

    def _next_id(self) -> int:
        cur = int(self.store.get_meta("next_endpoint_id") or "1")
        used = {e.id for e in self._endpoints.values()}
        while cur in used or cur == 0 or cur > 65535:
            cur = 1 if cur > 65535 else cur + 1
        self.store.set_meta("next_endpoint_id", str(cur + 1))
        return cur

    def create(self, spec: EndpointSpec) -> Endpoint:
        self.check([spec], allow_existing=False)
        with self.store.transaction():
            ip = self.ipam.allocate(spec.key, spec.ip)
            ep_id = self._next_id()
        try:
            kep = self.plumbing.create(spec.key, ip)
        except BaseException:
            self.ipam.release(ip, spec.key)
            raise
        ep = Endpoint(id=ep_id, spec=replace(spec, ip=spec.ip), ip=ip, netns=kep.netns,
                      host_ifname=kep.host_ifname, host_ifindex=kep.host_ifindex, cgroup_path=kep.cgroup_path,
                      mac=kep.mac)
        try:
            self._start_command(ep)
            self._save(ep)
        except BaseException:
            self.plumbing.delete(spec.key)
            self.ipam.release(ip, spec.key)
            raise
        self._endpoints[ep.key] = ep
        log.info("endpoint created", extra={"endpoint": f"{ep.namespace}/{ep.name}", "ip": ep.ip, "id": ep.id})
        return ep

    def update(self, spec: EndpointSpec) -> tuple[Endpoint, bool]:
        """Apply a changed spec to an existing endpoint (labels, ports, service account)."""
        cur = self.get(spec.namespace, spec.name)
        self.check([spec], allow_existing=True)
        new_spec = replace(spec, ip=cur.spec.ip)
        if new_spec == cur.spec:
            return cur, False
        cur.spec = new_spec
        self._save(cur)
        return cur, True

    def delete(self, namespace: str, name: str) -> Endpoint:
        ep = self.get(namespace, name)
        ep.state = "deleting"
        self.plumbing.delete(ep.key)
        with self.store.transaction():
            self.ipam.release(ep.ip, ep.key)
            self.store.delete(KIND, ep.namespace, ep.name)
        del self._endpoints[ep.key]
        log.info("endpoint deleted", extra={"endpoint": f"{ep.namespace}/{ep.name}"})
        return ep

    def set_identity(self, ep: Endpoint, identity: int) -> None:
        if ep.identity != identity:
            ep.identity = identity
            self._save(ep)

    # --- restart ------------------------------------------------------------------------------------
    def reconcile(self) -> dict[str, list[str]]:
        """Make the kernel match the state: recreate what is missing, report what is unknown."""
        report: dict[str, list[str]] = {"recreated": [], "restarted": [], "unknown": [], "failed": []}
        for ep in self.list():
            missing = self.plumbing.missing_parts(ep.key, ep.ip)
            try:
                if missing:
                    log.warning("endpoint incomplete, recreating",
                                extra={"endpoint": f"{ep.namespace}/{ep.name}", "missing": missing})
                    self.plumbing.delete(ep.key)
                    kep = self.plumbing.create(ep.key, ep.ip)
                    ep.host_ifindex, ep.mac = kep.host_ifindex, kep.mac
                    report["recreated"].append(f"{ep.namespace}/{ep.name} ({', '.join(missing)})")
                else:
                    ep.host_ifindex = self.plumbing.describe(ep.key, ep.ip).host_ifindex
                if ep.spec.command and not self.plumbing.pids(ep.key):
                    self._start_command(ep)
                    report["restarted"].append(f"{ep.namespace}/{ep.name}")
                ep.state, ep.state_reason = "ready", ""
            except EndpointError as exc:
                ep.state, ep.state_reason = "not-ready", str(exc)
                report["failed"].append(f"{ep.namespace}/{ep.name}: {exc}")
            self._save(ep)
        report["unknown"] = self.plumbing.list_unknown(set(self._endpoints))
        for item in report["unknown"]:
            log.warning("kernel object not known to the agent (left alone)", extra={"object": item})
        return report

    # --- internals ----------------------------------------------------------------------------------
    def _start_command(self, ep: Endpoint) -> None:
        if not ep.spec.command:
            return
        os.makedirs(self.log_dir, exist_ok=True)
        pid = self.plumbing.spawn(ep.key, list(ep.spec.command), os.path.join(self.log_dir, f"{ep.key}.log"))
        ep.pids = [pid]

    def _save(self, ep: Endpoint) -> None:
        self.store.put(KIND, ep.namespace, ep.name, ep.to_json())
