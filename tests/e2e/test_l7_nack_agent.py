"""Envoy's failures as a user of the agent sees them: a resource Envoy rejects (NACK) leaves the last good
config enforcing and `ostium status` shows Envoy's message; an Envoy binary that is missing or fails to start
is a clear error in `ostium status` while the agent (L3/L4) keeps working.

The NACK needs a resource that passes Ostium's validation and that Envoy refuses. Validation rejects what a
stock Envoy would (RE2 program size > 100), so the test runs Envoy with a stricter runtime limit (30) through
a wrapper given as the agent's Envoy binary: the same situation as an operator tightening Envoy's limits, or
an Envoy version whose checks the agent does not know yet.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.agentproc import AgentProcess, wait_for
from xdsserver.envoy import find_envoy_binary
from xdsserver.translate import HTTPRule

pytestmark = pytest.mark.timeout(150)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "starwars"
VIP = "10.96.0.80"
STRICT_RUNTIME = "{layered_runtime: {layers: [{name: ostium-test-strict, static_layer: " \
                 "{re2.max_program_size.error_level: 30}}]}}"
# Valid RE2, program size 37: under Ostium's limit (100), over the strict Envoy's (30).
WIDE_PATH = "/v1/(request-landing|exhaust-port)"
WIDER_POLICY = f"""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: rule1}}
spec:
  endpointSelector:
    matchLabels: {{org: empire, class: deathstar}}
  ingress:
  - fromEndpoints:
    - matchLabels: {{org: empire}}
    toPorts:
    - ports: [{{port: "80", protocol: TCP}}]
      rules:
        http:
        - method: "POST|PUT"
          path: "{WIDE_PATH}"
"""


class EnvAgent(AgentProcess):
    """An AgentProcess whose agent runs with extra environment variables."""

    def __init__(self, extra_env: dict[str, str], **kw) -> None:
        super().__init__(**kw)
        self.extra_env = extra_env

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.extra_env}


def write_script(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(path)


def envoy_status(a: AgentProcess) -> dict:
    return a.cli_json("status")["components"]["envoy"]


def code(a: AgentProcess, method: str, path: str) -> str:
    r = a.raw_exec("default.tiefighter", "curl", "-s", "-o", "/dev/null", "--max-time", "2", "-X", method,
                   "-w", "%{http_code}", f"http://{VIP}{path}")
    return r.stdout


def applied(a: AgentProcess) -> bool:
    st = a.cli_json("status")["components"]
    return st["envoy"]["applied_policy_revision"] == st["policy"]["revision"] and not st["envoy"]["xds_pending"]


@pytest.fixture
def strict_node(tmp_path):
    wrapper = write_script(tmp_path / "envoy-strict",
                           f"#!/bin/sh\nexec {find_envoy_binary()} \"$@\" --config-yaml '{STRICT_RUNTIME}'\n")
    a = EnvAgent({"OSTIUM_ENVOY_BINARY": wrapper}, pod_cidr="10.218.0.0/24")
    try:
        a.start()
        wait_for(lambda: envoy_status(a)["state"] == "running", 20, what="Envoy running")
        a.cli("apply", "-f", str(EXAMPLES / "starwars.yaml"))
        wait_for(lambda: code(a, "GET", "/v1") == "200", 20, what="deathstar via the VIP")
        yield a
    finally:
        a.cleanup()


@pytest.mark.root
def test_nacked_update_keeps_the_last_good_config_and_status_shows_envoys_message(strict_node):
    a = strict_node
    a.cli("apply", "-f", str(EXAMPLES / "policy-l7.yaml"))
    wait_for(lambda: applied(a), 15, what="Envoy to acknowledge the L7 policy")
    wait_for(lambda: code(a, "PUT", "/v1/exhaust-port") == "403", 20, what="the L7 policy enforced")
    assert envoy_status(a)["xds_nacked"] == 0

    # The wider rule would let PUT /v1/exhaust-port through; Envoy refuses it.
    a.cli("apply", "-f", "-", input=WIDER_POLICY)

    def nacked():
        st = envoy_status(a)
        return st if st.get("xds_nacked") else None
    st = wait_for(nacked, 15, what="Envoy's NACK in `ostium status`")
    messages = " ".join(st["nacked"])
    assert "RE2 program size of 37 > max program size of 30" in messages, st
    assert WIDE_PATH in messages
    # The agent's own status output (table) shows it too, for a user who does not ask for JSON.
    table = a.cli("status").stdout
    assert "RE2 program size of 37" in table, table
    # The last good config keeps enforcing: landing allowed, the exhaust port still denied.
    for _ in range(3):
        assert code(a, "POST", "/v1/request-landing") == "200"
        assert code(a, "PUT", "/v1/exhaust-port") == "403"

    # A good update after the NACK is accepted and clears it.
    a.cli("apply", "-f", str(EXAMPLES / "policy-l3l4.yaml"))
    wait_for(lambda: envoy_status(a).get("xds_nacked") == 0 and "nacked" not in envoy_status(a), 15,
             what="the NACK cleared by a good update")
    wait_for(lambda: code(a, "PUT", "/v1/exhaust-port") == "503", 20, what="L3/L4 only: the deathstar answers")


@pytest.mark.root
@pytest.mark.parametrize("kind", ["missing", "fails"])
def test_envoy_missing_or_failing_to_start_is_a_clear_error_and_l3l4_keeps_working(tmp_path, kind):
    if kind == "missing":
        binary = str(tmp_path / "no-such-envoy")
        expected = "does not exist or is not executable"
    else:
        binary = write_script(tmp_path / "envoy-broken",
                              "#!/bin/sh\necho 'error initializing configuration: broken on purpose' >&2\nexit 1\n")
        expected = "Envoy exited with code 1 while starting"
    a = EnvAgent({"OSTIUM_ENVOY_BINARY": binary}, pod_cidr="10.219.0.0/24")
    try:
        a.start()
        st = wait_for(lambda: (s := envoy_status(a)).get("envoy_error") and s, 20, what="Envoy's error in status")
        assert st["state"] == "failed", st
        assert expected in st["envoy_error"] and st["envoy_binary"] == binary, st
        if kind == "fails":
            assert "broken on purpose" in st["envoy_error"]  # Envoy's own words, from its log
        table = a.cli("status").stdout
        assert expected in table and binary in table, table
        # The agent keeps serving L3/L4: endpoints, a service VIP.
        a.cli("apply", "-f", str(EXAMPLES / "starwars.yaml"))
        wait_for(lambda: code(a, "POST", "/v1/request-landing") == "200", 20, what="deathstar via the VIP")
    finally:
        a.cleanup()
    assert not os.path.exists(a.state_dir)



# --- validation agrees with the real Envoy (no root, no agent) ---------------------------------------------

AGREEMENT = [
    HTTPRule(method="POST", path="/v1/request-landing"),
    HTTPRule(method="GET|POST", path="/public/.*", host="(api|www)\\.example\\.com"),
    HTTPRule(path="/" + "a" * 120),                           # a literal: an exact match, never compiled
    HTTPRule(path="(a|b|c|d|e|f)+x{1,46}"),                  # program size 99: the largest Envoy takes
    HTTPRule(path="(a|b|c|d|e|f)+x{1,47}"),                  # 101
    HTTPRule(method="(GET|POST|PUT|DELETE|PATCH|HEAD)+" * 3),   # 87
    HTTPRule(method="(GET|POST|PUT|DELETE|PATCH|HEAD)+" * 4),   # 115
    HTTPRule(host="(" + "|".join(f"h{i}x" for i in range(30)) + ")\\.example\\.com"),  # 81
    HTTPRule(host="(" + "|".join(f"h{i}x" for i in range(40)) + ")\\.example\\.com"),  # 102
]


def envoy_accepts(rule: HTTPRule, tmp: Path) -> tuple[bool, str]:
    """Translate one rule as the agent does, inline its RouteConfiguration, `envoy --mode validate` it."""
    import json

    from xdsserver.translate import Direction, PeerRule, PortPolicy, ProxyOptions, TranslateInput, translate
    res = translate(TranslateInput(ports=(PortPolicy("10.0.0.1", Direction.INGRESS, 80, 15001,
                                                     (PeerRule(None, (rule,)),)),),
                                   options=ProxyOptions(als_cluster=None)))
    listener = json.loads(json.dumps(res.listeners[0]))
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    del hcm["rds"]
    hcm["route_config"] = res.routes[0]
    cfg = tmp / "envoy.json"
    cfg.write_text(json.dumps({"static_resources": {"listeners": [listener], "clusters": list(res.clusters)}}))
    r = subprocess.run([find_envoy_binary(), "--mode", "validate", "-c", str(cfg), "--disable-hot-restart",
                        "-l", "error"], capture_output=True, text=True, timeout=60)
    return r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("rule", AGREEMENT, ids=[str(i) for i in range(len(AGREEMENT))])
def test_validation_rejects_exactly_the_regexes_envoy_refuses(rule, tmp_path):
    from mesh.errors import ValidationError
    from xdsserver.translate import validate_http_rule
    try:
        validate_http_rule(rule)
        ours = True
    except ValidationError as exc:
        ours = False
        assert "too complex for Envoy" in exc.message
    accepted, log = envoy_accepts(rule, tmp_path)
    assert ours == accepted, log
    if not accepted:
        assert "RE2 program size" in log
