"""Pure translation of L7 policy into Envoy resources (dicts in proto3 JSON form; no I/O)."""

from xdsserver.translate.build import (ORIGINAL_DST_CLUSTER, STATIC_UPSTREAM_CLUSTER, Resources, chain_name,
                                       listener_name, rbac_rules, translate)
from xdsserver.translate.model import (Direction, EscapedSlashes, HeaderMatch, HTTPRule, PeerRule,
                                       PortPolicy, ProxyOptions, TranslateInput)
from xdsserver.translate.adapt import http_rule_from_policy, port_policies_from_endpoint
from xdsserver.translate.validate import validate_http_rule

__all__ = ["ORIGINAL_DST_CLUSTER", "chain_name", "STATIC_UPSTREAM_CLUSTER", "Resources", "listener_name",
           "rbac_rules", "translate", "Direction", "EscapedSlashes", "HeaderMatch", "HTTPRule",
           "PeerRule", "PortPolicy", "ProxyOptions", "TranslateInput", "validate_http_rule", "http_rule_from_policy",
           "port_policies_from_endpoint"]
