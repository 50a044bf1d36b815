"""Kubernetes-style labels and names: validation and parsing.

The rules are Kubernetes' own (apimachinery validation): a label key is an optional DNS-subdomain
prefix and a name of at most 63 characters; a value is empty or at most 63 characters of
alphanumerics, '-', '_' and '.', starting and ending with an alphanumeric.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

from mesh.errors import ValidationError

_NAME_PART = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

NAMESPACE_LABEL = "kubernetes.io/metadata.name"


def label_key_error(key: object) -> str | None:
    """Why `key` is not a valid label key, or None when it is."""
    if not isinstance(key, str):
        return f"label key must be a string, got {type(key).__name__}"
    if not key:
        return "label key must not be empty"
    prefix, sep, name = key.rpartition("/")
    if sep:
        if not prefix:
            return f"label key {key!r}: prefix before '/' must not be empty"
        if len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix):
            return (f"label key {key!r}: prefix {prefix!r} must be a DNS subdomain "
                    "(lowercase alphanumerics, '-' and '.', at most 253 characters)")
    if not name:
        return f"label key {key!r}: name part must not be empty"
    if len(name) > 63:
        return f"label key {key!r}: name part must be at most 63 characters"
    if not _NAME_PART.match(name):
        return (f"label key {key!r}: name part must be alphanumerics, '-', '_' or '.', "
                "starting and ending with an alphanumeric")
    return None


def label_value_error(value: object) -> str | None:
    """Why `value` is not a valid label value, or None when it is."""
    if not isinstance(value, str):
        return f"label value must be a string, got {type(value).__name__}"
    if value == "":
        return None
    if len(value) > 63:
        return f"label value {value!r} must be at most 63 characters"
    if not _NAME_PART.match(value):
        return (f"label value {value!r} must be alphanumerics, '-', '_' or '.', "
                "starting and ending with an alphanumeric")
    return None


def validate_labels(labels: object, path: str = "metadata.labels") -> dict[str, str]:
    """Check a label mapping; return it as a plain dict or raise ValidationError naming the key."""
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise ValidationError(f"must be a mapping of label keys to values, got {type(labels).__name__}", path=path)
    out: dict[str, str] = {}
    for key, value in labels.items():
        err = label_key_error(key)
        if err:
            raise ValidationError(err, path=f"{path}")
        if isinstance(value, bool) or isinstance(value, (int, float)):
            # YAML turns `x: true` or `x: 1` into non-strings; Kubernetes rejects them too.
            raise ValidationError(f"label {key!r}: value must be a string (quote it in YAML), got {value!r}",
                                  path=f"{path}.{key}")
        err = label_value_error(value)
        if err:
            raise ValidationError(err, path=f"{path}.{key}")
        out[key] = value
    return out


def parse_label_args(items: Iterable[str], path: str = "--label") -> dict[str, str]:
    """Parse CLI `k=v` arguments into validated labels."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValidationError(f"{item!r} is not of the form key=value", path=path)
        err = label_key_error(key) or label_value_error(value)
        if err:
            raise ValidationError(err, path=path)
        labels[key] = value
    return labels


def name_error(name: object, what: str = "name") -> str | None:
    """Why `name` is not a valid object name (a DNS-1123 label, at most 63 characters)."""
    if not isinstance(name, str) or not name:
        return f"{what} must be a non-empty string"
    if len(name) > 63:
        return f"{what} {name!r} must be at most 63 characters"
    if not _DNS1123_LABEL.match(name):
        return (f"{what} {name!r} must consist of lowercase alphanumerics and '-', "
                "starting and ending with an alphanumeric")
    return None


def validate_name(name: object, path: str = "metadata.name", what: str = "name") -> str:
    err = name_error(name, what)
    if err:
        raise ValidationError(err, path=path)
    return name  # type: ignore[return-value]


def is_dns_subdomain(value: str) -> bool:
    return 0 < len(value) <= 253 and bool(_DNS1123_SUBDOMAIN.match(value))
