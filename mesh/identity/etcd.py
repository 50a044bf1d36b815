"""The etcd identity store: several nodes share identities through etcd's v3 API.

Talks to etcd's JSON gateway (``/v3/...``, base64 keys) over aiohttp: no grpc import, and
reconnecting after an etcd restart is ours to control. The design follows Cilium's kvstore allocator:

    <prefix>/id/<n>                   → {"labels": {...}}      master key, one per identity (no lease)
    <prefix>/value/<labels-key>       → "<n>"                  labels → number (created with the master)
    <prefix>/refs/<labels-key>/<node> → {"id": n, "owners": []}  one per node using it, on the node's lease

`<labels-key>` is the canonical label key (mesh.identity.labels.labels_key) percent-encoded, so it
holds no '/'. A new identity is created by one transaction that requires both the master key and
the labels key to be absent and writes them together with the node's reference: two nodes racing
for the same labels end with one number (the loser re-reads and references the winner's). Taking a
reference on an existing identity is a transaction that requires its master key to still exist, so
it cannot race with garbage collection. Reference keys live on the node's lease (kept alive every
TTL/3): when a node dies its references vanish with the lease, and `gc()` (run periodically, or on
demand) deletes identities nobody references, again in one transaction that requires the
reference range to be empty.

A watch on ``<prefix>/id/`` keeps an in-memory view of every identity (other nodes' included) and
feeds `watch()`. After a disconnect (etcd restart) the allocator re-lists, publishes what changed
meanwhile, and resumes; requests retry for `request_timeout` seconds before failing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import socket
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import aiohttp

from mesh.errors import IdentityError
from mesh.identity.allocator import (
    RESERVED,
    EventHub,
    EventKind,
    Identity,
    IdentityAllocator,
    IdentityEvent,
    IdRange,
    check_labels,
    check_owner,
    reserved_identity,
)
from mesh.identity.labels import labels_key

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "ostium/identities"
DEFAULT_LEASE_TTL = 15
DEFAULT_GC_INTERVAL = 60.0
DEFAULT_REQUEST_TIMEOUT = 10.0
_ALLOCATE_ATTEMPTS = 16


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unb64(data: str | None) -> str:
    return base64.b64decode(data or "").decode()


def _prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with `prefix` (prefix + 1 in its last byte)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1  # our prefixes end in '/' (0x2f): no overflow
    return raw.decode()


def _quote_key(key: str) -> str:
    return urllib.parse.quote(key, safe="")


class _Unavailable(Exception):
    """etcd could not be reached (retryable)."""


class _LeaseLost(IdentityError):
    """The node's lease expired or was revoked: its references are gone (renewed by _with_lease)."""


@dataclass
class _LocalRef:
    """A reference this node holds in etcd: the owners on this node."""

    id: int
    labels: dict[str, str]
    owners: set[str] = field(default_factory=set)


class _EtcdHTTP:
    """The few v3 gateway calls we need, with failover over endpoints and retry while unreachable."""

    def __init__(self, endpoints: Sequence[str], request_timeout: float) -> None:
        if not endpoints:
            raise IdentityError("etcd backend: no endpoints configured (identity.etcd.endpoints)")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.request_timeout = request_timeout
        self._session: aiohttp.ClientSession | None = None
        self._current = 0

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _once(self, path: str, body: dict) -> dict:
        url = self.endpoints[self._current] + path
        timeout = aiohttp.ClientTimeout(total=min(self.request_timeout, 5.0))
        try:
            async with self.session().post(url, json=body, timeout=timeout) as resp:
                try:
                    payload = await resp.json(content_type=None)
                except ValueError:
                    payload = None
                if resp.status >= 500 or payload is None:
                    raise _Unavailable(f"{url}: HTTP {resp.status}")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise _Unavailable(f"{url}: {exc or type(exc).__name__}") from None
        if resp.status >= 400 or "error" in payload:
            message = str(payload.get("message") or payload.get("error"))
            if "lease not found" in message:
                raise _LeaseLost(message)
            if payload.get("code") in (14, 4):  # UNAVAILABLE, DEADLINE_EXCEEDED: etcd not ready
                raise _Unavailable(f"{url}: {message}")
            raise IdentityError(f"etcd at {url} refused {path}: {message}")
        return payload

    async def call(self, path: str, body: dict) -> dict:
        deadline = time.monotonic() + self.request_timeout
        delay = 0.05
        while True:
            try:
                return await self._once(path, body)
            except _Unavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise IdentityError(
                        f"etcd unreachable at {', '.join(self.endpoints)} for {self.request_timeout:g}s "
                        f"({exc}); check that etcd runs and identity.etcd.endpoints is right") from None
                self._current = (self._current + 1) % len(self.endpoints)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    # -- KV helpers (keys and values as str) --

    async def range(self, key: str, *, prefix: bool = False, keys_only: bool = False) -> tuple[int, list[dict]]:
        body: dict[str, Any] = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _b64(_prefix_end(key))
        if keys_only:
            body["keys_only"] = True
        resp = await self.call("/v3/kv/range", body)
        return int(resp["header"]["revision"]), resp.get("kvs", [])

    async def txn(self, compare: list[dict], success: list[dict]) -> tuple[bool, int]:
        """Run a transaction; (succeeded, revision after it)."""
        resp = await self.call("/v3/kv/txn", {"compare": compare, "success": success})
        return bool(resp.get("succeeded", False)), int(resp["header"]["revision"])


def _cmp_absent(key: str) -> dict:
    return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def _cmp_present(key: str) -> dict:
    return {"key": _b64(key), "target": "CREATE", "result": "GREATER", "create_revision": "0"}


def _cmp_range_empty(prefix: str) -> dict:
    # Over a range, a CREATE == 0 compare holds only when no key exists in it (etcd >= 3.3).
    return {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix)), "target": "CREATE",
            "result": "EQUAL", "create_revision": "0"}


def _cmp_value(key: str, value: str) -> dict:
    return {"key": _b64(key), "target": "VALUE", "result": "EQUAL", "value": _b64(value)}


def _cmp_mod(key: str, mod_revision: int) -> dict:
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}


def _put(key: str, value: str, lease: int | None = None) -> dict:
    req: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease is not None:
        req["lease"] = str(lease)
    return {"request_put": req}


def _delete(key: str) -> dict:
    return {"request_delete_range": {"key": _b64(key)}}


class EtcdAllocator(IdentityAllocator):
    """Identities in etcd, shared by every node using the same endpoints and prefix."""

    def __init__(self, endpoints: Sequence[str], node: str | None = None, *,
                 prefix: str = DEFAULT_PREFIX, lease_ttl: int = DEFAULT_LEASE_TTL,
                 id_range: IdRange | None = None, gc_interval: float = DEFAULT_GC_INTERVAL,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT) -> None:
        """Prefer `await EtcdAllocator.open(...)`, which connects and starts the background tasks."""
        self.node = check_owner(node or socket.gethostname())
        if not isinstance(lease_ttl, int) or lease_ttl < 1:
            raise IdentityError(f"identity.etcd.leaseTTL must be a whole number of seconds >= 1, got {lease_ttl!r}")
        self.prefix = prefix.strip("/")
        if not self.prefix:
            raise IdentityError("identity.etcd.prefix must not be empty")
        self.lease_ttl = lease_ttl
        self.gc_interval = gc_interval
        self.id_range = id_range or IdRange()
        self._http = _EtcdHTTP(endpoints, request_timeout)
        self._hub = EventHub()
        self._lock = asyncio.Lock()  # serialises this node's allocations, releases and lease renewal
        self._local: dict[str, _LocalRef] = {}  # quoted labels key → our reference
        self._cache: dict[int, Identity] = {}  # every identity in etcd (id, labels), fed by the watch
        # Revision at which we last changed a master key ourselves: older watch events for it are
        # stale (our own change is already in the cache and was already published).
        self._applied: dict[int, int] = {}
        self._lease: int | None = None
        self._tasks: list[asyncio.Task] = []
        self._synced = asyncio.Event()
        self._closed = False
        self.lease_renewals = 0  # how often the lease had to be granted anew (visible in status)
        self._refs_dirty = False  # a lease renewal has not rewritten every reference yet

    @classmethod
    async def open(cls, endpoints: Sequence[str], node: str | None = None, **kwargs: Any) -> "EtcdAllocator":
        self = cls(endpoints, node, **kwargs)
        try:
            await self._resync()
            async with self._lock:
                await self._grant_lease()
        except BaseException:
            await self._http.close()
            raise
        self._synced.set()
        self._tasks = [asyncio.create_task(self._watch_loop(), name="identity-etcd-watch"),
                       asyncio.create_task(self._keepalive_loop(), name="identity-etcd-keepalive")]
        if self.gc_interval and self.gc_interval > 0:
            self._tasks.append(asyncio.create_task(self._gc_loop(), name="identity-etcd-gc"))
        return self

    # -- keys --

    def _id_key(self, n: int) -> str:
        return f"{self.prefix}/id/{n}"

    def _value_key(self, qkey: str) -> str:
        return f"{self.prefix}/value/{qkey}"

    def _refs_prefix(self, qkey: str) -> str:
        return f"{self.prefix}/refs/{qkey}/"

    def _ref_key(self, qkey: str) -> str:
        return f"{self.prefix}/refs/{qkey}/{self.node}"

    # -- lease --

    async def _grant_lease(self) -> None:
        resp = await self._http.call("/v3/lease/grant", {"TTL": str(self.lease_ttl)})
        self._lease = int(resp["ID"])

    async def _keepalive_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.lease_ttl / 3)
            try:
                resp = await self._http.call("/v3/lease/keepalive", {"ID": str(self._lease)})
                alive = int(resp.get("result", {}).get("TTL", 0)) > 0
            except IdentityError as exc:
                log.warning("identity lease keepalive failed: %s", exc)
                continue
            except Exception:
                log.exception("identity lease keepalive failed")
                continue
            if not alive or self._refs_dirty:
                if not alive:
                    log.warning("identity lease %s expired: re-creating this node's references", self._lease)
                try:
                    async with self._lock:
                        await self._reassert(new_lease=not alive)
                except Exception as exc:  # retried on the next round: the lease is still unknown
                    log.warning("re-creating identity references failed, will retry: %s", exc)

    async def _reassert(self, new_lease: bool = True) -> None:
        """A new lease, and every reference this node holds written again under it (lock held).
        Until every reference is back, `_refs_dirty` makes the keepalive loop try again."""
        if new_lease:
            await self._grant_lease()
            self.lease_renewals += 1
        self._refs_dirty = True
        for qkey, ref in list(self._local.items()):
            n = await self._take_reference(qkey, ref.labels, ref.owners)
            if n != ref.id:
                log.warning("identity of %s changed from %d to %d after the lease was lost",
                            labels_key(ref.labels), ref.id, n)
                ref.id = n
        self._refs_dirty = False

    async def _with_lease(self, op):
        """Run `op()`; if the lease is gone, renew it, re-assert our references and run it again."""
        try:
            return await op()
        except _LeaseLost:
            await self._reassert()
            return await op()

    # -- allocation (lock held) --

    async def _take_reference(self, qkey: str, labels: dict[str, str], owners: set[str]) -> int:
        """Find or create the identity for `labels` and write this node's reference. Returns its number."""
        value_key = self._value_key(qkey)
        ref_value = lambda n: json.dumps({"id": n, "owners": sorted(owners)})  # noqa: E731
        tried: set[int] = set()
        for _ in range(_ALLOCATE_ATTEMPTS):
            _rev, kvs = await self._http.range(value_key)
            if kvs:
                n = int(_unb64(kvs[0].get("value")))
                # The master key must still exist: GC may have just deleted an unreferenced one.
                ok, _rev = await self._http.txn(
                    [_cmp_present(self._id_key(n)), _cmp_value(value_key, str(n))],
                    [_put(self._ref_key(qkey), ref_value(n), self._lease)])
                if ok:
                    return n
                continue
            n = await self._pick_free(tried)
            tried.add(n)
            ok, rev = await self._http.txn(
                [_cmp_absent(self._id_key(n)), _cmp_absent(value_key)],
                [_put(self._id_key(n), json.dumps({"labels": labels})),
                 _put(value_key, str(n)),
                 _put(self._ref_key(qkey), ref_value(n), self._lease)])
            if ok:
                self._applied[n] = rev
                self._set_cached(n, labels)
                return n
            # Lost a race: either someone created these labels (next round finds them) or took n.
        raise IdentityError(f"could not allocate an identity for {labels_key(labels)!r} after "
                            f"{_ALLOCATE_ATTEMPTS} attempts: too much contention on etcd")

    async def _pick_free(self, tried: set[int]) -> int:
        """A random unused number (random so that nodes racing for different labels rarely collide)."""
        rng = self.id_range
        used = self._cache.keys() | tried
        for _ in range(32):
            n = random.randint(rng.min_id, rng.max_id)
            if n not in used:
                return n
        # Nearly full (or our view is stale): ask etcd what is used.
        _rev, kvs = await self._http.range(f"{self.prefix}/id/", prefix=True, keys_only=True)
        used = {int(_unb64(kv["key"]).rsplit("/", 1)[1]) for kv in kvs} | tried
        free = [n for n in range(rng.min_id, rng.max_id + 1) if n not in used]
        if not free:
            raise rng.exhausted()
        return random.choice(free)

    def _set_cached(self, n: int, labels: dict[str, str] | None) -> None:
        """Put one identity's state (None: deleted) into the view; publish when it changed."""
        old = self._cache.get(n)
        if labels is None:
            if old is not None:
                del self._cache[n]
                self._hub.publish(IdentityEvent(EventKind.DELETE, old))
            return
        if old is not None and old.labels == labels:
            return
        if old is not None:
            self._hub.publish(IdentityEvent(EventKind.DELETE, old))
        ident = Identity(n, dict(labels))
        self._cache[n] = ident
        self._hub.publish(IdentityEvent(EventKind.UPSERT, ident))

    async def _free_if_unreferenced(self, n: int, qkey: str, mod_revision: int | None = None) -> bool:
        compare = [_cmp_range_empty(self._refs_prefix(qkey)), _cmp_present(self._id_key(n))]
        if mod_revision is not None:
            compare.append(_cmp_mod(self._id_key(n), mod_revision))
        ok, rev = await self._http.txn(compare, [_delete(self._id_key(n)), _delete(self._value_key(qkey))])
        if ok:
            self._applied[n] = rev
            self._set_cached(n, None)
        return ok

    # -- public API --

    async def allocate(self, labels: Mapping[str, str], owner: str) -> Identity:
        """The identity for `labels`; the returned references/owners are this node's only."""
        clean = check_labels(labels)
        check_owner(owner)
        reserved = reserved_identity(clean)
        if reserved is not None:
            return reserved
        qkey = _quote_key(labels_key(clean))
        self._check_open()
        async with self._lock:
            ref = self._local.get(qkey)
            if ref is not None and owner in ref.owners:
                pass
            elif ref is not None:
                new_owners = ref.owners | {owner}
                await self._with_lease(lambda: self._rewrite_ref(qkey, ref, new_owners))
                ref.owners = new_owners
            else:
                owners = {owner}
                n = await self._with_lease(lambda: self._take_reference(qkey, clean, owners))
                ref = self._local[qkey] = _LocalRef(n, clean, owners)
            return Identity(ref.id, dict(clean), len(ref.owners),
                            tuple(f"{self.node}/{o}" for o in sorted(ref.owners)))

    async def _rewrite_ref(self, qkey: str, ref: _LocalRef, owners: set[str]) -> None:
        # Only this node writes its reference key; the master-key compare keeps GC honest.
        ok, _rev = await self._http.txn([_cmp_present(self._id_key(ref.id))],
                                        [_put(self._ref_key(qkey), json.dumps({"id": ref.id, "owners": sorted(owners)}),
                                        self._lease)])
        if not ok:  # collected while we thought we held it (lease lost meanwhile): take it anew
            ref.id = await self._take_reference(qkey, ref.labels, owners)

    async def release(self, labels_or_id: Mapping[str, str] | int, owner: str) -> bool:
        """Drop `owner`'s reference; True when no node references the identity any more and it was freed."""
        check_owner(owner)
        self._check_open()
        async with self._lock:
            if isinstance(labels_or_id, int):
                if reserved_identity(labels_or_id) is not None:
                    return False
                qkey = next((q for q, r in self._local.items() if r.id == labels_or_id), None)
            else:
                clean = check_labels(labels_or_id)
                if reserved_identity(clean) is not None:
                    return False
                qkey = _quote_key(labels_key(clean))
            ref = self._local.get(qkey) if qkey is not None else None
            if ref is None or owner not in ref.owners:
                return False
            remaining = ref.owners - {owner}
            if remaining:
                await self._with_lease(lambda: self._rewrite_ref(qkey, ref, remaining))
                ref.owners = remaining
                return False
            await self._http.call("/v3/kv/deleterange", {"key": _b64(self._ref_key(qkey))})
            del self._local[qkey]
            return await self._free_if_unreferenced(ref.id, qkey)

    async def gc(self) -> list[int]:
        """Delete every identity no node references any more (dead nodes' leases expired). Returns their ids."""
        self._check_open()
        _rev, kvs = await self._http.range(f"{self.prefix}/", prefix=True)
        referenced: set[str] = set()
        masters: list[tuple[int, str, int]] = []
        refs_root = f"{self.prefix}/refs/"
        id_root = f"{self.prefix}/id/"
        for kv in kvs:
            key = _unb64(kv["key"])
            if key.startswith(refs_root):
                referenced.add(key[len(refs_root):].split("/", 1)[0])
            elif key.startswith(id_root):
                try:
                    labels = json.loads(_unb64(kv.get("value")))["labels"]
                    n = int(key[len(id_root):])
                except (ValueError, KeyError, TypeError):
                    log.warning("ignoring malformed identity key %s", key)
                    continue
                masters.append((n, _quote_key(labels_key(labels)), int(kv["mod_revision"])))
        freed = []
        for n, qkey, mod in masters:
            if qkey not in referenced and await self._free_if_unreferenced(n, qkey, mod):
                freed.append(n)
        if freed:
            log.info("identity GC freed %s", freed)
        return sorted(freed)

    async def get(self, identity_id: int) -> Identity | None:
        reserved = reserved_identity(identity_id)
        if reserved is not None:
            return reserved
        self._check_open()
        _rev, kvs = await self._http.range(self._id_key(identity_id))
        if not kvs:
            return None
        labels = json.loads(_unb64(kvs[0].get("value")))["labels"]
        return await self._with_references(identity_id, labels)

    async def _with_references(self, n: int, labels: dict[str, str]) -> Identity:
        qkey = _quote_key(labels_key(labels))
        _rev, refs = await self._http.range(self._refs_prefix(qkey), prefix=True)
        owners = []
        for kv in refs:
            node = _unb64(kv["key"]).rsplit("/", 1)[1]
            owners += [f"{node}/{o}" for o in json.loads(_unb64(kv.get("value"))).get("owners", [])]
        return Identity(n, labels, len(owners), tuple(sorted(owners)))

    async def lookup(self, labels: Mapping[str, str]) -> Identity | None:
        clean = check_labels(labels)
        reserved = reserved_identity(clean)
        if reserved is not None:
            return reserved
        self._check_open()
        _rev, kvs = await self._http.range(self._value_key(_quote_key(labels_key(clean))))
        if not kvs:
            return None
        return await self._with_references(int(_unb64(kvs[0].get("value"))), clean)

    async def list(self) -> list[Identity]:
        self._check_open()
        _rev, kvs = await self._http.range(f"{self.prefix}/", prefix=True)  # one consistent read
        owners: dict[str, list[str]] = {}
        masters: dict[int, dict[str, str]] = {}
        refs_root, id_root = f"{self.prefix}/refs/", f"{self.prefix}/id/"
        for kv in kvs:
            key = _unb64(kv["key"])
            if key.startswith(refs_root):
                qkey, _, node = key[len(refs_root):].partition("/")
                owners.setdefault(qkey, []).extend(
                    f"{node}/{o}" for o in json.loads(_unb64(kv.get("value"))).get("owners", []))
            elif key.startswith(id_root):
                try:
                    masters[int(key[len(id_root):])] = json.loads(_unb64(kv.get("value")))["labels"]
                except (ValueError, KeyError, TypeError):
                    log.warning("ignoring malformed identity key %s", key)
        out = sorted(RESERVED.values(), key=lambda i: i.id)
        for n in sorted(masters):
            o = sorted(owners.get(_quote_key(labels_key(masters[n])), []))
            out.append(Identity(n, masters[n], len(o), tuple(o)))
        return out

    def _check_open(self) -> None:
        if self._closed:
            raise IdentityError("the identity allocator is closed")

    async def close(self, revoke_lease: bool = False) -> None:
        """Stop watching and renewing. The lease is left to expire (references stay for its TTL, so a
        restarting agent keeps its identities) unless `revoke_lease`, which drops them at once."""
        if self._closed:
            return
        self._closed = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        if revoke_lease and self._lease is not None:
            try:
                await self._http._once("/v3/lease/revoke", {"ID": str(self._lease)})
            except (_Unavailable, _LeaseLost, IdentityError) as exc:
                log.warning("revoking identity lease failed: %s", exc)
        self._hub.close()
        await self._http.close()

    # -- the shared view of all identities --

    def _snapshot(self) -> list[Identity]:
        return [*RESERVED.values(), *self._cache.values()]

    def _apply(self, key: str, value: str | None, revision: int) -> None:
        """Fold one master key's state at `revision` into the view (skipping what we already know)."""
        try:
            n = int(key.rsplit("/", 1)[1])
        except ValueError:
            return
        applied = self._applied.get(n, 0)
        if revision <= applied:
            if revision == applied:  # the watch caught up with our own change
                del self._applied[n]
            return
        labels = None
        if value is not None:
            try:
                labels = json.loads(value)["labels"]
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring malformed identity key %s", key)
                return
        self._applied.pop(n, None)
        self._set_cached(n, labels)

    async def _resync(self) -> int:
        """Re-list every master key, publish the differences; returns the revision read at."""
        rev, kvs = await self._http.range(f"{self.prefix}/id/", prefix=True)
        seen = {_unb64(kv["key"]): (_unb64(kv.get("value")), int(kv["mod_revision"])) for kv in kvs}
        for n in list(self._cache):
            if self._id_key(n) not in seen:
                self._apply(self._id_key(n), None, rev)
        for key, (value, mod) in seen.items():
            self._apply(key, value, mod)
        return rev

    async def _watch_loop(self) -> None:
        delay = 0.1
        rev: int | None = None
        while not self._closed:
            try:
                if rev is None:
                    rev = await self._resync()
                rev = await self._watch_from(rev + 1)
                delay = 0.1
            except (IdentityError, _Unavailable) as exc:
                log.info("identity watch interrupted (%s); re-listing", exc)
                rev = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception:  # a bug or a malformed message: never leave the node without a watch
                log.exception("identity watch failed; re-listing")
                rev = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _watch_from(self, start: int) -> int | None:
        """Stream changes from revision `start`; returns the last revision seen, or None to re-list."""
        prefix = f"{self.prefix}/id/"
        body = {"create_request": {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix)),
                                   "start_revision": str(start), "progress_notify": True}}
        last = start - 1
        url = self._http.endpoints[self._http._current] + "/v3/watch"
        timeout = aiohttp.ClientTimeout(total=None, connect=5, sock_read=None)
        buf = b""
        try:
            async with self._http.session().post(url, json=body, timeout=timeout) as resp:
                if resp.status != 200:
                    raise _Unavailable(f"watch: HTTP {resp.status}")
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        last_or_none = self._on_watch_line(line, last)
                        if last_or_none is None:
                            return None
                        last = last_or_none
                if buf.strip():
                    self._on_watch_line(buf, last)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise _Unavailable(f"watch: {exc or type(exc).__name__}") from None
        raise _Unavailable("watch stream ended")

    def _on_watch_line(self, line: bytes, last: int) -> int | None:
        if not line.strip():
            return last
        msg = json.loads(line)
        if "error" in msg:
            raise _Unavailable(f"watch: {msg['error'].get('message', msg['error'])}")
        result = msg.get("result", {})
        if result.get("canceled") or int(result.get("compact_revision", 0) or 0):
            return None  # compacted past our revision: re-list
        events = result.get("events", [])
        for ev in events:
            kv = ev["kv"]
            mod = int(kv.get("mod_revision", last))
            self._apply(_unb64(kv["key"]), None if ev.get("type") == "DELETE" else _unb64(kv.get("value")), mod)
            last = max(last, mod)
        if not events and not result.get("created"):
            # A progress notification: everything up to its revision has been sent. (The creation
            # message's revision says nothing about events still to come, so it is not used.)
            last = max(last, int(result.get("header", {}).get("revision", last) or last))
        return last

    async def _gc_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.gc_interval)
            try:
                await self.gc()
            except Exception as exc:
                log.warning("identity GC failed, will retry: %s", exc)
