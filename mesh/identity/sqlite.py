"""The embedded identity store: one SQLite file under the agent's state dir (single node, default).

Every allocation is one `BEGIN IMMEDIATE` transaction (the write lock is taken before the label set
is looked up), so two allocations of the same labels, from this process or another one sharing the
file, never end with two numbers. The file survives restarts. Numbers are handed out round-robin
(the next free one after the last allocated) so a freed number is not reused at once: stale
datapath or policy state naming it has time to go away first.

SQLite calls run on one worker thread, keeping the event loop free while the file is synced.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Mapping, TypeVar

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

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS identities (
    id INTEGER PRIMARY KEY,
    labels_key TEXT NOT NULL UNIQUE,
    labels TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS identity_refs (
    id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
    owner TEXT NOT NULL,
    PRIMARY KEY (id, owner)
);
CREATE TABLE IF NOT EXISTS identity_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

DEFAULT_FILENAME = "identities.db"


class SQLiteAllocator(IdentityAllocator):
    def __init__(self, path: str | Path, id_range: IdRange | None = None,
                 busy_timeout: float = 10.0) -> None:
        """Open (or create) the store at `path`. Prefer `await SQLiteAllocator.open(...)`."""
        self.path = Path(path)
        self.id_range = id_range or IdRange()
        self._hub = EventHub()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ostium-identity-db")
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), timeout=busy_timeout, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            rows = self._db.execute("SELECT id, labels FROM identities").fetchall()
        except (sqlite3.Error, OSError) as exc:
            self._executor.shutdown(wait=False)
            raise IdentityError(f"cannot open the identity store {self.path}: {exc}") from None
        # Id and labels of every allocated identity, for watch() snapshots (no references).
        self._cache: dict[int, Identity] = {n: Identity(n, json.loads(lab)) for n, lab in rows}

    @classmethod
    async def open(cls, path: str | Path, id_range: IdRange | None = None) -> "SQLiteAllocator":
        return await asyncio.to_thread(cls, path, id_range)

    # -- plumbing ---------------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise IdentityError("the identity allocator is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, self._db)
        except sqlite3.Error as exc:
            raise IdentityError(f"identity store {self.path}: {exc}") from None

    def _snapshot(self) -> list[Identity]:
        return [*RESERVED.values(), *self._cache.values()]

    def _note_created(self, ident: Identity) -> None:
        bare = Identity(ident.id, dict(ident.labels))
        self._cache[ident.id] = bare
        self._hub.publish(IdentityEvent(EventKind.UPSERT, bare))

    def _note_freed(self, identity_id: int) -> None:
        bare = self._cache.pop(identity_id, None)
        if bare is not None:
            self._hub.publish(IdentityEvent(EventKind.DELETE, bare))

    # -- transactions (run on the worker thread) --------------------------------------------------

    @staticmethod
    def _load(db: sqlite3.Connection, identity_id: int) -> Identity | None:
        row = db.execute("SELECT labels FROM identities WHERE id = ?", (identity_id,)).fetchone()
        if row is None:
            return None
        owners = tuple(o for (o,) in db.execute(
            "SELECT owner FROM identity_refs WHERE id = ? ORDER BY owner", (identity_id,)))
        return Identity(identity_id, json.loads(row[0]), len(owners), owners)

    def _first_free(self, db: sqlite3.Connection, lo: int, hi: int) -> int | None:
        """The smallest unused number in [lo, hi], or None."""
        if lo > hi:
            return None
        if db.execute("SELECT 1 FROM identities WHERE id = ?", (lo,)).fetchone() is None:
            return lo
        # The first used number in range whose successor is unused: walks the primary key index.
        row = db.execute(
            "SELECT a.id + 1 FROM identities a WHERE a.id >= ? AND a.id < ? AND NOT EXISTS "
            "(SELECT 1 FROM identities b WHERE b.id = a.id + 1) ORDER BY a.id LIMIT 1",
            (lo, hi)).fetchone()
        return None if row is None else int(row[0])

    def _allocate_tx(self, db: sqlite3.Connection, labels: dict[str, str], key: str,
                     owner: str) -> tuple[Identity, bool]:
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT id FROM identities WHERE labels_key = ?", (key,)).fetchone()
            created = row is None
            if row is not None:
                n = int(row[0])
            else:
                rng = self.id_range
                nxt_row = db.execute("SELECT value FROM identity_meta WHERE key = 'next_id'").fetchone()
                start = int(nxt_row[0]) if nxt_row else rng.min_id
                if start not in rng:
                    start = rng.min_id
                n = self._first_free(db, start, rng.max_id)
                if n is None:
                    n = self._first_free(db, rng.min_id, start - 1)
                if n is None:
                    raise rng.exhausted()
                db.execute("INSERT INTO identities (id, labels_key, labels, created_at) VALUES (?, ?, ?, ?)",
                           (n, key, json.dumps(labels), time.time()))
                db.execute("INSERT OR REPLACE INTO identity_meta (key, value) VALUES ('next_id', ?)",
                           (str(n + 1),))
            db.execute("INSERT OR IGNORE INTO identity_refs (id, owner) VALUES (?, ?)", (n, owner))
            ident = self._load(db, n)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        assert ident is not None
        return ident, created

    def _release_tx(self, db: sqlite3.Connection, target: int | str, owner: str) -> int | None:
        """Drop the reference; return the freed identity's number when it was the last one."""
        db.execute("BEGIN IMMEDIATE")
        try:
            if isinstance(target, str):
                row = db.execute("SELECT id FROM identities WHERE labels_key = ?", (target,)).fetchone()
                if row is None:
                    db.execute("COMMIT")
                    return None
                n = int(row[0])
            else:
                n = target
            cur = db.execute("DELETE FROM identity_refs WHERE id = ? AND owner = ?", (n, owner))
            freed = None
            if cur.rowcount and db.execute("SELECT 1 FROM identity_refs WHERE id = ? LIMIT 1",
                                           (n,)).fetchone() is None:
                db.execute("DELETE FROM identities WHERE id = ?", (n,))
                freed = n
            db.execute("COMMIT")
            return freed
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- public API -------------------------------------------------------------------------------

    async def allocate(self, labels: Mapping[str, str], owner: str) -> Identity:
        clean = check_labels(labels)
        check_owner(owner)
        reserved = reserved_identity(clean)
        if reserved is not None:
            return reserved
        key = labels_key(clean)
        ident, created = await self._run(lambda db: self._allocate_tx(db, clean, key, owner))
        if created or ident.id not in self._cache:
            self._note_created(ident)
        return ident

    async def release(self, labels_or_id: Mapping[str, str] | int, owner: str) -> bool:
        check_owner(owner)
        if isinstance(labels_or_id, int):
            if reserved_identity(labels_or_id) is not None:
                return False
            target: int | str = labels_or_id
        else:
            clean = check_labels(labels_or_id)
            if reserved_identity(clean) is not None:
                return False
            target = labels_key(clean)
        freed = await self._run(lambda db: self._release_tx(db, target, owner))
        if freed is None:
            return False
        self._note_freed(freed)
        return True

    async def get(self, identity_id: int) -> Identity | None:
        reserved = reserved_identity(identity_id)
        if reserved is not None:
            return reserved
        return await self._run(lambda db: self._load(db, identity_id))

    async def lookup(self, labels: Mapping[str, str]) -> Identity | None:
        clean = check_labels(labels)
        reserved = reserved_identity(clean)
        if reserved is not None:
            return reserved
        key = labels_key(clean)

        def tx(db: sqlite3.Connection) -> Identity | None:
            row = db.execute("SELECT id FROM identities WHERE labels_key = ?", (key,)).fetchone()
            return None if row is None else self._load(db, int(row[0]))
        return await self._run(tx)

    async def list(self) -> list[Identity]:
        def tx(db: sqlite3.Connection) -> list[Identity]:
            owners: dict[int, list[str]] = {}
            for n, o in db.execute("SELECT id, owner FROM identity_refs ORDER BY id, owner"):
                owners.setdefault(n, []).append(o)
            return [Identity(n, json.loads(lab), len(owners.get(n, ())), tuple(owners.get(n, ())))
                    for n, lab in db.execute("SELECT id, labels FROM identities ORDER BY id")]
        allocated = await self._run(tx)
        return [*sorted(RESERVED.values(), key=lambda i: i.id), *allocated]

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._hub.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._db.close)
        self._executor.shutdown(wait=True)
