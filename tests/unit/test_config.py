import pytest

from mesh.config import load_config
from mesh.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_defaults_apply_without_file_env_or_flags():
    cfg = load_config(env={})
    assert cfg.state_dir == "/var/lib/ostium"
    assert cfg.pod_cidr == "10.200.0.0/16"
    assert cfg.router == "10.200.0.1"


def test_file_overrides_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "pod_cidr: 10.50.0.0/16\nlog_level: debug\n"), env={})
    assert cfg.pod_cidr == "10.50.0.0/16" and cfg.log_level == "debug"
    assert cfg.router == "10.50.0.1"


def test_environment_overrides_file(tmp_path):
    path = write(tmp_path, "pod_cidr: 10.50.0.0/16\nstate_dir: /from/file\n")
    cfg = load_config(path, env={"OSTIUM_POD_CIDR": "10.60.0.0/16"})
    assert cfg.pod_cidr == "10.60.0.0/16"
    assert cfg.state_dir == "/from/file"


def test_flags_override_environment_and_file(tmp_path):
    path = write(tmp_path, "pod_cidr: 10.50.0.0/16\n")
    cfg = load_config(path, env={"OSTIUM_POD_CIDR": "10.60.0.0/16"}, flags={"pod_cidr": "10.70.0.0/16"})
    assert cfg.pod_cidr == "10.70.0.0/16"


def test_config_file_from_environment_variable(tmp_path):
    path = write(tmp_path, "state_dir: /x\n")
    assert load_config(env={"OSTIUM_CONFIG": path}).state_dir == "/x"


def test_env_booleans_and_integers_are_coerced():
    cfg = load_config(env={"OSTIUM_DATAPATH": "false", "OSTIUM_FLOW_RING_SIZE": "1024"})
    assert cfg.datapath is False and cfg.flow_ring_size == 1024


@pytest.mark.parametrize("text,needle", [
    ("pod_cidr: 10.0.0.1/16\n", "pod_cidr"),
    ("unknown_thing: 1\n", "unknown setting 'unknown_thing'"),
    ("flow_ring_size: lots\n", "flow_ring_size must be an integer"),
    ("datapath: maybe\n", "datapath must be true or false"),
    ("- a\n- b\n", "must be a mapping"),
    ("pod_cidr: [\n", "YAML syntax error"),
    ("service_cidr: 10.200.0.0/24\n", "overlaps pod_cidr"),
    ("router_ip: 10.1.1.1\n", "outside pod_cidr"),
    ("identity_backend: zookeeper\n", "identity_backend"),
    ("envoy_concurrency: -1\n", "envoy_concurrency must be 0 (one worker per CPU) to 256"),
])
def test_bad_config_is_rejected_with_a_clear_message(tmp_path, text, needle):
    with pytest.raises(ConfigError, match=None) as exc:
        load_config(write(tmp_path, text), env={})
    assert needle in str(exc.value)


def test_missing_config_file_is_an_error():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/ostium.yaml", env={})
