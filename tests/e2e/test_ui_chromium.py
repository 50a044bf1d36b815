"""The web UI in headless Chromium (selenium + Debian's chromedriver): after allowed and denied
traffic the service map shows the workloads and coloured edges, clicking an edge shows its L7
requests, the flow table shows the rows and follows filters; a screenshot is saved under
test-artifacts/."""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import pytest

from mesh.flows import synthetic
from mesh.flows.api import make_http_app
from mesh.flows.metrics import MetricsRegistry
from mesh.flows.observer import Observer
from tests.conftest import require_binary

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARTIFACTS = os.path.join(ROOT, "test-artifacts")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--window-size=1400,1000"]


@pytest.fixture
def ui():
    obs = Observer(capacity=1000, enricher=synthetic.enricher())
    synthetic.star_wars(obs, 2)
    server = synthetic.ThreadedApp(make_http_app(obs, MetricsRegistry(obs)))
    url = server.start()
    try:
        yield server, obs, url
    finally:
        server.stop()


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium: scripts/requirements-extra.txt")
    chromium = require_binary("chromium")
    driver_path = require_binary("chromedriver")
    from selenium.webdriver.chrome.service import Service
    profile = tempfile.mkdtemp(prefix="ostium-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for f in FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(f)
    drv = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(drv, js: str, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while True:
        value = drv.execute_script(js)
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"UI condition never became true: {js}")
        time.sleep(0.1)


EDGES_JS = """return [...document.querySelectorAll('#edges .edge')].map(g => ({
  source: g.dataset.source, target: g.dataset.target, allowed: +g.dataset.allowed, denied: +g.dataset.denied,
  parts: [...g.querySelectorAll('path')].map(p => [p.getAttribute('class'), getComputedStyle(p).stroke])}))"""


def test_map_and_flow_table(ui, browser):
    server, obs, url = ui
    browser.get(url + "/ui/")
    wait_for(browser, "return document.body.dataset.loaded === '1'")
    nodes = browser.execute_script(
        "return [...document.querySelectorAll('#nodes .node')].map(g => g.dataset.id).sort()")
    assert nodes == sorted(["default/deathstar", "default/tiefighter", "default/xwing", "kafka/kafka",
                            "kafka/empire-hq", "kafka/outpost", "reserved:world"])
    edges = {(e["source"], e["target"]): e for e in browser.execute_script(EDGES_JS)}
    assert set(edges) == {("default/tiefighter", "default/deathstar"), ("default/xwing", "default/deathstar"),
                          ("kafka/empire-hq", "kafka/kafka"), ("kafka/outpost", "kafka/kafka"),
                          ("reserved:world", "default/xwing")}
    green, red = "rgb(31, 157, 85)", "rgb(214, 69, 69)"
    tie = edges[("default/tiefighter", "default/deathstar")]
    assert (tie["allowed"], tie["denied"]) == (4, 0) and tie["parts"] == [["part allowed", green]]
    xw = edges[("default/xwing", "default/deathstar")]
    assert (xw["allowed"], xw["denied"]) == (4, 4)     # traces + 200s allowed; 403s + SSH drops denied
    assert xw["parts"] == [["part allowed", green], ["part denied", red]]
    assert edges[("kafka/outpost", "kafka/kafka")]["denied"] == 2

    # click the xwing → deathstar edge: its HTTP requests with verdicts
    browser.execute_script("""document.querySelector('#edges .edge[data-source="default/xwing"]')
        .dispatchEvent(new MouseEvent('click', {bubbles: true}))""")
    rows = wait_for(browser, """const t = document.querySelector('#detail-http'); return t &&
        [...t.querySelectorAll('tr')].slice(1).map(r => [...r.children].map(c => c.textContent))""")
    assert ["PUT", "/v1/exhaust-port", "403", "DROPPED", "2"] in rows
    assert ["POST", "/v1/request-landing", "200", "FORWARDED", "2"] in rows

    browser.execute_script("""document.querySelector('#edges .edge[data-source="kafka/outpost"]')
        .dispatchEvent(new MouseEvent('click', {bubbles: true}))""")
    krows = wait_for(browser, """const t = document.querySelector('#detail-kafka'); return t &&
        [...t.querySelectorAll('tr')].slice(1).map(r => [...r.children].map(c => c.textContent))""")
    assert sorted(krows) == [["fetch", "deathstar-plans", "FORWARDED", "2"],
                             ["produce", "empire-announce", "DROPPED", "2"]]

    table = browser.execute_script("""return [...document.querySelectorAll('#flow-rows tr')].map(r =>
        [...r.children].map(c => c.textContent))""")
    assert len(table) == 20
    denied_http = [r for r in table if r[3] == "http-request"]
    assert len(denied_http) == 2 and all(r[4] == "DROPPED" and "/v1/exhaust-port" in r[5] for r in denied_http)
    assert denied_http[0][1] == "default/xwing-7d9f8b6c4-abcde:41000 (ID:257)"
    assert sum(1 for r in table if r[4] == "DROPPED") == 6     # 403s, SSH drops, Kafka denials

    os.makedirs(ARTIFACTS, exist_ok=True)
    shot = os.path.join(ARTIFACTS, "flows-ui.png")
    assert browser.save_screenshot(shot) and os.path.getsize(shot) > 10_000

    # filters: only drops; the live view picks up new traffic
    sel = browser.find_element("css selector", "select[name=verdict]")
    from selenium.webdriver.support.ui import Select
    Select(sel).select_by_visible_text("DROPPED")
    browser.find_element("css selector", "#filters button").click()
    wait_for(browser, """const v = [...document.querySelectorAll('#flow-rows td.verdict')].map(c => c.textContent);
        return v.length === 6 && v.every(x => x === 'DROPPED')""")
    server.call(obs.ingest_datapath_raw, synthetic.raw_event(258, 257, 8080, drop=True, sport=46000))
    wait_for(browser, """return [...document.querySelectorAll('#flow-rows td.dst')]
        .some(c => c.textContent.includes(':8080'))""", timeout=10)
    wait_for(browser, """return !!document.querySelector('#edges .edge[data-source="default/tiefighter"][data-target="default/xwing"]')""")

    # any CLI filter through the "more" box: drops towards identity 257 only
    browser.find_element("css selector", "#flags").send_keys("--to-identity 257 --from-label=app=tiefighter")
    browser.find_element("css selector", "#filters button").click()
    wait_for(browser, """const r = [...document.querySelectorAll('#flow-rows tr')];
        return r.length === 1 && r[0].querySelector('td.dst').textContent.includes(':8080 (ID:257)')""")
    browser.find_element("css selector", "#flags").clear()

    # a bad filter shows the agent's message
    browser.find_element("css selector", "input[name=http-status]").send_keys("6x")
    browser.find_element("css selector", "#filters button").click()
    msg = wait_for(browser, "return document.getElementById('filter-error').textContent")
    assert "--http-status" in msg
