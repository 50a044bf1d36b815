"""The `ostium policy apply` / `ostium apply` path: the CLI sends file text, the agent parses it once.

The API server here mounts the agent's own document handling (`Agent._docs` + `parse_documents`, what
`POST /v1/apply` runs before changing anything) on a unix socket, so the messages the CLI prints are the
agent's; the client is the CLI's stdlib HTTP client. No root needed.
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import textwrap

import pytest
import yaml

from mesh.agent import Agent, GCPause
from mesh.api.client import APIClient
from mesh.api.server import json_response, make_app, read_json
from mesh.cli.main import COMMAND_MODULES, PLUGIN_MODULES, build_parser, command_word, main
from mesh.errors import AgentError, NotFoundError, ValidationError
from mesh.manifests import _load_yaml_all, parse_documents, parse_yaml_text

POLICY = textwrap.dedent("""
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: rule1, namespace: galaxy}
    spec:
      endpointSelector: {matchLabels: {class: deathstar}}
      ingress:
        - fromEndpoints: [{matchLabels: {org: empire}}]
          toPorts:
            - ports: [{port: "80", protocol: TCP}]
              rules: {http: [{method: POST, path: /v1/request-landing}]}
""")


@pytest.fixture
async def server(tmp_path):
    """A unix-socket API whose /v1/apply validates like the agent's; yields (socket, received bodies)."""
    from aiohttp import web

    received: list = []

    async def h_apply(request: web.Request) -> web.Response:
        body = await read_json(request)
        received.append(body)
        parsed = parse_documents(Agent._docs(body))
        return json_response({"results": [{"kind": p.kind, "namespace": p.namespace, "name": p.name,
                                           "action": "created"} for p in parsed]})

    async def h_missing(request: web.Request) -> web.Response:
        raise NotFoundError("endpoint galaxy/x not found")

    async def h_chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        resp.content_type = "application/json"
        await resp.prepare(request)
        for part in (b'{"items": [', b'1, 2', b", 3]}"):
            await resp.write(part)
        await resp.write_eof()
        return resp

    async def h_echo(request: web.Request) -> web.Response:
        return json_response({"len": len((await read_json(request))["blob"]), "query": dict(request.query)})

    runner = web.AppRunner(make_app([web.post("/v1/apply", h_apply), web.get("/v1/missing", h_missing),
                                     web.get("/v1/chunked", h_chunked), web.post("/v1/echo", h_echo)]))
    await runner.setup()
    sock = str(tmp_path / "api.sock")
    await web.UnixSite(runner, sock).start()
    try:
        yield sock, received
    finally:
        await runner.cleanup()


async def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))  # the CLI is synchronous: off the serving loop
    out, err = capsys.readouterr()
    return code, out, err


# --- the CLI ↔ agent contract ----------------------------------------------------------------------

async def test_policy_apply_sends_the_file_text_once_and_prints_what_the_agent_did(server, tmp_path, capsys):
    sock, received = server
    f = tmp_path / "rule1.yaml"
    f.write_text(POLICY)
    code, out, err = await cli(capsys, "--socket", sock, "policy", "apply", "-f", str(f))
    assert (code, out, err) == (0, "ciliumnetworkpolicy/galaxy/rule1 created\n", "")
    assert received == [{"sources": [{"source": str(f), "text": POLICY}], "policiesOnly": True}]


async def test_policy_apply_reports_the_agents_field_path_for_a_bad_regex(server, tmp_path, capsys):
    sock, _ = server
    f = tmp_path / "bad.yaml"
    f.write_text(POLICY.replace("/v1/request-landing", "/v1/(unclosed"))
    code, _, err = await cli(capsys, "--socket", sock, "policy", "apply", "-f", str(f))
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert f"{f}#1 (CiliumNetworkPolicy galaxy/rule1)" in err
    assert "spec.ingress[0].toPorts[0].rules.http[0].path" in err and "invalid RE2 regex" in err


async def test_policy_apply_refuses_other_kinds_with_the_same_message_as_offline(server, tmp_path, capsys):
    sock, received = server
    f = tmp_path / "mixed.yaml"
    f.write_text(POLICY + "---\napiVersion: ostium.io/v1alpha1\nkind: Endpoint\nmetadata: {name: x}\n")
    code, _, err = await cli(capsys, "--socket", sock, "policy", "apply", "-f", str(f))
    assert code == 2
    assert "Endpoint is not a policy kind (use `ostium apply`)" in err and f"{f}#2 (Endpoint x)" in err
    code, _, offline = await cli(capsys, "policy", "validate", "-f", str(f))
    assert code == 2 and "Endpoint is not a policy kind (use `ostium apply`)" in offline


@pytest.mark.parametrize("agent_running", [True, False])
async def test_bad_yaml_is_reported_as_yaml_with_or_without_an_agent(server, tmp_path, capsys, agent_running):
    sock, _ = server
    f = tmp_path / "broken.yaml"
    f.write_text("kind: [CiliumNetworkPolicy\n")
    socket_path = sock if agent_running else str(tmp_path / "no-agent.sock")
    for argv in (["policy", "apply", "-f", str(f)], ["apply", "-f", str(f)]):
        code, _, err = await cli(capsys, "--socket", socket_path, *argv)
        assert code == 2, err
        assert f"{f}: YAML syntax error at line 2, column 1" in err


async def test_without_an_agent_a_valid_policy_fails_as_unreachable(tmp_path, capsys):
    f = tmp_path / "rule1.yaml"
    f.write_text(POLICY)
    code, _, err = await cli(capsys, "--socket", str(tmp_path / "none.sock"), "policy", "apply", "-f", str(f))
    assert code == AgentError.exit_code and "cannot reach the agent" in err


@pytest.mark.parametrize("agent_running", [True, False])
async def test_an_empty_file_applies_nothing(server, tmp_path, capsys, agent_running):
    sock, _ = server
    f = tmp_path / "empty.yaml"
    f.write_text("---\n")
    socket_path = sock if agent_running else str(tmp_path / "no-agent.sock")
    for argv in (["policy", "apply", "-f", str(f)], ["apply", "-f", str(f)]):
        code, out, err = await cli(capsys, "--socket", socket_path, *argv)
        assert (code, out, err) == (0, "", "no documents found\n")


async def test_ostium_apply_sends_text_and_the_agent_validates_it(server, tmp_path, capsys):
    sock, received = server
    d = tmp_path / "dir"
    (d / "sub").mkdir(parents=True)
    (d / "b.yaml").write_text(POLICY.replace("rule1", "rule2"))
    (d / "sub" / "a.yaml").write_text(POLICY)
    (d / "notes.txt").write_text("not a manifest")
    code, out, _ = await cli(capsys, "--socket", sock, "apply", "-f", str(d))
    assert code == 0
    assert out.splitlines() == ["ciliumnetworkpolicy/galaxy/rule2 created", "ciliumnetworkpolicy/galaxy/rule1 created"]
    assert [s["source"] for s in received[0]["sources"]] == [str(d / "b.yaml"), str(d / "sub" / "a.yaml")]
    assert "policiesOnly" not in received[0]


def test_agent_docs_accepts_parsed_documents_and_rejects_bad_bodies():
    docs = Agent._docs({"documents": [{"source": "x", "index": 0, "body": {"kind": "K"}}],
                        "sources": [{"source": "y.yaml", "text": "kind: L\n---\nkind: M\n"}]})
    assert [(d.source, d.kind) for d in docs] == [("x", "K"), ("y.yaml", "L"), ("y.yaml", "M")]
    for body in ({}, {"sources": "text"}, {"sources": [{"source": "y"}]}, []):
        with pytest.raises(ValidationError):
            Agent._docs(body)


# --- the client -----------------------------------------------------------------------------------

async def test_client_reads_chunked_and_large_bodies_and_maps_errors(server):
    sock, _ = server
    client = APIClient(sock)
    assert await asyncio.to_thread(client.get, "/v1/chunked") == {"items": [1, 2, 3]}
    blob = "x" * (3 * 1024 * 1024)
    out = await asyncio.to_thread(client.request, "POST", "/v1/echo", {"blob": blob}, {"mode": "a b", "x": None})
    assert out == {"len": len(blob), "query": {"mode": "a b"}}
    with pytest.raises(NotFoundError, match="endpoint galaxy/x not found"):
        await asyncio.to_thread(client.get, "/v1/missing")


def test_client_names_the_socket_when_no_agent_listens(tmp_path):
    with pytest.raises(AgentError, match=r"cannot reach the agent at .*none\.sock"):
        APIClient(str(tmp_path / "none.sock")).get("/v1/status")


# --- CLI start-up --------------------------------------------------------------------------------

def test_every_command_word_maps_to_the_module_that_registers_it():
    import argparse
    import importlib

    for name in PLUGIN_MODULES:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(f"mesh.cli.{name}").register(sub)
        for word in sub.choices:
            assert COMMAND_MODULES.get(word) == name, (word, name)
    words = {w for action in build_parser()._subparsers._group_actions for w in action.choices}  # type: ignore[union-attr]
    assert words - {"version"} == set(COMMAND_MODULES)


def test_command_word_skips_the_socket_option():
    assert command_word(["--socket", "/s", "policy", "apply"]) == "policy"
    assert command_word(["--socket=/s", "apply", "-f", "x"]) == "apply"
    assert command_word(["--help"]) is None and command_word([]) is None


def test_policy_apply_starts_without_yaml_http_client_or_the_policy_model():
    code = ("import sys; from mesh.cli.main import build_parser; build_parser(['policy', 'apply', '-f', 'x']); "
            "import mesh.api.client, mesh.manifest_sources; "
            "print([m for m in ('yaml', 'http.client', 'dataclasses', 'mesh.manifests', 'mesh.policy.parse', "
            "'mesh.config', 'mesh.cli.observe', 'shutil') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- YAML -----------------------------------------------------------------------------------------

YAML_CASES = [
    POLICY,
    "a: &x [1, 2]\nb: *x\n",
    "base: &a {x: 1, y: 0}\nb:\n  <<: *a\n  y: 2\n",
    "? [1, 2]\n: 3\n",
    "a: !!set {x, y}\nb: !!omap [x: 1]\nc: !!binary aGVsbG8=\n",
    "a: 2001-12-14\nb: yes\nc: 0777\nd: 1e3\ne: ~\nf: 1:20\ng: 1_000\nh: .inf\n",
    "&a [*a]\n",
    "&a {x: *a}\n",
    "--- 1\n--- [2]\n---\n--- {a: {b: [c]}}\n",
    "a: !!str 5\nb: !!int '7'\n",
    "a: !!str {x: 1}\n",
    "a: !foo 1\n",
    "a: b\na: c\n",
    "{[1]: 2}\n",
    "",
    "a: [1, 2\n",
    "kind: List\nitems: [{a: 1}, {b: 2}]\n",
    "'<<': 1\n\"=\": 2\n",
    "a: ! 123\nb: !!null ''\n",
    "---\n---\n",
    "a: 1\n---\nb: &x 2\nc: *x\n",
    "{a: 1, a: 2}\n",
    "- a\n- [b, {c: d}]\n- {e: [f]}\n",
    "a: \"yes\"\nb: 'on'\nc: yes\nd: null\ne: 3.5\nf: -7\n",
    "a: b\n  c: d\n",
    "a:\n\t- b\n",
]


@pytest.mark.parametrize("text", YAML_CASES)
def test_yaml_loader_builds_what_safe_load_builds(text):
    def run(load):
        try:
            return "ok", load()
        except yaml.YAMLError as exc:
            return "error", str(exc)
    want = run(lambda: list(yaml.load_all(text, Loader=yaml.CSafeLoader)))
    got = run(lambda: _load_yaml_all(text))
    assert repr(got) == repr(want)


def test_yaml_aliases_are_the_same_object_as_with_safe_load():
    doc = _load_yaml_all("a: &x [1]\nb: *x\n")[0]
    assert doc["a"] is doc["b"]


# --- policy validation caches ---------------------------------------------------------------------

def _policy_with_paths(name: str, paths: list[str]) -> str:
    rules = ", ".join(f"{{method: GET, path: {json.dumps(p)}}}" for p in paths)
    return POLICY.replace("rule1", name).replace("{http: [{method: POST, path: /v1/request-landing}]}",
                                                 f"{{http: [{rules}]}}")


def test_a_bad_regex_is_reported_at_its_own_position_every_time():
    for name, paths, where in (("a", ["/v1/(x"], "http[0]"), ("b", ["/ok", "/v1/(x"], "http[1]")):
        with pytest.raises(ValidationError) as exc:
            parse_documents(parse_yaml_text(_policy_with_paths(name, paths), f"{name}.yaml"))
        assert f"rules.{where}.path" in str(exc.value) and f"{name}.yaml#1" in str(exc.value)


def test_envoys_program_size_limit_still_applies_to_rules_seen_before():
    ok = parse_documents(parse_yaml_text(_policy_with_paths("a", ["/svc/[0-9]+"]), "a.yaml"))
    again = parse_documents(parse_yaml_text(_policy_with_paths("b", ["/svc/[0-9]+"]), "b.yaml"))
    assert ok[0].obj.rules[0].items[0].to_ports[0].http == again[0].obj.rules[0].items[0].to_ports[0].http
    for _ in range(2):
        with pytest.raises(ValidationError, match=r"too complex for Envoy \(RE2 program size \d+ > 100\)"):
            parse_documents(parse_yaml_text(_policy_with_paths("c", ["/x/a{1000}"]), "c.yaml"))


# --- GC pause -------------------------------------------------------------------------------------

def test_gc_pause_nests_and_restores_the_previous_state():
    pause = GCPause()
    assert gc.isenabled()
    try:
        with pause.paused():
            with pause.paused():
                assert not gc.isenabled()
            assert not gc.isenabled()
        assert gc.isenabled()
        gc.disable()
        with pause.paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


# --- Envoy before the datapath ---------------------------------------------------------------------

async def test_envoy_gets_added_rules_at_once_and_removed_ports_only_after_the_datapath(tmp_path, monkeypatch):
    """L7ProxyComponent is the policy's first regenerate hook and `push_deferred` the last: a change that
    keeps or adds redirected ports is pushed before the datapath hook runs; one that removes a redirected
    port waits for it (else connections still redirected there would reach Envoy without a filter chain)."""
    from types import SimpleNamespace

    import xdsserver.translate.adapt as adapt
    from mesh.components.l7proxy import L7ProxyComponent
    from xdsserver.translate.model import Direction, PortPolicy

    repo = SimpleNamespace(revision=1, endpoint_policy=lambda ns, name: (ns, name))
    agent = SimpleNamespace(config=SimpleNamespace(proxy_port_base=15000, state_dir=str(tmp_path)),
                            policy=SimpleNamespace(repo=repo))
    comp = L7ProxyComponent(agent)
    wanted: list[int] = []
    monkeypatch.setattr(adapt, "port_policies_from_endpoint", lambda pol, ports: [
        PortPolicy("10.0.0.2", Direction.INGRESS, p, 15001, ()) for p in wanted])
    pushes: list[list[int]] = []

    async def push() -> None:
        pushes.append(sorted(p.port for pols in comp.port_policies.values() for p in pols))
    comp.push = push  # type: ignore[method-assign]
    ep = [("bench", "web")]

    wanted[:] = [80, 8080]  # new redirects: Envoy first
    await comp.policy_regenerated(ep, [])
    assert pushes == [[80, 8080]] and comp.applied_revision == 1
    await comp.push_deferred(ep, [])
    assert pushes == [[80, 8080]]

    repo.revision, wanted[:] = 2, [80]  # port 8080 no longer redirected: after the datapath
    await comp.policy_regenerated(ep, [])
    assert pushes == [[80, 8080]] and comp.applied_revision == 1
    await comp.push_deferred(ep, [])
    assert pushes == [[80, 8080], [80]] and comp.applied_revision == 2

    repo.revision = 3  # the endpoint is deleted: after the datapath too
    await comp.policy_regenerated([], ep)
    assert len(pushes) == 2
    await comp.push_deferred([], ep)
    assert pushes[-1] == [] and comp.applied_revision == 3


# --- all or nothing when regeneration fails ------------------------------------------------------------

async def test_a_policy_whose_regeneration_fails_leaves_the_previous_one_in_repository_and_store(tmp_path):
    from types import SimpleNamespace

    from mesh.components.policy import PolicyComponent
    from mesh.errors import DatapathError
    from mesh.policy.resolve import EndpointInfo
    from mesh.state.store import StateStore

    store = StateStore(str(tmp_path / "state.db"))
    agent = SimpleNamespace(store=store, identity=SimpleNamespace(ipcache=SimpleNamespace(
        sync_source=lambda *args: None)))
    comp = PolicyComponent(agent)  # type: ignore[arg-type]
    labels = {"k8s:class": "deathstar", "k8s:org": "empire", "k8s:io.kubernetes.pod.namespace": "galaxy"}
    comp.repo.upsert_identity(300, labels)
    comp.repo.upsert_endpoint(EndpointInfo(name="ds", namespace="galaxy", labels=labels, ip="10.0.0.2",
                                           identity=300, named_ports={}))
    calls: list[int] = []
    fail = [False]

    async def datapath_hook(changed, deleted) -> None:
        calls.append(comp.repo.revision)
        if fail[0]:
            fail[0] = False  # the undo's regeneration succeeds
            raise DatapathError("policy map full")
    comp.regenerate_hooks.append(datapath_hook)

    def parsed(text: str):
        return parse_documents(parse_yaml_text(text, "p.yaml"))[0]
    first = parsed(POLICY)
    assert await comp.apply(first) == "created"
    fail[0] = True
    with pytest.raises(DatapathError):
        await comp.apply(parsed(POLICY.replace("/v1/request-landing", "/v1/other")))
    assert comp.repo.get_policy(first.kind, "galaxy", "rule1") == first.obj
    assert store.get(first.kind, "galaxy", "rule1") == first.doc.body
    fail[0] = True
    with pytest.raises(DatapathError):
        await comp.apply(parsed(POLICY.replace("rule1", "rule2")))
    assert comp.repo.get_policy(first.kind, "galaxy", "rule2") is None and store.get(first.kind, "galaxy", "rule2") is None
    assert len(calls) == 5  # each failed regeneration was followed by the undo's
    store.close()
