"""Host-scope IPAM: hands out addresses from the node's pod CIDR, persisted in the state store.

Never hands out an address twice, also across agent restarts: allocations live in SQLite and are made
inside the caller's transaction. The network address, the broadcast address and the router IP are never
handed out.
"""

from __future__ import annotations

import ipaddress

from mesh.errors import IPAMError
from mesh.state.store import StateStore


class IPAM:
    def __init__(self, store: StateStore, cidr: str, reserved: tuple[str, ...] = ()) -> None:
        self.store = store
        self.pool = ipaddress.ip_network(cidr, strict=True)
        self.pool_key = str(self.pool)
        self.reserved = {ipaddress.ip_address(r) for r in reserved}
        self._hint = 0

    @property
    def capacity(self) -> int:
        return self.pool.num_addresses - 2 - len([r for r in self.reserved if r in self.pool])

    def usable(self, ip: ipaddress.IPv4Address) -> bool:
        return ip in self.pool and ip not in (self.pool.network_address, self.pool.broadcast_address) \
            and ip not in self.reserved

    def owner_of(self, ip: str) -> str | None:
        row = self.store.db.execute("SELECT owner FROM ipam WHERE pool=? AND ip=?", (self.pool_key, ip)).fetchone()
        return row[0] if row else None

    def allocated(self) -> dict[str, str]:
        return dict(self.store.db.execute("SELECT ip, owner FROM ipam WHERE pool=?", (self.pool_key,)).fetchall())

    def allocate(self, owner: str, ip: str | None = None) -> str:
        """Allocate `ip` (checked) or the next free address for `owner`; idempotent for the same owner."""
        with self.store.transaction():
            if ip is not None:
                try:
                    addr = ipaddress.ip_address(ip)
                except ValueError:
                    raise IPAMError(f"{ip!r} is not an IP address") from None
                if addr not in self.pool:
                    raise IPAMError(f"{addr} is outside the pod CIDR {self.pool}")
                if not self.usable(addr):
                    raise IPAMError(f"{addr} is reserved in {self.pool} (network, broadcast or router address)")
                current = self.owner_of(str(addr))
                if current == owner:
                    return str(addr)
                if current is not None:
                    raise IPAMError(f"{addr} is already allocated to {current.replace('.', '/', 1)}")
                self.store.db.execute("INSERT INTO ipam(pool, ip, owner) VALUES (?,?,?)",
                                      (self.pool_key, str(addr), owner))
                return str(addr)
            existing = self.store.db.execute("SELECT ip FROM ipam WHERE pool=? AND owner=?",
                                             (self.pool_key, owner)).fetchone()
            if existing:
                return existing[0]
            taken = set(self.allocated())
            base = int(self.pool.network_address)
            n = self.pool.num_addresses
            for step in range(n):
                off = (self._hint + step) % n
                addr = ipaddress.ip_address(base + off)
                if self.usable(addr) and str(addr) not in taken:
                    self.store.db.execute("INSERT INTO ipam(pool, ip, owner) VALUES (?,?,?)",
                                          (self.pool_key, str(addr), owner))
                    self._hint = off + 1
                    return str(addr)
            raise IPAMError(f"pod CIDR {self.pool} is exhausted ({len(taken)} addresses in use): "
                            "delete endpoints or configure a larger pod_cidr")

    def release(self, ip: str, owner: str | None = None) -> bool:
        with self.store.transaction():
            if owner is not None:
                cur = self.store.db.execute("DELETE FROM ipam WHERE pool=? AND ip=? AND owner=?",
                                            (self.pool_key, ip, owner))
            else:
                cur = self.store.db.execute("DELETE FROM ipam WHERE pool=? AND ip=?", (self.pool_key, ip))
            return cur.rowcount > 0
