"""ClientIP session affinity: the timeout counts from the last use (kept while the client keeps connecting)
and, once a client has been idle for longer, its next connection is balanced afresh."""

from __future__ import annotations

import time

import pytest

from mesh.services.model import Backend, Frontend
from tests.datapath.conftest import client_and_backends

pytestmark = pytest.mark.root

VIP = "10.96.0.11"
BACKENDS = {"b1": "10.213.2.11", "b2": "10.213.2.12", "b3": "10.213.2.13"}
TIMEOUT_S = 3


@pytest.fixture
def three_backends(node, datapath):
    return client_and_backends(node, datapath, "10.213.2.2", BACKENDS)


def one(node) -> str:
    (rec,) = node.client("client", "tcp", VIP, 80, count=1)
    assert "error" not in rec, rec
    return rec["backend"]


def idle_until(deadline: float) -> None:
    # Not synchronisation: the behaviour under test is what happens after this much idle time.
    time.sleep(max(0.0, deadline - time.monotonic()))


def test_affinity_is_refreshed_by_use_and_expires_after_idle_timeout(three_backends, datapath):
    datapath.sync_services([Frontend(VIP, 80, "TCP", tuple(Backend(ip, 8080) for ip in BACKENDS.values()),
                                     TIMEOUT_S, "default/sticky")])
    first = one(three_backends)
    # Connections every 0.5 s for longer than the timeout: each use refreshes it, all stay put.
    for _ in range(7):
        last = time.monotonic()
        idle_until(last + 0.5)
        assert one(three_backends) == first
    # Idle for longer than the timeout: the next connection is balanced afresh. A fresh pick may land on
    # the same backend (1 in 3); after 10 idle periods the chance that every pick did is 1 in 59,049.
    moved = False
    for _ in range(10):
        idle_until(time.monotonic() + TIMEOUT_S + 0.3)
        if one(three_backends) != first:
            moved = True
            break
    assert moved, "affinity never expired after idle periods longer than its timeout"


def test_affinity_never_leads_to_a_backend_the_service_no_longer_balances_to(three_backends, datapath):
    def svc(weights: dict[str, int]) -> Frontend:
        return Frontend(VIP, 80, "TCP", tuple(Backend(BACKENDS[k], 8080, w) for k, w in weights.items()), 60,
                        "default/sticky")

    datapath.sync_services([svc({"b1": 1, "b2": 1, "b3": 1})])
    first = one(three_backends)
    # Drained (weight 0): the backend stays known but gets no new connections, affine clients included.
    datapath.sync_services([svc({k: 0 if k == first else 1 for k in BACKENDS})])
    moved = {one(three_backends) for _ in range(5)}
    assert first not in moved and len(moved) == 1, moved
