"""Registers the gateway kinds with the manifest loader (imported lazily by mesh.manifests)."""

from mesh.gateway.model import (GATEWAY_API, INGRESS_API, KIND_EGRESS, KIND_GATEWAY, KIND_GRPCROUTE,
                                KIND_HTTPROUTE, KIND_INGRESS, KIND_INGRESS_CLASS, KIND_SECRET, OSTIUM_API)
from mesh.gateway.parse import (parse_egress_policy, parse_gateway, parse_grpcroute, parse_httproute,
                                parse_ingress, parse_ingress_class, parse_secret)
from mesh.manifests import register_kind

register_kind([GATEWAY_API, "gateway.networking.k8s.io/v1beta1"], KIND_GATEWAY, parse_gateway)
register_kind([GATEWAY_API, "gateway.networking.k8s.io/v1beta1"], KIND_HTTPROUTE, parse_httproute)
register_kind([GATEWAY_API], KIND_GRPCROUTE, parse_grpcroute)
register_kind([INGRESS_API], KIND_INGRESS, parse_ingress)
register_kind([INGRESS_API], KIND_INGRESS_CLASS, parse_ingress_class, namespaced=False)
register_kind(["v1"], KIND_SECRET, parse_secret)
register_kind([OSTIUM_API], KIND_EGRESS, parse_egress_policy, namespaced=False)
