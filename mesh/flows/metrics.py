"""Prometheus metrics of the agent: a registry the agent feeds, rendered on GET /metrics.

Three kinds of input, so the hot paths pay nothing at scrape time and little at event time:
  - gauge sources: callables read at scrape time (`set_gauge_source("endpoints", fn)`);
  - events: small methods the components call (`xds_ack(type_url)`, `observe_policy_regeneration(s)`);
  - flow counters: kept by the Observer as plain dicts during ingest, turned into metrics here.

Names follow Prometheus conventions: `ostium_` prefix, `_total` counters, base units (`_seconds`,
ratios 0-1). `promtool check metrics` passes on a scrape (tests/e2e/test_metrics_prometheus.py).

No global state: each MetricsRegistry has its own prometheus_client CollectorRegistry.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mesh.flows.model import DROP_REASONS

if TYPE_CHECKING:  # pragma: no cover
    from mesh.flows.observer import Observer

CONTENT_TYPE = CONTENT_TYPE_LATEST
ENVOY_STATES = ("stopped", "starting", "running", "restarting", "failed")

# Gauge sources with a fixed meaning: name → (metric name, help). Other names are accepted as
# `ostium_<name>` with a generic help, so a component can add one without touching this file.
GAUGE_SOURCES: dict[str, tuple[str, str]] = {
    "endpoints": ("ostium_endpoints", "Endpoints managed by this agent."),
    "identities": ("ostium_identities", "Security identities allocated (all nodes)."),
    "policy_revision": ("ostium_policy_revision", "Revision of the policy repository."),
    "policies": ("ostium_policies", "Policies loaded."),
    "services": ("ostium_services", "Services known to the agent."),
    "ipcache_entries": ("ostium_ipcache_entries", "Entries in the ipcache (IP/CIDR to identity)."),
}
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_DIRECTIONS = {0: "ingress", 1: "egress"}
_TYPES = {1: "trace", 2: "drop"}
_VERDICTS = {1: "FORWARDED", 2: "REDIRECTED", 3: "DROPPED"}


def _le(v: float) -> str:
    return repr(float(v))


def _type_short(type_url: str) -> str:
    """type.googleapis.com/envoy.config.listener.v3.Listener → Listener."""
    return type_url.rsplit("/", 1)[-1].rsplit(".", 1)[-1] or "unknown"


class MetricsRegistry:
    def __init__(self, observer: "Observer | None" = None) -> None:
        self.observer = observer
        self.registry = CollectorRegistry(auto_describe=False)
        self._gauges: dict[str, tuple[str, str, Callable[[], Any]]] = {}
        self._bpf_maps: Callable[[], Iterable[Any]] | None = None
        self._envoy_state: Callable[[], Any] | None = None
        self.envoy_admin_url: Callable[[], str | None] | None = None
        self._xds_acks: dict[str, int] = {}
        self._xds_nacks: dict[str, int] = {}
        self._policy_regen = Histogram(
            "ostium_policy_regeneration_duration_seconds",
            "Time to recompute endpoint policy and apply it to the datapath and Envoy.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry)
        self._xds_push = Histogram(
            "ostium_xds_push_duration_seconds",
            "Time from sending an xDS update to Envoy's ACK or NACK.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
            registry=self.registry)
        self.registry.register(_Collector(self))

    # ---- feeds ----
    def set_gauge_source(self, name: str, fn: Callable[[], float | int | None]) -> None:
        """A gauge read at scrape time. Known names: see GAUGE_SOURCES; others become ostium_<name>."""
        if name in GAUGE_SOURCES:
            metric, help_ = GAUGE_SOURCES[name]
        else:
            if not _NAME.match(name):
                raise ValueError(f"metric source name {name!r}: use lower_snake_case")
            metric = name if name.startswith("ostium_") else f"ostium_{name}"
            help_ = f"{name.replace('_', ' ').capitalize()} (agent gauge)."
        self._gauges[name] = (metric, help_, fn)

    def set_bpf_maps_source(self, fn: Callable[[], Iterable[Any]]) -> None:
        """fn() → Datapath.maps_info()-like rows: dicts with name, entries, max_entries (or tuples)."""
        self._bpf_maps = fn

    def set_envoy_state_source(self, fn: Callable[[], Any]) -> None:
        """fn() → one of ENVOY_STATES (a str or a str enum), or None when there is no Envoy."""
        self._envoy_state = fn

    def set_envoy_admin_url(self, url: str | Callable[[], str | None] | None) -> None:
        """Envoy's admin base URL (http://127.0.0.1:PORT) for GET /metrics/envoy."""
        self.envoy_admin_url = url if callable(url) or url is None else (lambda u=url: u)

    def xds_ack(self, type_url: str, n: int = 1) -> None:
        k = _type_short(type_url)
        self._xds_acks[k] = self._xds_acks.get(k, 0) + n

    def xds_nack(self, type_url: str, n: int = 1) -> None:
        k = _type_short(type_url)
        self._xds_nacks[k] = self._xds_nacks.get(k, 0) + n

    def observe_xds_push(self, seconds: float) -> None:
        self._xds_push.observe(seconds)

    def observe_policy_regeneration(self, seconds: float) -> None:
        self._policy_regen.observe(seconds)

    # ---- output ----
    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Collector:
    """Builds the gauge-source, xDS and flow metrics at scrape time."""

    def __init__(self, m: MetricsRegistry) -> None:
        self.m = m

    def collect(self):
        m = self.m
        for name, (metric, help_, fn) in sorted(m._gauges.items()):
            try:
                value = fn()
            except Exception:   # a broken source must not break the scrape; it is just absent
                continue
            if value is not None:
                g = GaugeMetricFamily(metric, help_)
                g.add_metric([], float(value))
                yield g
        yield from self._bpf()
        yield from self._envoy()
        acks = CounterMetricFamily("ostium_xds_acks", "xDS updates Envoy acknowledged, by resource type.",
                                   labels=["type"])
        for k, v in sorted(m._xds_acks.items()):
            acks.add_metric([k], v)
        yield acks
        nacks = CounterMetricFamily("ostium_xds_nacks", "xDS updates Envoy rejected, by resource type.",
                                    labels=["type"])
        for k, v in sorted(m._xds_nacks.items()):
            nacks.add_metric([k], v)
        yield nacks
        if m.observer is not None:
            yield from self._flows(m.observer)

    def _bpf(self):
        if self.m._bpf_maps is None:
            return
        try:
            rows = list(self.m._bpf_maps())
        except Exception:
            return
        entries = GaugeMetricFamily("ostium_bpf_map_entries", "Entries in a BPF map.", labels=["map_name"])
        cap = GaugeMetricFamily("ostium_bpf_map_capacity", "Maximum entries of a BPF map.", labels=["map_name"])
        ratio = GaugeMetricFamily("ostium_bpf_map_fill_ratio", "Fill of a BPF map (entries / capacity).",
                                  labels=["map_name"])
        for row in rows:
            if isinstance(row, Mapping):
                name, n, mx = row.get("name"), row.get("entries"), row.get("max_entries")
            else:
                name, n, mx = row
            if name is None or mx is None:
                continue
            cap.add_metric([str(name)], float(mx))
            if n is not None:   # ring buffers have no entry count
                entries.add_metric([str(name)], float(n))
                ratio.add_metric([str(name)], float(n) / float(mx) if mx else 0.0)
        yield entries
        yield cap
        yield ratio

    def _envoy(self):
        if self.m._envoy_state is None:
            return
        try:
            state = self.m._envoy_state()
        except Exception:
            return
        s = getattr(state, "value", state)
        s = str(s).lower() if s is not None else ""
        g = GaugeMetricFamily("ostium_envoy_state", "1 for Envoy's current state, 0 for the others.",
                              labels=["state"])
        for known in ENVOY_STATES:
            g.add_metric([known], 1.0 if s == known else 0.0)
        yield g
        up = GaugeMetricFamily("ostium_envoy_up", "1 if the node-local Envoy is running.")
        up.add_metric([], 1.0 if s == "running" else 0.0)
        yield up

    def _flows(self, obs: "Observer"):
        flows = CounterMetricFamily("ostium_flows_processed", "Flows observed, by type and verdict.",
                                    labels=["type", "verdict"])
        drops = CounterMetricFamily("ostium_drops", "Dropped flows, by reason and direction.",
                                    labels=["reason", "direction"])
        per_flow: dict[tuple[str, str], int] = {}
        per_drop: dict[tuple[str, str], int] = {}
        for (ty, verdict, reason, d), n in list(obs.dp_counts.items()):
            k = (_TYPES.get(ty, str(ty)), _VERDICTS.get(verdict, "ERROR"))
            per_flow[k] = per_flow.get(k, 0) + n
            if verdict == 3:
                dk = (DROP_REASONS.get(reason, (f"REASON_{reason}", ""))[0], _DIRECTIONS.get(d, "unknown"))
                per_drop[dk] = per_drop.get(dk, 0) + n
        for (verdict, reason, direction), n in list(obs.l7_counts.items()):
            k = ("l7", verdict)
            per_flow[k] = per_flow.get(k, 0) + n
            if verdict == "DROPPED":
                d = direction.lower() if direction in ("INGRESS", "EGRESS") else "unknown"
                dk = (reason or "L7_POLICY_DENIED", d)
                per_drop[dk] = per_drop.get(dk, 0) + n
        for k, n in sorted(per_flow.items()):
            flows.add_metric(list(k), n)
        for k, n in sorted(per_drop.items()):
            drops.add_metric(list(k), n)
        yield flows
        yield drops
        http = CounterMetricFamily(
            "ostium_http_requests", "HTTP/gRPC requests seen by the L7 proxy.",
            labels=["method", "code", "source_workload", "destination_workload", "verdict"])
        for (method, code, src, dst, verdict), n in sorted(obs.http_counts.items()):
            http.add_metric([method, str(code), src, dst, verdict], n)
        yield http
        lat = HistogramMetricFamily("ostium_http_request_duration_seconds",
                                    "Latency of HTTP/gRPC requests through the L7 proxy.",
                                    labels=["method", "destination_workload"])
        from mesh.flows.observer import LATENCY_BUCKETS
        for (method, dst), (counts, total) in sorted(obs.http_latency.items()):
            cum, buckets = 0, []
            for le, n in zip(LATENCY_BUCKETS, counts):
                cum += n
                buckets.append((_le(le), cum))
            cum += counts[-1]
            buckets.append(("+Inf", cum))
            lat.add_metric([method, dst], buckets, total[0])
        yield lat
        kafka = CounterMetricFamily("ostium_kafka_requests", "Kafka requests seen by the Kafka proxy.",
                                    labels=["api_key", "topic", "verdict"])
        for (api, topic, verdict), n in sorted(obs.kafka_counts.items()):
            kafka.add_metric([api, topic, verdict], n)
        yield kafka
        lost = CounterMetricFamily("ostium_flows_lost", "Flows overwritten in the full flow ring.")
        lost.add_metric([], obs.lost)
        yield lost
        st = obs.status()
        sub_lost = CounterMetricFamily("ostium_flow_subscriber_lost",
                                       "Flows not delivered to slow followers (their queue was full).")
        sub_lost.add_metric([], st["subscriber_lost"])
        yield sub_lost
        cap = GaugeMetricFamily("ostium_flows_ring_capacity", "Capacity of the flow ring.")
        cap.add_metric([], obs.capacity)
        yield cap
        stored = GaugeMetricFamily("ostium_flows_ring_stored", "Flows held in the flow ring.")
        stored.add_metric([], obs.stored)
        yield stored
        subs = GaugeMetricFamily("ostium_flow_subscribers", "Clients following the flow stream.")
        subs.add_metric([], obs.subscribers)
        yield subs
