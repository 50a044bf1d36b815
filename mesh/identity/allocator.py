"""The identity allocator: security labels → a numeric identity, the same on every node.

An allocator hands out numbers in [min_id, max_id] (256..65535 by default) for label sets. Each
(label set, owner) pair is one reference; allocating again with the same owner is a no-op, releasing
the last reference frees the identity and its number can be handed out again later. Reserved
identities (host=1, world=2, ...) are always present, are never stored and never freed.

Backends: `SQLiteAllocator` (mesh/identity/sqlite.py, one node, the default) and `EtcdAllocator`
(mesh/identity/etcd.py, several nodes sharing one etcd). `open_allocator(config, ...)` picks one.

Changes are seen through `watch()`: an async iterator that first yields every known identity
(reserved included) as UPSERT, then one SYNCED event, then every change as it happens, including
identities other nodes allocate. The policy engine consumes that.
"""

from __future__ import annotations

import abc
import asyncio
import enum
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Mapping

from mesh.errors import IdentityError
from mesh.identity.labels import (
    MAX_ALLOCATED_IDENTITY,
    MIN_ALLOCATED_IDENTITY,
    RESERVED_IDENTITIES,
    labels_key,
    reserved_labels,
)

WORLD_ID = RESERVED_IDENTITIES["world"]


@dataclass(frozen=True, slots=True, eq=True)
class Identity:
    """A numeric identity and the security labels it stands for.

    `references` counts (owner) references over all nodes; `owners` names them (for the etcd
    backend as ``node/owner``). Identities in watch events carry id and labels only
    (references 0): reference counts are not streamed.
    """

    id: int
    labels: dict[str, str]
    references: int = 0
    owners: tuple[str, ...] = ()

    @property
    def reserved(self) -> bool:
        return self.id < MIN_ALLOCATED_IDENTITY

    @property
    def key(self) -> str:
        return labels_key(self.labels)

    def __hash__(self) -> int:  # labels is a dict: hash by the canonical key instead
        return hash((self.id, labels_key(self.labels)))

    def to_api(self) -> dict:
        """The agent API's shape: ``{"id", "labels", "references"}`` (+ "reserved", "owners")."""
        return {"id": self.id, "labels": dict(self.labels), "references": self.references,
                "reserved": self.reserved, "owners": list(self.owners)}


class EventKind(enum.Enum):
    UPSERT = "upsert"
    DELETE = "delete"
    SYNCED = "synced"  # the initial snapshot is complete


@dataclass(frozen=True, slots=True)
class IdentityEvent:
    kind: EventKind
    identity: Identity | None = None


RESERVED: dict[int, Identity] = {
    num: Identity(num, reserved_labels(name)) for name, num in RESERVED_IDENTITIES.items()
}
_RESERVED_BY_KEY: dict[str, Identity] = {labels_key(i.labels): i for i in RESERVED.values()}


def reserved_identity(labels_or_id: Mapping[str, str] | int) -> Identity | None:
    """The reserved identity for an id or for its exact label set (``{"reserved:host": ""}``)."""
    if isinstance(labels_or_id, int):
        return RESERVED.get(labels_or_id)
    return _RESERVED_BY_KEY.get(labels_key(labels_or_id))


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Validate a label set for allocation; return a sorted plain dict.

    The canonical key joins ``k=v`` with ``;``, so keys must not contain ``=`` or ``;`` and values
    not ``;`` (Kubernetes labels never do); otherwise two different sets could share a key.
    """
    if not isinstance(labels, Mapping):
        raise IdentityError(f"labels must be a mapping of strings, got {type(labels).__name__}")
    if not labels:
        raise IdentityError("cannot allocate an identity for an empty label set")
    out: dict[str, str] = {}
    for k, v in labels.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise IdentityError(f"label {k!r}={v!r}: keys and values must be strings")
        if not k or "=" in k or ";" in k:
            raise IdentityError(f"label key {k!r} is empty or contains '=' or ';'")
        if ";" in v:
            raise IdentityError(f"label {k}={v!r}: value contains ';'")
        out[k] = v
    if any(key.startswith("reserved:") for key in out) and reserved_identity(out) is None:
        raise IdentityError(f"labels {labels_key(out)!r}: 'reserved:' labels name reserved identities "
                            "only; they cannot be allocated")
    return dict(sorted(out.items()))


def check_owner(owner: str) -> str:
    if not isinstance(owner, str) or not owner or "/" in owner:
        raise IdentityError(f"owner {owner!r} must be a non-empty string without '/'")
    return owner


@dataclass(frozen=True, slots=True)
class IdRange:
    """The numbers an allocator may hand out (inclusive)."""

    min_id: int = MIN_ALLOCATED_IDENTITY
    max_id: int = MAX_ALLOCATED_IDENTITY

    def __post_init__(self) -> None:
        if not (MIN_ALLOCATED_IDENTITY <= self.min_id <= self.max_id <= MAX_ALLOCATED_IDENTITY):
            raise IdentityError(
                f"identity range {self.min_id}..{self.max_id} must lie within "
                f"{MIN_ALLOCATED_IDENTITY}..{MAX_ALLOCATED_IDENTITY} with min <= max")

    def __contains__(self, n: object) -> bool:
        return isinstance(n, int) and self.min_id <= n <= self.max_id

    @property
    def size(self) -> int:
        return self.max_id - self.min_id + 1

    def exhausted(self) -> IdentityError:
        return IdentityError(
            f"identity space exhausted: all {self.size} identities {self.min_id}..{self.max_id} are "
            "in use; release unused identities or widen the identity range")


class IdentityAllocator(abc.ABC):
    """What every backend provides. All methods are coroutines; `close()` must be awaited."""

    id_range: IdRange

    @abc.abstractmethod
    async def allocate(self, labels: Mapping[str, str], owner: str) -> Identity:
        """The identity for `labels`, with a reference held by `owner` (idempotent per owner).

        Reserved label sets (``{"reserved:host": ""}``) return the reserved identity and take no
        reference. Raises IdentityError when the range is exhausted or the store fails.
        """

    @abc.abstractmethod
    async def release(self, labels_or_id: Mapping[str, str] | int, owner: str) -> bool:
        """Drop `owner`'s reference. True when that was the last one and the identity is freed.

        Releasing a reference that is not held (or a reserved identity) is a no-op returning False,
        so cleanup paths may run twice.
        """

    @abc.abstractmethod
    async def get(self, identity_id: int) -> Identity | None: ...

    @abc.abstractmethod
    async def lookup(self, labels: Mapping[str, str]) -> Identity | None: ...

    @abc.abstractmethod
    async def list(self) -> list[Identity]:
        """Every identity, reserved first, sorted by id, with reference counts."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    def watch(self) -> AsyncIterator[IdentityEvent]:
        """Snapshot (UPSERT per identity, reserved included), SYNCED, then live changes."""
        return self._hub.subscribe(self._snapshot)

    # Backends provide these two for watch().
    _hub: "EventHub"

    @abc.abstractmethod
    def _snapshot(self) -> list[Identity]:
        """The identities known right now (synchronous: taken atomically with subscribing)."""

    async def __aenter__(self) -> "IdentityAllocator":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


_CLOSED = object()


@dataclass
class EventHub:
    """Fans identity events out to watchers, one unbounded queue each.

    A watcher that stops iterating is unsubscribed when its generator is closed.
    """

    _queues: set[asyncio.Queue] = field(default_factory=set)

    def publish(self, event: IdentityEvent) -> None:
        for q in self._queues:
            q.put_nowait(event)

    def close(self) -> None:
        for q in self._queues:
            q.put_nowait(_CLOSED)

    async def subscribe(self, snapshot: Callable[[], list[Identity]]) -> AsyncIterator[IdentityEvent]:
        # Snapshot and subscription happen in the same step of the event loop (no await between),
        # so no change falls between them.
        q: asyncio.Queue = asyncio.Queue()
        self._queues.add(q)
        current = snapshot()
        try:
            for ident in sorted(current, key=lambda i: i.id):
                yield IdentityEvent(EventKind.UPSERT, ident)
            yield IdentityEvent(EventKind.SYNCED)
            while True:
                item = await q.get()
                if item is _CLOSED:
                    return
                yield item
        finally:
            self._queues.discard(q)
