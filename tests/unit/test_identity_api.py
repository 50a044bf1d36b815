"""`ostium identity list|get` through a real agent API server (aiohttp on a unix socket) over SQLite."""

from __future__ import annotations

import asyncio
import json

import pytest

from mesh.api.server import make_app
from mesh.cli.main import main
from mesh.identity import api
from mesh.identity.ipcache import IPCache, Source
from mesh.identity.labels import security_labels
from mesh.identity.sqlite import SQLiteAllocator

WEB = security_labels({"app": "web"}, "default")
WEB_PROD = security_labels({"app": "web"}, "prod")


@pytest.fixture
async def agent(tmp_path):
    """An API server with the identity routes on a unix socket; yields (socket path, allocator)."""
    from aiohttp import web

    alloc = await SQLiteAllocator.open(tmp_path / "identities.db")
    ipcache = IPCache()
    ipcache.upsert("10.200.0.5", 300, Source.ENDPOINT)
    runner = web.AppRunner(make_app(api.routes(alloc, ipcache)))
    await runner.setup()
    sock = str(tmp_path / "api.sock")
    site = web.UnixSite(runner, sock)
    await site.start()
    try:
        yield sock, alloc
    finally:
        await runner.cleanup()
        await alloc.close()


async def cli(capsys, *argv: str) -> tuple[int, str, str]:
    # The CLI is synchronous: run it off the loop that serves the API.
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_identity_list_shows_reserved_and_allocated_identities(agent, capsys):
    sock, alloc = agent
    web = await alloc.allocate(WEB, "ep1")
    await alloc.allocate(WEB, "ep2")
    code, out, _ = await cli(capsys, "--socket", sock, "identity", "list", "-o", "json")
    assert code == 0
    rows = json.loads(out)
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5, 6, 7, 8, web.id]
    assert rows[-1] == {"id": web.id, "labels": WEB, "references": 2, "reserved": False,
                        "owners": ["ep1", "ep2"]}
    code, out, _ = await cli(capsys, "--socket", sock, "identity", "list")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "LABELS", "REFERENCES"]
    assert lines[2].split() == ["2", "reserved:world", "0"]
    assert lines[-1].startswith(str(web.id)) and "k8s:app=web" in lines[-1] and lines[-1].endswith("2")


async def test_identity_list_filters_by_labels(agent, capsys):
    sock, alloc = agent
    web = await alloc.allocate(WEB, "ep1")
    prod = await alloc.allocate(WEB_PROD, "ep2")
    _, out, _ = await cli(capsys, "--socket", sock, "identity", "list", "-l", "app=web", "-o", "json")
    assert [r["id"] for r in json.loads(out)] == [web.id, prod.id]
    _, out, _ = await cli(capsys, "--socket", sock, "identity", "list", "-l", "app=web",
                          "-l", "k8s:io.kubernetes.pod.namespace=prod", "-o", "yaml")
    assert f"id: {prod.id}" in out and f"id: {web.id}" not in out
    _, out, _ = await cli(capsys, "--socket", sock, "identity", "list", "-l", "reserved:app=web", "-o", "json")
    assert json.loads(out) == []


async def test_identity_get_by_number_and_by_exact_labels(agent, capsys):
    sock, alloc = agent
    web = await alloc.allocate(WEB, "ep1")
    code, out, _ = await cli(capsys, "--socket", sock, "identity", "get", str(web.id), "-o", "json")
    assert code == 0 and json.loads(out)["labels"] == WEB
    code, out, _ = await cli(capsys, "--socket", sock, "identity", "get", *(f"{k}={v}" for k, v in WEB.items()),
                             "-o", "json")
    assert code == 0 and json.loads(out)["id"] == web.id
    code, out, _ = await cli(capsys, "--socket", sock, "identity", "get", "2")
    assert code == 0 and "reserved: yes" in out and "reserved:world" in out


async def test_identity_get_unknown_is_not_found(agent, capsys):
    sock, alloc = agent
    await alloc.allocate(WEB, "ep1")
    code, _, err = await cli(capsys, "--socket", sock, "identity", "get", "4000")
    assert code == 3 and "identity 4000 does not exist" in err
    # A subset of the labels is not the identity's exact set.
    code, _, err = await cli(capsys, "--socket", sock, "identity", "get", "k8s:app=web")
    assert code == 3 and "no identity has exactly the labels k8s:app=web" in err
    code, _, err = await cli(capsys, "--socket", sock, "identity", "list", "-l", "=x")
    assert code == 2 and "has no key" in err


async def test_api_rejects_bad_queries(agent):
    _sock, alloc = agent
    from mesh.errors import ValidationError
    with pytest.raises(ValidationError, match="id: 'abc' is not an identity number"):
        await api.get_identity(alloc, "abc")
    with pytest.raises(ValidationError, match="match: unknown match mode"):
        await api.list_identities(alloc, [], match="fuzzy")


async def test_ipcache_dump_and_lookup(agent):
    from mesh.api.client import APIClient
    sock, _ = agent
    client = APIClient(sock)
    rows = await asyncio.to_thread(client.get, "/v1/ipcache")
    assert rows == [{"prefix": "10.200.0.5/32", "identity": 300, "source": "endpoint", "tunnelEndpoint": None}]
    hit = await asyncio.to_thread(client.get, "/v1/ipcache", {"ip": "10.200.0.5"})
    assert hit[0]["identity"] == 300
    miss = await asyncio.to_thread(client.get, "/v1/ipcache", {"ip": "192.0.2.1"})
    assert miss[0]["identity"] == 2 and miss[0]["source"] == "default"
