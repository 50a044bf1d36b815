"""Map codecs against the compiled objects' BTF, and round trips."""

from __future__ import annotations

import re
import subprocess

import pytest

from bpf import build as bpf_build
from bpf import maps
from tests.conftest import require_binary

C_STRUCTS = {
    "lb4_key": maps.Lb4Key, "lb4_service": maps.Lb4Service, "lb4_backend": maps.Lb4Backend,
    "lb4_affinity_key": maps.AffinityKey, "lb4_affinity_val": maps.AffinityValue,
    "lb4_revnat_key": maps.RevNatKey, "lb4_revnat_val": maps.RevNatValue,
    "ipcache_key": maps.IpcacheKey, "ipcache_val": maps.IpcacheValue,
    "endpoint_info": maps.EndpointInfo, "policy_key": maps.PolicyMapKey,
    "policy_entry": maps.PolicyMapEntry, "ct_key": maps.CtKey, "ct_entry": maps.CtEntry,
    "trace_event": maps.Event,
}


@pytest.fixture(scope="module")
def btf_sizes(tmp_path_factory) -> dict[str, int]:
    require_binary("clang")
    bpftool = require_binary("bpftool")
    objs = bpf_build.build(tmp_path_factory.mktemp("bpf"))
    sizes: dict[str, int] = {}
    for path in objs.values():
        out = subprocess.run([bpftool, "btf", "dump", "file", str(path), "format", "raw"],
                             capture_output=True, text=True, check=True).stdout
        for name, size in re.findall(r"STRUCT '(\w+)' size=(\d+)", out):
            sizes[name] = int(size)
    return sizes


@pytest.mark.parametrize("c_name", sorted(C_STRUCTS))
def test_codec_size_matches_the_c_struct(btf_sizes, c_name):
    assert c_name in btf_sizes, f"struct {c_name} not in the objects' BTF"
    assert C_STRUCTS[c_name].size() == btf_sizes[c_name]


def test_every_map_with_a_codec_is_declared_in_the_objects(tmp_path_factory):
    require_binary("clang")
    bpftool = require_binary("bpftool")
    objs = bpf_build.build(tmp_path_factory.mktemp("bpf-maps"))
    out = subprocess.run([bpftool, "btf", "dump", "file", str(objs["lxc"]), "format", "raw"],
                         capture_output=True, text=True, check=True).stdout
    declared = set(re.findall(r"VAR '(ost_\w+)'", out))
    assert set(maps.LAYOUTS) <= declared, set(maps.LAYOUTS) - declared


def test_build_is_cached_by_content(tmp_path):
    require_binary("clang")
    first = bpf_build.build(tmp_path)
    mtimes = {n: p.stat().st_mtime_ns for n, p in first.items()}
    again = bpf_build.build(tmp_path)
    assert again == first and {n: p.stat().st_mtime_ns for n, p in again.items()} == mtimes


def test_missing_clang_is_a_clear_error(tmp_path, monkeypatch):
    from mesh.errors import DatapathError
    monkeypatch.setenv("OSTIUM_CLANG", "")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(bpf_build, "source_hash", lambda name: "nohash-" + name)
    with pytest.raises(DatapathError, match="clang is not installed.*datapath"):
        bpf_build.build(tmp_path)


@pytest.mark.parametrize("obj", [
    maps.Lb4Key("10.96.0.1", 80, 6, 3), maps.Lb4Service(7, 3, 1, 9, 60), maps.Lb4Backend("10.0.0.2", 8080, 17),
    maps.RevNatKey(123456789, "10.0.0.2", 8080), maps.RevNatValue("10.96.0.1", 80, 4),
    maps.IpcacheKey(24, "10.1.2.0"), maps.EndpointInfo(5, 1001, "10.0.0.5", 3, 1, 2, 4, 8),
    maps.PolicyMapKey(5, 1, 1001, 6, 8080, 88), maps.PolicyMapEntry(3, 88, 15001, 12),
    maps.CtKey("10.0.0.1", "10.0.0.2", 40000, 80, 6, 1, 5), maps.CtEntry(10**12, 5, 1001, 0, 2),
    maps.AffinityKey(99, 3), maps.AffinityValue(10**9, 7),
])
def test_codec_round_trip(obj):
    assert type(obj).unpack(obj.pack()) == obj


def test_port_is_network_order_in_keys():
    raw = maps.Lb4Key("10.96.0.1", 0x1F90, 6).pack()
    assert raw[4:6] == b"\x1f\x90" and raw[:4] == bytes([10, 96, 0, 1])


def test_policy_key_port_range():
    assert maps.PolicyMapKey(1, 0, 0, 6, 8080, 72 + 15).port_range == (8080, 8081)
    assert maps.PolicyMapKey(1, 0, 0, 6, 0, 72).port_range == (0, 65535)


def test_event_decodes_to_a_json_record():
    ev = maps.Event(1, maps.EventType.DROP, maps.Reason.POLICY_DENY, maps.Direction.INGRESS, 6, 2, 0,
                    1003, 1002, "10.0.0.3", "10.0.0.2", 40000, 8080, 7, maps.Verdict.DROPPED, 0x02, 60)
    assert maps.Event.size() == 48
    back = maps.Event.unpack(ev.pack())
    assert back == ev
    rec = back.to_json()
    assert rec["verdict"] == "DROPPED" and rec["reason"] == "POLICY_DENY" and rec["tcp_flags"] == ["SYN"]
    assert rec["src"] == {"ip": "10.0.0.3", "port": 40000, "identity": 1003}
