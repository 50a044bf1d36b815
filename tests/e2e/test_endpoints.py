"""Standalone endpoints for real: a live agent in its own node netns, real netns/veth/cgroups, real traffic."""

from __future__ import annotations

import json
import os
import signal
import textwrap

import pytest

from tests.agentproc import AgentProcess, wait_for

pytestmark = pytest.mark.root


@pytest.fixture
def agent():
    a = AgentProcess(pod_cidr="10.211.0.0/24")
    try:
        a.start()
        yield a
    finally:
        a.cleanup()


def tcp_ok(agent: AgentProcess, src: str, dst_ip: str, port: int, raw: bool = False) -> bool:
    script = (f"import socket; s=socket.create_connection(('{dst_ip}', {port}), timeout=2); "
              "s.sendall(b'ping'); print(s.recv(16).decode())")
    r = agent.raw_exec(src, "python3", "-c", script) if raw else agent.ep_exec(src, "python3", "-c", script)
    return r.returncode == 0 and "ping" in r.stdout


ECHO = "import socket,threading\n" \
       "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 7000)); s.listen(64)\n" \
       "def h(c):\n    d=c.recv(16); c.sendall(d); c.close()\n" \
       "while True:\n    c,_=s.accept(); threading.Thread(target=h, args=(c,), daemon=True).start()\n"


def create_three(agent: AgentProcess) -> dict[str, dict]:
    manifest = textwrap.dedent(f"""
        apiVersion: ostium.io/v1alpha1
        kind: Endpoint
        metadata: {{name: alpha, labels: {{app: alpha}}}}
        spec: {{command: ["python3", "-c", {json.dumps(ECHO)}]}}
        ---
        apiVersion: ostium.io/v1alpha1
        kind: Endpoint
        metadata: {{name: beta, namespace: other, labels: {{app: beta}}}}
        spec: {{ip: 10.211.0.77, command: ["python3", "-c", {json.dumps(ECHO)}]}}
        ---
        apiVersion: ostium.io/v1alpha1
        kind: Endpoint
        metadata: {{name: gamma, labels: {{app: gamma}}}}
        spec: {{command: ["python3", "-c", {json.dumps(ECHO)}]}}
        """)
    out = agent.cli("apply", "-f", "-", input=manifest).stdout
    assert "endpoint/default/alpha created" in out and "endpoint/other/beta created" in out
    eps = {e["name"]: e for e in agent.cli_json("endpoint", "list")}
    assert set(eps) == {"alpha", "beta", "gamma"}
    assert eps["beta"]["ip"] == "10.211.0.77"
    return eps


def assert_mesh_reachable(agent: AgentProcess, eps: dict[str, dict]) -> None:
    for src in eps:
        for dst, ep in eps.items():
            if src == dst:
                continue
            wait_for(lambda: tcp_ok(agent, src if src != "beta" else "other/beta", ep["ip"], 7000), 10,
                     what=f"TCP {src} -> {dst}")
            r = agent.ep_exec(src if src != "beta" else "other/beta", "ping", "-c", "1", "-W", "2", ep["ip"])
            assert r.returncode == 0, f"ICMP {src} -> {dst} failed: {r.stdout} {r.stderr}"
    for ep in eps.values():  # from the node ("host") too
        r = agent.node_exec("ping", "-c", "1", "-W", "2", ep["ip"])
        assert r.returncode == 0, f"ICMP host -> {ep['name']}: {r.stdout}"
        r = agent.node_exec("python3", "-c", f"import socket; s=socket.create_connection(('{ep['ip']}', 7000), 2); "
                                             "s.sendall(b'hi'); assert s.recv(4) == b'hi'")
        assert r.returncode == 0, f"TCP host -> {ep['name']}: {r.stderr}"


def test_three_endpoints_reach_each_other_and_the_host_over_tcp_and_icmp(agent):
    eps = create_three(agent)
    assert_mesh_reachable(agent, eps)
    # exec runs inside the endpoint's own netns and cgroup
    r = agent.ep_exec("alpha", "cat", "/proc/self/cgroup")
    assert r.stdout.strip().endswith(f"/{agent.cgroup_name}/default.alpha"), r.stdout
    r = agent.ep_exec("alpha", "ip", "-o", "-4", "addr", "show", "dev", "eth0")
    assert eps["alpha"]["ip"] in r.stdout


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_endpoints_survive_an_agent_restart(agent, how):
    eps = create_three(agent)
    rc = agent.stop(how)
    if how == signal.SIGTERM:
        assert rc == 0, agent.log_tail()
    # traffic keeps flowing with no agent at all
    assert tcp_ok(agent, "default.alpha", eps["gamma"]["ip"], 7000, raw=True)
    agent.start()
    after = {e["name"]: e for e in agent.cli_json("endpoint", "list")}
    assert {n: (e["ip"], e["id"]) for n, e in after.items()} == {n: (e["ip"], e["id"]) for n, e in eps.items()}
    assert all(e["state"] == "ready" for e in after.values())
    assert_mesh_reachable(agent, eps)
    # IPAM is persistent: a new endpoint never gets an address that is in use
    new = json.loads(agent.cli("endpoint", "create", "delta", "-o", "json").stdout)
    assert new["ip"] not in {e["ip"] for e in eps.values()}


def test_missing_kernel_parts_are_recreated_on_restart(agent):
    eps = create_three(agent)
    agent.stop(signal.SIGKILL)
    os.system(f"ip netns del {agent.prefix}default.gamma")
    agent.start()
    status = agent.cli_json("status")
    assert any("default/gamma" in r for r in status["reconcile"]["recreated"])
    wait_for(lambda: tcp_ok(agent, "alpha", eps["gamma"]["ip"], 7000), 10, what="gamma's command restarted")


def test_unknown_kernel_objects_are_reported_not_removed(agent):
    os.system(f"ip netns add {agent.prefix}stray")
    agent.stop()
    agent.start()
    status = agent.cli_json("status")
    assert f"netns {agent.prefix}stray" in status["reconcile"]["unknown"]
    assert os.path.exists(f"/var/run/netns/{agent.prefix}stray")


def test_delete_leaves_nothing_behind(agent):
    create_three(agent)
    agent.cli("endpoint", "delete", "alpha", "other/beta")
    agent.cli("delete", "-f", "-", input="apiVersion: ostium.io/v1alpha1\nkind: Endpoint\nmetadata: {name: gamma}\n")
    assert agent.cli_json("endpoint", "list") == []
    assert agent.leftovers() == []
    st = agent.cli_json("status")
    assert st["network"]["addresses_in_use"] == 0


def test_second_agent_on_the_same_state_dir_refuses_to_start(agent):
    r = agent.node_exec(*__import__("tests.agentproc", fromlist=["OSTIUM"]).OSTIUM, "--socket",
                        agent.socket + ".2", "agent", "--state-dir", agent.state_dir, "--netns-prefix", agent.prefix,
                        "--cgroup-root", agent.cgroup_name, "--pod-cidr", agent.pod_cidr)
    assert r.returncode != 0
    assert "already running on state directory" in r.stderr
    assert agent.cli("status", check=False).returncode == 0  # the first one is unaffected


def test_bad_input_is_rejected_and_changes_nothing(agent):
    agent.cli("endpoint", "create", "one", "-l", "app=one")
    before = agent.cli_json("endpoint", "list")
    cases = [
        (["endpoint", "create", "one"], 4, "already exists"),
        (["endpoint", "create", "Two"], 2, "endpoint name 'Two'"),
        (["endpoint", "create", "two", "-l", "bad key=v"], 2, "label key"),
        (["endpoint", "create", "two", "--ip", "10.99.0.1"], 1, "outside the pod CIDR"),
        (["endpoint", "create", "two", "--ip", before[0]["ip"]], 1, "already allocated to default/one"),
        (["endpoint", "get", "nothere"], 3, "not found"),
    ]
    for args, code, needle in cases:
        r = agent.cli(*args, check=False)
        assert r.returncode == code, (args, r.returncode, r.stderr)
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    # a multi-document apply with one bad document creates nothing
    bad = ("apiVersion: ostium.io/v1alpha1\nkind: Endpoint\nmetadata: {name: three}\n---\n"
           "apiVersion: ostium.io/v1alpha1\nkind: Endpoint\nmetadata: {name: four}\nspec: {ip: 10.211.0.300}\n")
    r = agent.cli("apply", "-f", "-", input=bad, check=False)
    assert r.returncode == 2 and "<stdin>#2 (Endpoint four): spec.ip" in r.stderr
    r = agent.cli("apply", "-f", "-", input="kind: [\n", check=False)
    assert r.returncode == 2 and "YAML syntax error" in r.stderr
    r = agent.cli("apply", "-f", "-", input="apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n", check=False)
    assert r.returncode == 2 and "unknown kind v1/Pod" in r.stderr
    assert agent.cli_json("endpoint", "list") == before
    assert [x for x in agent.leftovers() if x.startswith("netns")] == [f"netns {agent.prefix}default.one"]


def test_pool_exhaustion_in_an_apply_creates_nothing():
    a = AgentProcess(pod_cidr="10.212.0.0/29")  # 5 usable addresses (router takes one)
    try:
        a.start()
        docs = "---\n".join(f"apiVersion: ostium.io/v1alpha1\nkind: Endpoint\nmetadata: {{name: e{i}}}\n"
                            for i in range(6))
        r = a.cli("apply", "-f", "-", input=docs, check=False)
        assert r.returncode != 0 and "free addresses" in r.stderr, r.stderr
        assert a.cli_json("endpoint", "list") == []
        assert a.leftovers() == []
    finally:
        a.cleanup()
