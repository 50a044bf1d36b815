"""Bad input and missing pieces: clear errors and nothing half-written."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from bpf.loader import MapFullError
from mesh.datapath import Datapath, DatapathConfig
from mesh.errors import ConflictError, DatapathError
from mesh.services.model import Backend, Frontend
from tests.datapath.conftest import BUILD_DIR

pytestmark = pytest.mark.root


def fe(i: int, n_backends: int = 2) -> Frontend:
    return Frontend(f"10.96.{i // 250}.{i % 250 + 1}", 80, "TCP",
                    tuple(Backend(f"10.1.{i // 250}.{i % 250 + 1}", 8080 + b) for b in range(n_backends)),
                    0, f"default/s{i}")


@pytest.fixture
def small_datapath(node, pin_dir):
    dp = Datapath(DatapathConfig(cgroup_root=node.plumbing.cgroup_root, pin_dir=pin_dir, build_dir=BUILD_DIR,
                                 map_sizes={"ost_lb4_svc": 30, "ost_lb4_backend": 64}))
    try:
        dp.start()
        yield dp
    finally:
        dp.purge()


def test_map_full_is_reported_and_nothing_is_written(small_datapath):
    dp = small_datapath
    dp.sync_services([fe(i) for i in range(5)])          # 15 entries
    before = dp.dump_map("ost_lb4_svc")
    with pytest.raises(MapFullError, match=r"ost_lb4_svc is full \(30 entries\).*nothing"):
        dp.sync_services([fe(i) for i in range(12)])     # 36 entries
    assert dp.dump_map("ost_lb4_svc") == before
    info = {m["name"]: m for m in dp.maps_info()}
    assert info["ost_lb4_svc"]["map_full_errors"] == 1 and info["ost_lb4_svc"]["entries"] == 15
    assert info["ost_lb4_svc"]["max_entries"] == 30


def test_conflicting_frontends_change_nothing(small_datapath):
    dp = small_datapath
    dp.sync_services([fe(1)])
    before = dp.dump_map("ost_lb4_svc")
    clash = Frontend(fe(1).vip, 80, "TCP", (), 0, "other/clash")
    with pytest.raises(ConflictError, match="other/clash"):
        dp.sync_services([fe(1), clash])
    assert dp.dump_map("ost_lb4_svc") == before


def test_missing_cgroup_names_what_is_disabled(pin_dir):
    dp = Datapath(DatapathConfig(cgroup_root="/nonexistent/ostium", pin_dir=pin_dir, build_dir=BUILD_DIR))
    try:
        with pytest.raises(DatapathError, match="socket load balancing"):
            dp.start()
    finally:
        dp.purge()


def test_ten_thousand_services_load_fast(datapath):
    frontends = [fe(i, 3) for i in range(10_000)]
    t0 = time.perf_counter()
    stats = datapath.sync_services(frontends)
    elapsed = time.perf_counter() - t0
    assert stats["service_entries"] == 40_000 and stats["backends"] == 30_000
    # Target: the kernel write (batched) under 50 ms; bench_socklb.py measures it. Python's
    # planning of 70,000 entries is extra; both bounds are generous for loaded CI machines.
    assert stats["write_ms"] < 500, stats   # per-element writes would take seconds
    assert elapsed < 3, elapsed
    assert len(datapath.dump_map("ost_lb4_svc")) == 40_000
    again = datapath.sync_services(frontends)
    assert again["written"] == 0 and again["changed"] == 0
    # One service changes among 10,000: only its entries are planned and written.
    frontends[5000] = fe(5000, 2)
    one = datapath.sync_services(frontends)
    assert (one["changed"], one["written"], one["deleted"]) == (1, 1, 2), one   # master; slot 3 + backend
    assert one["plan_ms"] + one["write_ms"] < stats["plan_ms"] + stats["write_ms"]


def test_a_pinned_map_of_another_layout_is_replaced_on_start(node, pin_dir):
    """An upgrade that changes a map's layout (or its configured size) must not wedge start()."""
    cfg = DatapathConfig(cgroup_root=node.plumbing.cgroup_root, pin_dir=pin_dir, build_dir=BUILD_DIR)
    dp = Datapath(cfg)
    try:
        dp.start()
        dp.close()
        path = f"{pin_dir}/maps/ost_policy"
        os.unlink(path)
        # A map of the same name with another key size, as an older version would have left it.
        subprocess.run(["bpftool", "map", "create", path, "type", "hash", "key", "8", "value", "16",
                        "entries", "16", "name", "ost_policy"], check=True)
        dp = Datapath(cfg)
        dp.start()
        info = {m["name"]: m for m in dp.maps_info()}
        assert info["ost_policy"]["key_size"] == 12 and info["ost_policy"]["max_entries"] == 65536
    finally:
        dp.purge()
