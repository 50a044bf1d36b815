"""`ostium bpf` against pinned maps, the event hub and the monitor's text format."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from bpf.maps import Direction, Event, EventType, Reason, Verdict
from mesh.cli.monitor import format_event
from mesh.datapath.events import EventHub, event_record
from mesh.services.model import Backend, Frontend

ROOT = __file__.rsplit("/tests/", 1)[0]


def ostium(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mesh.cli.main", *argv], capture_output=True, text=True,
                          cwd=ROOT, timeout=30)


@pytest.mark.root
def test_bpf_cli_reads_pinned_maps_without_an_agent(datapath):
    datapath.sync_services([Frontend("10.96.0.5", 443, "TCP", (Backend("10.213.9.9", 8443),), 0, "d/s")])
    out = ostium("bpf", "maps", "--pin-dir", datapath.config.pin_dir, "-o", "json")
    assert out.returncode == 0, out.stderr
    maps = {m["name"]: m for m in json.loads(out.stdout)}
    assert maps["ost_lb4_svc"]["entries"] == 2 and maps["ost_lb4_backend"]["entries"] == 1
    assert maps["ost_lb4_svc"]["max_entries"] == 65536
    dump = ostium("bpf", "map", "dump", "ost_lb4_backend", "--pin-dir", datapath.config.pin_dir)
    assert dump.returncode == 0 and "address=10.213.9.9" in dump.stdout and "port=8443" in dump.stdout
    bad = ostium("bpf", "map", "dump", "nope", "--pin-dir", datapath.config.pin_dir)
    assert bad.returncode == 3 and "no map named 'nope'" in bad.stderr


def sample(reason=Reason.POLICY_DENY, ep=2) -> Event:
    return Event(0, EventType.DROP if reason != Reason.NEW_FLOW else EventType.TRACE, reason, Direction.INGRESS,
                 6, ep, 0, 1003, 1002, "10.0.0.3", "10.0.0.2", 40000, 8080, 7,
                 Verdict.DROPPED if reason != Reason.NEW_FLOW else Verdict.FORWARDED, 0x02, 60)


def test_monitor_text_names_reason_addresses_and_identities_with_labels():
    rec = event_record(sample(), {1003: {"k8s:app": "c"}, 1002: {"k8s:app": "b"}}.get)
    line = format_event(rec)
    assert "DROP (Policy denied (deny rule)) ep 2 ingress: 10.0.0.3:40000 -> 10.0.0.2:8080 TCP SYN" in line
    assert "identity 1003 (k8s:app=c) -> 1002 (k8s:app=b)" in line


async def test_event_hub_fans_out_and_filters():
    events = [sample(Reason.NEW_FLOW, 1), sample(Reason.POLICY_DENY, 2), sample(Reason.POLICY_DENY, 1)]
    gate = asyncio.Event()

    async def gen():
        await gate.wait()
        for e in events:
            yield e

    hub = EventHub(SimpleNamespace(events=gen))
    all_sub = hub.subscribe()
    drops_ep1 = hub.subscribe({"drop"}, 1)
    first = asyncio.ensure_future(all_sub.__anext__())
    only = asyncio.ensure_future(drops_ep1.__anext__())
    await asyncio.sleep(0)   # let both subscriptions register before events flow
    runner = asyncio.ensure_future(hub.run())
    gate.set()
    a = await asyncio.wait_for(first, 2)
    b = await asyncio.wait_for(only, 2)
    assert a["type"] == "trace" and a["endpoint"] == 1
    assert b["type"] == "drop" and b["endpoint"] == 1
    runner.cancel()
    await all_sub.aclose()
    await drops_ep1.aclose()
