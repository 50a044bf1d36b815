"""The metrics registry: feeds, a broken source does not break the scrape, names are checked."""

from __future__ import annotations

import pytest

from mesh.flows import synthetic
from mesh.flows.metrics import MetricsRegistry
from mesh.flows.observer import Observer


def scrape(m: MetricsRegistry) -> str:
    return m.render().decode()


def test_feeds_appear_in_the_scrape():
    obs = Observer(capacity=100, enricher=synthetic.enricher())
    synthetic.star_wars(obs, 2)
    m = MetricsRegistry(obs)
    m.set_gauge_source("endpoints", lambda: 3)
    m.set_gauge_source("custom_things", lambda: 7)
    m.set_envoy_state_source(lambda: "failed")
    m.set_bpf_maps_source(lambda: [("ost_ipcache", 10, 40)])
    m.xds_nack("type.googleapis.com/envoy.config.listener.v3.Listener")
    text = scrape(m)
    assert "ostium_endpoints 3.0" in text and "ostium_custom_things 7.0" in text
    assert 'ostium_envoy_state{state="failed"} 1.0' in text and "ostium_envoy_up 0.0" in text
    assert 'ostium_bpf_map_fill_ratio{map_name="ost_ipcache"} 0.25' in text
    assert 'ostium_xds_nacks_total{type="Listener"} 1.0' in text
    assert 'ostium_drops_total{direction="ingress",reason="POLICY_DENIED"} 2.0' in text
    assert 'ostium_flows_processed_total{type="l7",verdict="FORWARDED"} 8.0' in text


def test_broken_source_is_left_out_not_fatal():
    m = MetricsRegistry()
    m.set_gauge_source("endpoints", lambda: 1 / 0)
    m.set_gauge_source("identities", lambda: 5)
    text = scrape(m)
    assert "ostium_endpoints " not in text and "ostium_identities 5.0" in text


def test_bad_source_name():
    with pytest.raises(ValueError, match="lower_snake_case"):
        MetricsRegistry().set_gauge_source("Bad-Name", lambda: 1)
