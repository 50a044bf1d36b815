"""Reject HTTP rules Envoy would NACK, before they reach Envoy (pure)."""

from __future__ import annotations

import re

from mesh.errors import ValidationError
from xdsserver.translate.model import HTTPRule

# Envoy refuses RE2 programs above this size by default (runtime re2.max_program_size.error_level).
MAX_REGEX_PROGRAM_SIZE = 100
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9a-zA-Z]+$")  # RFC 9110 field-name
_PSEUDO = {":authority", ":method", ":path", ":scheme"}


# The characters that make a rule pattern a regex; without any, translate emits an exact match
# (build._regex), which Envoy does not compile, so no program-size limit applies to it.
REGEX_META = frozenset("\\.^$|?*+()[]{}")


def is_literal(value: str) -> bool:
    """A pattern that can only fully match itself (sent to Envoy as an exact match)."""
    return not REGEX_META.intersection(value)


def check_regex(value: str, path: str) -> None:
    """RE2 syntax (the engine Envoy uses) and Envoy's program-size limit.

    mesh/policy/parse.py calls this for `rules.http[].method/path/host`, so a policy Envoy would
    refuse is rejected by `ostium policy apply` with the field path, before anything changes.
    """
    import re2  # google-re2: the same library Envoy links

    opts = re2.Options()
    opts.log_errors = False   # reported with the field path instead of printed on stderr
    try:
        compiled = re2.compile(value, options=opts)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode(errors="replace")
        raise ValidationError(f"invalid regular expression {value!r}: {reason}", path=path) from None
    size = getattr(compiled, "programsize", 0)
    if size > MAX_REGEX_PROGRAM_SIZE and not is_literal(value):
        raise ValidationError(f"regular expression {value!r} is too complex for Envoy "
                              f"(RE2 program size {size} > {MAX_REGEX_PROGRAM_SIZE})", path=path)


def validate_http_rule(rule: HTTPRule, path: str = "http") -> None:
    """Raise ValidationError naming the field (``<path>.method``, ``<path>.headers[1]``, ...)."""
    for field_name in ("method", "path", "host"):
        value = getattr(rule, field_name)
        if value:
            check_regex(value, f"{path}.{field_name}")
    for i, h in enumerate(rule.headers):
        hp = f"{path}.headers[{i}]"
        name = h.name
        if not (name.lower() in _PSEUDO or _TOKEN.match(name)):
            raise ValidationError(f"invalid header name {name!r}", path=hp)
        if h.value is not None and any(c in h.value for c in "\r\n\0"):
            raise ValidationError(f"header {name!r}: value contains CR, LF or NUL", path=hp)
