"""The fast dict → proto filler agrees with protobuf's own json_format on everything we generate."""

from __future__ import annotations

import pytest
from google.protobuf import json_format

from xdsserver import resources as res
from xdsserver.envoy import EnvoyConfig, build_bootstrap
from xdsserver.translate import (Direction, HeaderMatch, HTTPRule, PeerRule, PortPolicy,
                                 ProxyOptions, TranslateInput, translate)

IPCACHE = {2000: ("10.0.0.0/8",), 2001: ("10.0.0.7",), 2002: ("fd00::/64",)}
PORTS = (
    PortPolicy("10.0.0.1", Direction.INGRESS, 80, 15001, (
        PeerRule(frozenset({2000, 2}), (HTTPRule(method="GET", path="/a/.*", host="h",
                                               headers=(HeaderMatch("x"), HeaderMatch("y", "1"))),)),
        PeerRule(None, ()))),
    PortPolicy("fd00::1", Direction.EGRESS, 0, 15002, (PeerRule(frozenset({2002}), ()),)),
)


def outputs():
    for opts in (ProxyOptions(), ProxyOptions(static_upstream=("127.0.0.1", 9), als_cluster=None)):
        r = translate(TranslateInput(PORTS, IPCACHE, opts))
        for type_url, items in r.by_type().items():
            for item in items:
                yield type_url, item
    yield ("type.googleapis.com/envoy.config.bootstrap.v3.Bootstrap",
           build_bootstrap(EnvoyConfig("/tmp/x", "n", "127.0.0.1:1")))


@pytest.mark.parametrize("type_url,data", list(outputs()))
def test_fast_fill_equals_json_format(type_url, data):
    fast = res.from_dict(type_url, data)
    slow = res.message_class(type_url)()
    json_format.ParseDict(data, slow)
    # Compared as JSON: Any payloads are bytes, and json_format packs maps in no fixed order.
    assert json_format.MessageToDict(fast) == json_format.MessageToDict(slow)
    # The fast path is deterministic: equal input, equal bytes (content versions rely on it).
    again = res.from_dict(type_url, data)
    assert fast.SerializeToString(deterministic=True) == again.SerializeToString(deterministic=True)


def test_unknown_field_falls_back_to_a_clear_error():
    from mesh.errors import ValidationError
    with pytest.raises(ValidationError, match="no_such"):
        res.from_dict(res.TypeURL.CLUSTER.value, {"name": "c", "no_such": 1})
