"""A client cannot choose the source its requests are logged (and turned into flows) with."""

from __future__ import annotations

import pytest

from tests.e2e.test_xds_l7_policy import policy
from xdsserver.testing import curl, envoy_harness, free_port, http_backend, wait_port_open

pytestmark = pytest.mark.timeout(60)


async def test_x_forwarded_for_does_not_change_the_logged_source_or_the_rbac_peer(tmp_path):
    port = free_port()
    with http_backend() as backend:
        async with envoy_harness(tmp_path) as h:
            snap = policy(port, backend.server_address[1])
            h.cache.set_snapshot(h.node_id, snap)
            assert await h.server.wait_applied(h.node_id, snap) == []
            await wait_port_open(port)
            # 127.0.0.2 is not an allowed peer; claiming to be the allowed 127.0.0.1 must not help.
            r = await curl(f"http://127.0.0.1:{port}/public", "--interface", "127.0.0.2",
                           "-H", "X-Forwarded-For: 127.0.0.1")
            assert r.status == 403
            r = await curl(f"http://127.0.0.1:{port}/public", "-H", "X-Forwarded-For: 10.9.9.9")
            assert r.status == 200
            recs = await h.wait_records(lambda rs: len(rs) >= 2)
            assert [x.source_ip for x in recs[:2]] == ["127.0.0.2", "127.0.0.1"]
