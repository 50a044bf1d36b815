"""Envoy lifecycle with the real binary: start/ready, restart with backoff after a crash (served
the current snapshot), give up after repeated failed starts, clear errors, clean stop."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from xdsserver.cache import Snapshot, SnapshotCache
from xdsserver.envoy import (EnvoyConfig, EnvoyError, EnvoyProcess, EnvoyState, build_bootstrap,
                             find_envoy_binary)
from xdsserver.translate import (Direction, HTTPRule, PeerRule, PortPolicy, ProxyOptions,
                                 TranslateInput, translate)
from xdsserver.testing import curl, envoy_harness, free_port, http_backend, wait_port_open

pytestmark = pytest.mark.timeout(90)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


def snapshot(port: int, backend_port: int, method: str) -> Snapshot:
    inp = TranslateInput(
        ports=(PortPolicy("127.0.0.1", Direction.INGRESS, port, port,
                          (PeerRule(None, (HTTPRule(method=method),)),)),),
        options=ProxyOptions(transparent=False, static_upstream=("127.0.0.1", backend_port)))
    return Snapshot.build(translate(inp).by_type())


async def test_bootstrap_admin_on_localhost_and_ads_delta(tmp_path):
    boot = build_bootstrap(EnvoyConfig(tmp_path, "n1", "127.0.0.1:1234"))
    assert boot["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    assert boot["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"
    assert boot["node"] == {"id": "n1", "cluster": "ostium"}
    boot = build_bootstrap(EnvoyConfig(tmp_path, "n1", "unix:/run/x.sock"))
    xds = boot["static_resources"]["clusters"][0]
    assert xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == \
        {"pipe": {"path": "/run/x.sock"}}
    # The bootstrap is a valid Bootstrap proto.
    from xdsserver.resources import from_dict
    from_dict("type.googleapis.com/envoy.config.bootstrap.v3.Bootstrap", boot)


async def test_killed_envoy_is_restarted_and_served_the_current_snapshot(tmp_path):
    port = free_port()
    with http_backend() as backend:
        async with envoy_harness(tmp_path, backoff_initial=0.1) as h:
            bport = backend.server_address[1]
            first = snapshot(port, bport, "GET")
            h.cache.set_snapshot(h.node_id, first)
            await h.server.wait_applied(h.node_id, first)
            await wait_port_open(port)
            assert (await curl(f"http://127.0.0.1:{port}/", "-X", "POST")).status == 403
            old_pid = h.envoy.pid
            assert h.envoy.state().state is EnvoyState.RUNNING

            os.kill(old_pid, signal.SIGKILL)
            st = await h.envoy.wait_for_state(EnvoyState.RESTARTING, timeout=10)
            assert "exited with code -9" in st.last_error
            # While Envoy is down the policy changes: the new Envoy must get the new one.
            second = snapshot(port, bport, "POST")
            h.cache.set_snapshot(h.node_id, second)
            st = await h.envoy.wait_for_state(EnvoyState.RUNNING, timeout=20)
            assert st.restarts == 1 and st.pid != old_pid and st.pid is not None
            assert not pid_alive(old_pid)
            await h.server.wait_applied(h.node_id, second)
            await wait_port_open(port)
            assert (await curl(f"http://127.0.0.1:{port}/", "-X", "POST")).status == 200
            assert (await curl(f"http://127.0.0.1:{port}/")).status == 403
            pid = st.pid
        assert not pid_alive(pid)  # clean stop


async def test_gives_up_after_repeated_failed_starts_with_the_reason(tmp_path):
    admin = free_port()
    async with envoy_harness(tmp_path, admin_port=admin, backoff_initial=0.05,
                             max_start_failures=3) as h:
        # Take Envoy's admin port while it is down: every restart fails to bind it.
        os.kill(h.envoy.pid, signal.SIGKILL)
        await h.envoy.wait_for_state(EnvoyState.RESTARTING, EnvoyState.FAILED, timeout=10)
        with socket.socket() as blocker:
            blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            blocker.bind(("127.0.0.1", admin))
            blocker.listen()
            st = await h.envoy.wait_for_state(EnvoyState.FAILED, timeout=30)
        assert "gave up after 3 failed starts" in st.last_error
        assert "exited with code" in st.last_error
        assert str(admin) in st.last_error        # Envoy's own log line about the admin address
        assert st.pid is None
        assert h.envoy.state().to_dict()["state"] == "failed"


async def test_missing_binary_is_a_clear_error(tmp_path):
    env = EnvoyProcess(EnvoyConfig(tmp_path, "n1", "127.0.0.1:1", binary=str(tmp_path / "nope")))
    with pytest.raises(EnvoyError, match="does not exist or is not executable"):
        await env.start()
    assert env.state().state is EnvoyState.FAILED
    assert "nope" in env.state().last_error


async def test_envoy_failing_to_start_reports_its_log(tmp_path):
    admin = free_port()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", admin))
        blocker.listen()
        env = EnvoyProcess(EnvoyConfig(tmp_path, "n1", "127.0.0.1:1", admin_port=admin))
        try:
            with pytest.raises(EnvoyError) as exc:
                await env.start()
        finally:
            await env.stop()
    msg = str(exc.value)
    assert "exited with code" in msg and "while starting" in msg
    assert str(tmp_path / "envoy.log") in msg
    assert str(admin) in msg
    assert env.state().state is EnvoyState.STOPPED


async def test_ready_times_out_with_a_hint_when_no_xds_server_answers(tmp_path):
    dead = free_port()   # nothing listens there
    env = EnvoyProcess(EnvoyConfig(tmp_path, "n1", f"127.0.0.1:{dead}", ready_timeout=1.0))
    try:
        with pytest.raises(EnvoyError, match="did not become ready"):
            await env.start()
    finally:
        await env.stop()
    assert "PRE_INITIALIZING" in env.state().last_error or "INITIALIZING" in env.state().last_error


def test_find_binary_from_the_wheel():
    path = find_envoy_binary()
    assert os.access(path, os.X_OK) and path.endswith("envoy")


async def test_a_restarted_agent_adopts_the_running_envoy(tmp_path):
    """Agent restart: the old supervisor detaches, Envoy keeps serving, the new one adopts it
    (same bootstrap), supervises it (restarts it when it dies) and can stop it."""
    from xdsserver.server import XdsServer

    port = free_port()
    cache = SnapshotCache()
    server = XdsServer(cache)
    target = await server.start()
    cfg = EnvoyConfig(tmp_path, "n1", target, backoff_initial=0.05)
    first = EnvoyProcess(cfg)
    second = EnvoyProcess(cfg)
    third = None
    try:
        with http_backend() as backend:
            snap = snapshot(port, backend.server_address[1], "GET")
            cache.set_snapshot("n1", snap)
            await first.start()
            pid = first.pid
            await server.wait_applied("n1", snap)
            await wait_port_open(port)
            await first.detach()
            assert pid_alive(pid)
            assert (await curl(f"http://127.0.0.1:{port}/")).status == 200   # still serving

            await second.start()
            assert second.adopted and second.pid == pid and second.state().state is EnvoyState.RUNNING
            os.kill(pid, signal.SIGKILL)
            st = await second.wait_for_state(EnvoyState.RESTARTING, timeout=10)
            assert "unknown (adopted process)" in st.last_error
            st = await second.wait_for_state(EnvoyState.RUNNING, timeout=20)
            assert st.pid != pid and st.restarts == 1 and not second.adopted
            await server.wait_applied("n1", snap)
            await wait_port_open(port)
            assert (await curl(f"http://127.0.0.1:{port}/")).status == 200

            # A different bootstrap (another xDS address): the old Envoy is replaced, not adopted.
            new_pid = st.pid
            await second.detach()
            third = EnvoyProcess(EnvoyConfig(tmp_path, "n1", target.replace("127.0.0.1", "localhost"),
                                             ready_timeout=3.0))
            with pytest.raises(EnvoyError):   # "localhost" is not an address Envoy's STATIC cluster takes
                await third.start()
            assert not pid_alive(new_pid)
    finally:
        for e in (first, second, third):
            if e is not None:
                await e.stop()
        await server.stop(0)
