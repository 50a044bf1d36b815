"""Security labels: the label set an identity is derived from.

Format (Cilium's): a mapping ``"source:key" -> value``. Sources:

- ``k8s``: pod labels (``k8s:app=web``), the namespace (``k8s:io.kubernetes.pod.namespace=default``),
  the service account (``k8s:io.cilium.k8s.policy.serviceaccount=sa``) and the namespace's own labels
  (``k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=default``).
- ``reserved``: reserved identities (``reserved:host=""``, ``reserved:world=""`` ...).
- ``cidr``: CIDR identities (``cidr:10.0.0.0/8=""`` plus every shorter prefix, and ``reserved:world``).

A selector key without a source (``app``) matches any source; ``k8s:app`` only k8s; ``reserved:host`` only
reserved. Only security-relevant labels make an identity: a configurable filter drops the others
(the namespace, namespace labels and service account are always kept).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

NAMESPACE_KEY = "io.kubernetes.pod.namespace"
SERVICE_ACCOUNT_KEY = "io.cilium.k8s.policy.serviceaccount"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."
CLUSTER_KEY = "io.cilium.k8s.policy.cluster"

SOURCE_K8S = "k8s"
SOURCE_RESERVED = "reserved"
SOURCE_CIDR = "cidr"
SOURCE_ANY = "any"

# Reserved identities, as DESIGN.md and Cilium number them.
RESERVED_IDENTITIES: dict[str, int] = {
    "host": 1,
    "world": 2,
    "unmanaged": 3,
    "health": 4,
    "init": 5,
    "remote-node": 6,
    "kube-apiserver": 7,
    "ingress": 8,
}
MIN_ALLOCATED_IDENTITY = 256
MAX_ALLOCATED_IDENTITY = 65535
# Locally scoped identities (CIDR identities): never shared across nodes, as in Cilium.
LOCAL_IDENTITY_BASE = 1 << 24

# Labels Kubernetes or controllers set that say nothing about security and would only split identities.
DEFAULT_EXCLUDED_LABEL_PATTERNS = (
    r"^pod-template-hash$",
    r"^controller-revision-hash$",
    r"^pod-template-generation$",
    r"^statefulset\.kubernetes\.io/pod-name$",
    r"^job-name$",
    r"^controller-uid$",
    r"^batch\.kubernetes\.io/",
    r"^io\.kubernetes\.",
)


@dataclass(frozen=True, slots=True)
class LabelFilter:
    """Which pod labels are security-relevant. `include` (when set) keeps only matching keys;
    `exclude` drops matching keys. Patterns are Python regexes searched in the key."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = DEFAULT_EXCLUDED_LABEL_PATTERNS
    _inc: tuple[re.Pattern, ...] = field(init=False, repr=False, compare=False)
    _exc: tuple[re.Pattern, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_inc", tuple(re.compile(p) for p in self.include))
        object.__setattr__(self, "_exc", tuple(re.compile(p) for p in self.exclude))

    def keeps(self, key: str) -> bool:
        if self._inc and not any(p.search(key) for p in self._inc):
            return False
        return not any(p.search(key) for p in self._exc)


def security_labels(pod_labels: Mapping[str, str], namespace: str,
                    namespace_labels: Mapping[str, str] | None = None,
                    service_account: str | None = None,
                    label_filter: LabelFilter | None = None) -> dict[str, str]:
    """The labels an endpoint's identity is derived from (sorted by key)."""
    flt = label_filter or LabelFilter()
    out: dict[str, str] = {}
    for key, value in pod_labels.items():
        if flt.keeps(key):
            out[f"{SOURCE_K8S}:{key}"] = value
    out[f"{SOURCE_K8S}:{NAMESPACE_KEY}"] = namespace
    ns_labels = dict(namespace_labels or {})
    ns_labels.setdefault("kubernetes.io/metadata.name", namespace)
    for key, value in ns_labels.items():
        out[f"{SOURCE_K8S}:{NAMESPACE_LABELS_PREFIX}{key}"] = value
    if service_account:
        out[f"{SOURCE_K8S}:{SERVICE_ACCOUNT_KEY}"] = service_account
    return dict(sorted(out.items()))


def reserved_labels(name: str) -> dict[str, str]:
    """Labels of a reserved identity (``reserved:host`` ...)."""
    return {f"{SOURCE_RESERVED}:{name}": ""}


def split_label_key(key: str) -> tuple[str, str]:
    """``"k8s:app"`` → ``("k8s", "app")``; ``"app"`` → ``("any", "app")``.

    Only known sources are split off, so a key such as ``app.kubernetes.io/name`` (no colon) or a
    Kubernetes key with a colon elsewhere is kept whole.
    """
    source, sep, rest = key.partition(":")
    if sep and source in (SOURCE_K8S, SOURCE_RESERVED, SOURCE_CIDR, SOURCE_ANY, "unspec", "container"):
        return (SOURCE_ANY if source == "unspec" else source), rest
    return SOURCE_ANY, key


def labels_key(labels: Mapping[str, str]) -> str:
    """A canonical string for a label set: the allocator's key (same set → same key on every node)."""
    return ";".join(f"{k}={v}" for k, v in sorted(labels.items()))
