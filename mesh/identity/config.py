"""Identity configuration and the allocator factory.

Built from the agent's flat `mesh.config.Config` (`IdentityConfig.from_agent_config(cfg)`):

    identity_backend      sqlite (one node, default) | etcd (several nodes)
    state_dir             the SQLite file is <state_dir>/identities.db unless identity_sqlite_path
    etcd_endpoints        comma-separated client URLs (http://127.0.0.1:2379)
    identity_lease_ttl    seconds: a dead node's references vanish this long after its last keepalive
    label_include         comma-separated regexes on pod label keys; empty = all
    label_exclude         comma-separated regexes, added to DEFAULT_EXCLUDED_LABEL_PATTERNS
    -- read when present (not in Config yet; defaults otherwise):
    identity_sqlite_path, identity_min_id (256), identity_max_id (65535), etcd_prefix
    (ostium/identities), identity_gc_interval (60 s; 0 = only on demand),
    etcd_request_timeout (10 s: how long requests retry while etcd is unreachable)

Backends are imported only when opened, so the CLI never pays for aiohttp here.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mesh.errors import ConfigError, IdentityError
from mesh.identity.labels import (
    DEFAULT_EXCLUDED_LABEL_PATTERNS,
    MAX_ALLOCATED_IDENTITY,
    MIN_ALLOCATED_IDENTITY,
    LabelFilter,
)

if TYPE_CHECKING:
    from mesh.identity.allocator import IdentityAllocator

SQLITE_FILENAME = "identities.db"


class Backend(str, enum.Enum):
    SQLITE = "sqlite"
    ETCD = "etcd"


DEFAULT_ETCD_PREFIX = "ostium/identities"
DEFAULT_LEASE_TTL = 15
DEFAULT_GC_INTERVAL = 60.0
DEFAULT_REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class EtcdConfig:
    endpoints: tuple[str, ...] = ()
    prefix: str = DEFAULT_ETCD_PREFIX
    lease_ttl: int = DEFAULT_LEASE_TTL
    gc_interval: float = DEFAULT_GC_INTERVAL
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    backend: Backend = Backend.SQLITE
    min_id: int = MIN_ALLOCATED_IDENTITY
    max_id: int = MAX_ALLOCATED_IDENTITY
    sqlite_path: str | None = None
    etcd: EtcdConfig = field(default_factory=EtcdConfig)
    label_filter: LabelFilter = field(default_factory=LabelFilter)

    @classmethod
    def from_agent_config(cls, cfg: Any) -> "IdentityConfig":
        """From `mesh.config.Config` (or anything with those attributes); ConfigError names the field."""
        raw_backend = getattr(cfg, "identity_backend", Backend.SQLITE.value)
        try:
            backend = Backend(raw_backend)
        except ValueError:
            raise ConfigError(f"identity_backend: unknown backend {raw_backend!r}; use "
                              f"{' or '.join(b.value for b in Backend)}") from None
        min_id = _int(getattr(cfg, "identity_min_id", MIN_ALLOCATED_IDENTITY), "identity_min_id")
        max_id = _int(getattr(cfg, "identity_max_id", MAX_ALLOCATED_IDENTITY), "identity_max_id")
        if not MIN_ALLOCATED_IDENTITY <= min_id <= max_id <= MAX_ALLOCATED_IDENTITY:
            raise ConfigError(f"identity_min_id/identity_max_id: {min_id}..{max_id} must lie within "
                              f"{MIN_ALLOCATED_IDENTITY}..{MAX_ALLOCATED_IDENTITY} with min <= max")
        sqlite_path = getattr(cfg, "identity_sqlite_path", None) or None
        endpoints = _split(getattr(cfg, "etcd_endpoints", ""))
        for i, e in enumerate(endpoints):
            if not re.match(r"^https?://[^/\s]+/?$", e):
                raise ConfigError(f"etcd_endpoints: {e!r} (entry {i + 1}) is not an etcd client URL "
                                  "like http://127.0.0.1:2379")
        if backend is Backend.ETCD and not endpoints:
            raise ConfigError("etcd_endpoints: the etcd identity backend needs at least one endpoint "
                              "(e.g. http://127.0.0.1:2379)")
        prefix = str(getattr(cfg, "etcd_prefix", DEFAULT_ETCD_PREFIX)).strip("/")
        if not prefix:
            raise ConfigError("etcd_prefix: must not be empty")
        ttl = _int(getattr(cfg, "identity_lease_ttl", DEFAULT_LEASE_TTL), "identity_lease_ttl")
        if ttl < 1:
            raise ConfigError(f"identity_lease_ttl: must be at least 1 second, got {ttl}")
        etcd = EtcdConfig(tuple(endpoints), prefix, ttl,
                          _seconds(getattr(cfg, "identity_gc_interval", DEFAULT_GC_INTERVAL),
                                   "identity_gc_interval", 0),
                          _seconds(getattr(cfg, "etcd_request_timeout", DEFAULT_REQUEST_TIMEOUT),
                                   "etcd_request_timeout", 0.1))
        include = _regexes(getattr(cfg, "label_include", ""), "label_include")
        exclude = DEFAULT_EXCLUDED_LABEL_PATTERNS + _regexes(getattr(cfg, "label_exclude", ""), "label_exclude")
        return cls(backend, min_id, max_id, sqlite_path, etcd, LabelFilter(include=include, exclude=exclude))


def _split(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value or "").split(",") if v.strip()]


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name}: must be an integer, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: must be an integer, got {value!r}") from None


def _seconds(value: Any, name: str, minimum: float) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if isinstance(value, bool) or seconds < minimum:
        raise ConfigError(f"{name}: must be a number of seconds >= {minimum:g}, got {value!r}")
    return seconds


def _regexes(value: Any, name: str) -> tuple[str, ...]:
    patterns = _split(value)
    for p in patterns:
        try:
            re.compile(p)
        except re.error as exc:
            raise ConfigError(f"{name}: invalid regex {p!r}: {exc}") from None
    return tuple(patterns)


async def open_allocator(config: IdentityConfig, *, state_dir: str | Path, node: str) -> "IdentityAllocator":
    """The configured allocator, opened (connected, background tasks running). Close it when done."""
    from mesh.identity.allocator import IdRange
    try:
        id_range = IdRange(config.min_id, config.max_id)
    except IdentityError as exc:
        raise ConfigError(f"identity.range: {exc}") from None
    if config.backend is Backend.ETCD:
        from mesh.identity.etcd import EtcdAllocator
        e = config.etcd
        return await EtcdAllocator.open(list(e.endpoints), node, prefix=e.prefix, lease_ttl=e.lease_ttl,
                                        id_range=id_range, gc_interval=e.gc_interval,
                                        request_timeout=e.request_timeout)
    from mesh.identity.sqlite import SQLiteAllocator
    path = Path(config.sqlite_path) if config.sqlite_path else Path(state_dir) / SQLITE_FILENAME
    return await SQLiteAllocator.open(path, id_range)
