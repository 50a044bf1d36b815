"""Versioned snapshot cache, one snapshot per Envoy node id (go-control-plane's SnapshotCache shape).

A snapshot is the complete desired state of one node: resources per type URL, each with its own
content-hash version. The server computes every response from the node's *current* snapshot, so an
Envoy that (re)connects gets the current state, and a stream that lags simply catches up. Nothing
here knows about gRPC or policy.

All methods are meant to be called from the event loop that runs the xDS server.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any as AnyT, Iterable, Mapping

from mesh.errors import ValidationError
from xdsserver import resources as res

if TYPE_CHECKING:  # pragma: no cover
    from google.protobuf.any_pb2 import Any
    from google.protobuf.message import Message


@dataclass(frozen=True, slots=True)
class VersionedResource:
    """One resource as served: its name, content version and the packed message."""

    name: str
    version: str
    resource: "Any"


class Snapshot:
    """Immutable set of resources per type URL. Build it with `Snapshot.build(...)`."""

    __slots__ = ("_by_type", "_type_versions", "version")

    def __init__(self, by_type: Mapping[str, Mapping[str, VersionedResource]],
                 version: str | None = None) -> None:
        self._by_type: dict[str, dict[str, VersionedResource]] = {
            t: dict(rs) for t, rs in by_type.items()}
        self._type_versions = {t: _digest(rs) for t, rs in self._by_type.items()}
        # The snapshot version is what Envoy shows as system_version_info / version_info.
        self.version = version or _digest({t: VersionedResource(t, v, None)  # type: ignore[arg-type]
                                           for t, v in self._type_versions.items()})

    @classmethod
    def build(cls, resources: Mapping[str, Iterable["Message | Any | Mapping[str, AnyT]"]],
              version: str | None = None, memo: "PackMemo | None" = None) -> "Snapshot":
        """Resources per type URL, each a typed message, a packed Any or a proto3-JSON dict.

        Duplicate names within a type are rejected: Envoy would silently keep one of them.
        With a `memo`, dict resources identical to ones of the previous build are not converted
        again (a policy change usually touches a few routes out of many).
        """
        by_type: dict[str, dict[str, VersionedResource]] = {}
        for type_url, items in resources.items():
            type_url = str(type_url)
            named: dict[str, VersionedResource] = {}
            for i, item in enumerate(items):
                key = None
                if memo is not None and isinstance(item, dict):
                    key = (type_url, json.dumps(item, separators=(",", ":")))
                    hit = memo.get(key)
                    if hit is not None:
                        if hit.name in named:
                            raise ValidationError(f"duplicate resource name {hit.name!r}",
                                                  path=f"{res.full_type_name(type_url)}[{i}]")
                        named[hit.name] = hit
                        continue
                packed = res.to_any(item, type_url)
                if packed.type_url != type_url:
                    raise ValidationError(
                        f"resource of type {packed.type_url} listed under {type_url}",
                        path=f"{res.full_type_name(type_url)}[{i}]")
                name = res.resource_name(packed)
                if not name:
                    raise ValidationError("resource has no name",
                                          path=f"{res.full_type_name(type_url)}[{i}]")
                if name in named:
                    raise ValidationError(f"duplicate resource name {name!r}",
                                          path=f"{res.full_type_name(type_url)}[{i}]")
                named[name] = VersionedResource(name, res.resource_version(packed), packed)
                if key is not None:
                    memo.put(key, named[name])
            by_type[type_url] = named
        if memo is not None:
            memo.rotate()
        return cls(by_type, version)

    def resources(self, type_url: str) -> Mapping[str, VersionedResource]:
        return self._by_type.get(type_url, {})

    def type_version(self, type_url: str) -> str:
        """Version of one type's whole set (State-of-the-World version_info)."""
        return self._type_versions.get(type_url, "empty")

    def type_urls(self) -> list[str]:
        return list(self._by_type)

    def __repr__(self) -> str:
        counts = ", ".join(f"{res.full_type_name(t).rsplit('.', 1)[-1]}={len(r)}"
                           for t, r in self._by_type.items())
        return f"Snapshot(version={self.version}, {counts})"


class PackMemo:
    """(type URL, JSON text) → packed resource, across Snapshot.build calls of one owner.

    Bounded: it keeps what the previous build and the current one used, nothing older.
    """

    __slots__ = ("_prev", "_cur")

    def __init__(self) -> None:
        self._prev: dict[tuple[str, str], VersionedResource] = {}
        self._cur: dict[tuple[str, str], VersionedResource] = {}

    def get(self, key: tuple[str, str]) -> VersionedResource | None:
        hit = self._cur.get(key) or self._prev.get(key)
        if hit is not None:
            self._cur[key] = hit
        return hit

    def put(self, key: tuple[str, str], value: VersionedResource) -> None:
        self._cur[key] = value

    def rotate(self) -> None:
        self._prev, self._cur = self._cur, {}

    def __len__(self) -> int:
        return len(self._prev) + len(self._cur)


def _digest(items: Mapping[str, VersionedResource]) -> str:
    h = hashlib.sha256()
    for name in sorted(items):
        h.update(name.encode() + b"\0" + items[name].version.encode() + b"\0")
    return h.hexdigest()[:16]


@dataclass(slots=True)
class _Slot:
    snapshot: Snapshot | None = None
    generation: int = 0
    set_at: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class SnapshotCache:
    """Current snapshot per node id, with change notification for the streams serving that node."""

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}

    def _slot(self, node_id: str) -> _Slot:
        slot = self._slots.get(node_id)
        if slot is None:
            slot = self._slots[node_id] = _Slot()
        return slot

    def set_snapshot(self, node_id: str, snapshot: Snapshot) -> None:
        """Replace the node's snapshot and wake every stream serving it."""
        if not node_id:
            raise ValidationError("node id must not be empty", path="node.id")
        slot = self._slot(node_id)
        slot.snapshot = snapshot
        slot.generation += 1
        slot.set_at = time.monotonic()
        woken, slot.changed = slot.changed, asyncio.Event()
        woken.set()

    def clear_snapshot(self, node_id: str) -> None:
        """Forget the node; connected streams keep what they have until a new snapshot is set."""
        self._slots.pop(node_id, None)

    def get_snapshot(self, node_id: str) -> Snapshot | None:
        slot = self._slots.get(node_id)
        return slot.snapshot if slot else None

    def generation(self, node_id: str) -> int:
        slot = self._slots.get(node_id)
        return slot.generation if slot else 0

    def set_time(self, node_id: str) -> float:
        """monotonic() time of the last set_snapshot for the node (0 if never)."""
        slot = self._slots.get(node_id)
        return slot.set_at if slot else 0.0

    def node_ids(self) -> list[str]:
        return sorted(n for n, s in self._slots.items() if s.snapshot is not None)

    def changed_event(self, node_id: str) -> asyncio.Event:
        """An event set at the next set_snapshot for the node (take it, then read the snapshot)."""
        return self._slot(node_id).changed

    async def wait_for_change(self, node_id: str, since_generation: int,
                              timeout: float | None = None) -> int:
        """Wait until the node's generation passes `since_generation`; return the new generation."""
        slot = self._slot(node_id)
        while slot.generation <= since_generation:
            await asyncio.wait_for(slot.changed.wait(), timeout)
            slot = self._slot(node_id)
        return slot.generation
