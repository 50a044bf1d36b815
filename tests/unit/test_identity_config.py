"""Identity configuration from the agent's Config, and the allocator factory."""

from __future__ import annotations

import types

import pytest

from mesh.config import Config
from mesh.errors import ConfigError
from mesh.identity.config import Backend, IdentityConfig, open_allocator
from mesh.identity.sqlite import SQLiteAllocator


def cfg(**overrides):
    base = {f: getattr(Config(), f) for f in ("identity_backend", "etcd_endpoints", "identity_lease_ttl",
                                              "label_include", "label_exclude")}
    return types.SimpleNamespace(**{**base, **overrides})


def test_defaults_are_sqlite_and_the_full_range():
    c = IdentityConfig.from_agent_config(Config())
    assert c.backend is Backend.SQLITE and (c.min_id, c.max_id) == (256, 65535)
    assert c.label_filter.keeps("app") and not c.label_filter.keeps("pod-template-hash")


def test_agent_fields_are_read():
    c = IdentityConfig.from_agent_config(cfg(
        identity_backend="etcd", etcd_endpoints="http://127.0.0.1:2379, http://127.0.0.1:2380",
        identity_lease_ttl=7, label_include="^app$,^tier$", label_exclude="^tier$",
        identity_min_id=1000, identity_max_id=2000, identity_gc_interval=0))
    assert c.etcd.endpoints == ("http://127.0.0.1:2379", "http://127.0.0.1:2380")
    assert c.etcd.lease_ttl == 7 and c.etcd.gc_interval == 0
    assert (c.min_id, c.max_id) == (1000, 2000)
    assert c.label_filter.keeps("app") and not c.label_filter.keeps("tier") and not c.label_filter.keeps("x")


@pytest.mark.parametrize("overrides,message", [
    ({"identity_backend": "consul"}, "identity_backend: unknown backend 'consul'; use sqlite or etcd"),
    ({"identity_backend": "etcd", "etcd_endpoints": ""}, "etcd_endpoints: the etcd identity backend needs"),
    ({"etcd_endpoints": "127.0.0.1:2379"}, "etcd_endpoints: '127.0.0.1:2379' (entry 1) is not an etcd client URL"),
    ({"identity_lease_ttl": 0}, "identity_lease_ttl: must be at least 1 second"),
    ({"identity_min_id": 10}, "identity_min_id/identity_max_id: 10..65535 must lie within 256..65535"),
    ({"label_include": "app("}, "label_include: invalid regex 'app('"),
    ({"identity_gc_interval": "soon"}, "identity_gc_interval: must be a number of seconds"),
])
def test_bad_settings_name_the_field(overrides, message):
    with pytest.raises(ConfigError) as exc:
        IdentityConfig.from_agent_config(cfg(**overrides))
    assert message in str(exc.value)


async def test_factory_opens_sqlite_under_the_state_dir(tmp_path):
    alloc = await open_allocator(IdentityConfig(), state_dir=tmp_path, node="n1")
    try:
        assert isinstance(alloc, SQLiteAllocator)
        assert alloc.path == tmp_path / "identities.db"
    finally:
        await alloc.close()
