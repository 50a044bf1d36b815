"""Registers the policy kinds with the manifest registry (imported lazily by mesh.manifests)."""

from __future__ import annotations

from mesh.manifests import register_kind
from mesh.policy.parse import CILIUM_API, K8S_API, KIND_CCNP, KIND_CNP, KIND_KNP, KIND_OSTIUM_CCNP, OSTIUM_API, \
    parse_policy

register_kind([CILIUM_API], KIND_CNP, parse_policy, namespaced=True)
register_kind([CILIUM_API], KIND_CCNP, parse_policy, namespaced=False)
register_kind([K8S_API, OSTIUM_API], KIND_KNP, parse_policy, namespaced=True)
register_kind([OSTIUM_API], KIND_OSTIUM_CCNP, parse_policy, namespaced=False)
