"""A follower that stops reading never slows ingest: the agent drops flows for that client only,
counts them, and tells the client in-band ({"lost_events": N}) when it reads again. A client that
disconnects is forgotten."""

from __future__ import annotations

import json
import socket
import time

import pytest

from mesh.api.server import make_app
from mesh.flows import synthetic
from mesh.flows.api import routes
from mesh.flows.observer import Observer

BATCH = 30_000


@pytest.fixture
def agent(tmp_path):
    obs = Observer(capacity=10_000, enricher=synthetic.enricher(), subscriber_queue=200)
    server = synthetic.ThreadedApp(make_app(routes(obs)), unix_path=str(tmp_path / "ostium.sock"))
    server.start()
    try:
        yield server, obs
    finally:
        server.stop()


def ingest_batch(obs: Observer, raws: list[bytes]) -> float:
    """CPU seconds to ingest the batch (runs on the server's loop thread)."""
    t0 = time.thread_time()
    for r in raws:
        obs.ingest_datapath_raw(r)
    return time.thread_time() - t0


def follow_without_reading(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(path)
    s.sendall(b"GET /v1/flows?follow=1&type=drop HTTP/1.1\r\nHost: x\r\n\r\n")
    return s


def test_stalled_follower_does_not_slow_ingest_and_learns_its_losses(agent):
    server, obs = agent
    raws = [synthetic.raw_event(257, 256, 22, drop=True, sport=1024 + i % 60000) for i in range(BATCH)]
    alone = min(server.call(ingest_batch, obs, raws) for _ in range(2))
    client = follow_without_reading(server.unix_path)
    try:
        deadline = time.monotonic() + 10
        while obs.subscribers == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        stalled = server.call(ingest_batch, obs, raws)
        # ingest does not wait for the client: same order of CPU per event (queueing one slot)
        assert stalled < alone * 2.5 + 0.05, (alone, stalled)
        status = server.call(obs.status)
        assert status["subscriber_lost"] > BATCH - 2_000   # only what fits in the queue and socket got through
        # now read: the flows that fit, then the in-band loss report
        client.settimeout(10)
        buf = b""
        lost = None
        deadline = time.monotonic() + 15
        while lost is None and time.monotonic() < deadline:
            chunk = client.recv(65536)
            assert chunk, "stream closed"
            buf += chunk
            for line in buf.split(b"\n"):
                line = line.strip()
                if line.startswith(b"{") and b"lost_events" in line:
                    lost = json.loads(line)["lost_events"]
            if lost is None:
                # the server only reports at its next flow: keep flows coming
                server.call(obs.ingest_datapath_raw, raws[0])
        assert lost is not None and lost > BATCH - 2_000
    finally:
        client.close()
    server.call(obs.ingest_datapath_raw, raws[0])   # the next write notices the closed socket
    deadline = time.monotonic() + 10
    while obs.subscribers:
        assert time.monotonic() < deadline, "a disconnected follower was never dropped"
        server.call(obs.ingest_datapath_raw, raws[0])
        time.sleep(0.05)


def test_disconnected_idle_follower_is_dropped(agent):
    server, obs = agent
    client = follow_without_reading(server.unix_path)
    deadline = time.monotonic() + 10
    while obs.subscribers == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    client.close()
    deadline = time.monotonic() + 10        # no flows at all: the heartbeat notices
    while obs.subscribers:
        assert time.monotonic() < deadline, "an idle disconnected follower was never dropped"
        time.sleep(0.05)
