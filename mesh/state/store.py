"""The agent's persistent state: one SQLite file in the state directory.

Tables: `objects` (every applied manifest and every endpoint record, as JSON, keyed by kind/namespace/name)
and `ipam` (address → owner). Multi-object changes happen in one transaction (`with store.transaction():`),
so an apply is all or nothing on disk too.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from typing import Any, Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    body TEXT NOT NULL, updated REAL NOT NULL DEFAULT (julianday('now')),
    PRIMARY KEY (kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS ipam (
    pool TEXT NOT NULL, ip TEXT NOT NULL, owner TEXT NOT NULL,
    PRIMARY KEY (pool, ip)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StateStore:
    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._depth = 0

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Nestable: only the outermost level commits or rolls back."""
        if self._depth == 0:
            self.db.execute("BEGIN IMMEDIATE")
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                self.db.execute("ROLLBACK")
            raise
        else:
            self._depth -= 1
            if self._depth == 0:
                self.db.execute("COMMIT")

    def put(self, kind: str, namespace: str, name: str, body: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO objects(kind, namespace, name, body) VALUES (?,?,?,?)",
                        (kind, namespace, name, json.dumps(body, sort_keys=True)))

    def get(self, kind: str, namespace: str, name: str) -> Any | None:
        row = self.db.execute("SELECT body FROM objects WHERE kind=? AND namespace=? AND name=?",
                              (kind, namespace, name)).fetchone()
        return json.loads(row[0]) if row else None

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        cur = self.db.execute("DELETE FROM objects WHERE kind=? AND namespace=? AND name=?", (kind, namespace, name))
        return cur.rowcount > 0

    def list(self, kind: str, namespace: str | None = None) -> list[tuple[str, str, Any]]:
        if namespace is None:
            rows = self.db.execute("SELECT namespace, name, body FROM objects WHERE kind=? ORDER BY namespace, name",
                                   (kind,))
        else:
            rows = self.db.execute("SELECT namespace, name, body FROM objects WHERE kind=? AND namespace=? "
                                   "ORDER BY name", (kind, namespace))
        return [(ns, n, json.loads(b)) for ns, n, b in rows.fetchall()]

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?,?)", (key, value))

    def close(self) -> None:
        self.db.close()
