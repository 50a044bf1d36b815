"""The translate module's real output (transparent listener, original_dst listener filter,
ORIGINAL_DST cluster, SO_MARK on upstream sockets) in Envoy, inside a network namespace the test
creates.

Without the BPF datapath (another component), the redirect here is an nft `redirect` in the
namespace's nat/output chain for 10.99.0.5:80 that skips packets carrying Envoy's upstream mark.
Envoy's original_dst filter recovers 10.99.0.5:80 (SO_ORIGINAL_DST), the filter chain for that
endpoint applies RBAC by the client's real source address, and the ORIGINAL_DST cluster forwards
to 10.99.0.5:80. If Envoy's upstream were not marked, it would be redirected into Envoy again and
arrive from a source without an allowed identity: a 403 instead of the backend's 200.

The scenario runs in a child process under `ip netns exec` (this file with --inner), so every
socket, Envoy and curl live in the namespace; the parent creates and always deletes it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BACKEND, CLIENT, STRANGER = "10.99.0.5", "10.99.0.7", "10.99.0.8"
MARK = 0x1000


@pytest.mark.root
@pytest.mark.timeout(90)
def test_transparent_listener_original_dst_and_upstream_mark(tmp_path):
    ns = f"ostx-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (["link", "set", "lo", "up"],
                    ["addr", "add", f"{BACKEND}/32", "dev", "lo"],
                    ["addr", "add", f"{CLIENT}/32", "dev", "lo"],
                    ["addr", "add", f"{STRANGER}/32", "dev", "lo"]):
            subprocess.run(["ip", "-n", ns, *cmd], check=True)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--inner",
                               str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=75)
        assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
        assert "ALL OK" in proc.stdout
    finally:
        # Anything our child left running in the namespace (only our processes live there).
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", ns], check=False)


# ---- the scenario, run inside the namespace -------------------------------------------------


async def _inner(state_dir: Path) -> None:
    import http.server
    import threading

    from xdsserver.cache import Snapshot
    from xdsserver.testing import (_Handler, curl, envoy_harness, free_port, wait_port_open)
    from xdsserver.translate import (Direction, HTTPRule, PeerRule, PortPolicy, ProxyOptions,
                                     TranslateInput, translate)

    proxy_port = free_port()
    nft = f"""
table ip ostium_test {{
  chain out {{
    type nat hook output priority -100; policy accept;
    meta mark & {MARK:#x} == {MARK:#x} accept
    ip daddr {BACKEND} tcp dport 80 redirect to :{proxy_port}
  }}
}}"""
    subprocess.run(["nft", "-f", "-"], input=nft, text=True, check=True)

    backend = http.server.ThreadingHTTPServer((BACKEND, 80), _Handler)
    backend.seen = []  # type: ignore[attr-defined]
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    try:
        async with envoy_harness(state_dir) as h:
            inp = TranslateInput(
                ports=(PortPolicy(BACKEND, Direction.INGRESS, 80, proxy_port,
                                  (PeerRule(frozenset({1000}), (HTTPRule(method="GET", path="/public.*"),)),)),),
                ipcache={1000: (CLIENT,)},
                options=ProxyOptions(upstream_mark=MARK))   # transparent, ORIGINAL_DST: the defaults
            snap = Snapshot.build(translate(inp).by_type())
            h.cache.set_snapshot(h.node_id, snap)
            nacked = await h.server.wait_applied(h.node_id, snap)
            assert nacked == [], nacked
            await wait_port_open(proxy_port)
            url = f"http://{BACKEND}/public/x"
            r = await curl(url, "--interface", CLIENT)
            assert (r.status, r.body) == (200, "backend GET /public/x\n"), r
            r = await curl(url, "--interface", CLIENT, "-X", "POST")
            assert (r.status, r.body.strip()) == (403, "Access denied"), r
            r = await curl(url, "--interface", STRANGER)
            assert r.status == 403, r
            assert backend.seen == [("GET", "/public/x")], backend.seen   # type: ignore[attr-defined]
            recs = await h.wait_records(lambda rs: len(rs) >= 3)
            ok = next(x for x in recs if x.response_code == 200)
            assert (ok.destination_ip, ok.destination_port) == (BACKEND, 80), ok
            assert ok.source_ip == CLIENT and ok.upstream_address == f"{BACKEND}:80", ok
            assert ok.upstream_cluster == "ostium-original-dst", ok
            print("ALL OK")
    finally:
        backend.shutdown()
        backend.server_close()
        subprocess.run(["nft", "delete", "table", "ip", "ostium_test"], check=False)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--inner":
    import asyncio

    asyncio.run(_inner(Path(sys.argv[2])))
