"""Multi-document YAML manifests: loading, kind dispatch, all-or-nothing validation.

A kind is registered with a parser that turns one document body into a typed object or raises
`ValidationError` with a field path relative to the document. `parse_documents` validates every
document before anything is applied, so a bad document in a multi-document apply changes nothing.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from mesh.errors import ManifestError, ValidationError
from mesh.manifest_sources import read_sources

# PyYAML is imported where YAML is parsed: `ostium policy apply` only reads files and sends their text
# to the agent (which parses it), and importing yaml would cost that command ~20 ms of start time.

# Modules that register kinds when imported. Imported lazily so that the CLI starts fast.
_KIND_MODULES = (
    "mesh.endpoints.manifest",
    "mesh.services.manifest",
    "mesh.policy.kinds",
    "mesh.gateway.kinds",
)


@dataclass(frozen=True, slots=True)
class Document:
    """One YAML document as the user wrote it."""

    source: str
    index: int  # 0-based position in its source
    body: Any

    @property
    def kind(self) -> str:
        return str(self.body.get("kind", "")) if isinstance(self.body, dict) else ""

    @property
    def api_version(self) -> str:
        return str(self.body.get("apiVersion", "")) if isinstance(self.body, dict) else ""

    @property
    def ref(self) -> str:
        """How errors name this document: `file.yaml#2 (Kind ns/name)`."""
        what = ""
        if isinstance(self.body, dict):
            meta = self.body.get("metadata") if isinstance(self.body.get("metadata"), dict) else {}
            name = meta.get("name", "")
            ns = meta.get("namespace", "")
            label = f"{ns}/{name}" if ns else str(name)
            what = f" ({self.kind or '?'} {label})".rstrip() if (self.kind or name) else ""
        return f"{self.source}#{self.index + 1}{what}"

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "index": self.index, "body": self.body}

    @classmethod
    def from_json(cls, data: Any) -> "Document":
        if not isinstance(data, dict) or "body" not in data:
            raise ManifestError("each document must be an object with 'source', 'index' and 'body'")
        return cls(source=str(data.get("source", "<api>")), index=int(data.get("index", 0)), body=data["body"])


@dataclass(frozen=True, slots=True)
class KindSpec:
    api_versions: tuple[str, ...]
    kind: str
    parse: Callable[[Document], Any]
    namespaced: bool = True


@dataclass(frozen=True, slots=True)
class Parsed:
    """A validated document: its kind, its key and the typed object its parser returned."""

    doc: Document
    kind: str
    namespace: str
    name: str
    obj: Any

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)


_REGISTRY: dict[tuple[str, str], KindSpec] = {}
_loaded = False


def register_kind(api_versions: Sequence[str], kind: str, parse: Callable[[Document], Any], *,
                  namespaced: bool = True) -> None:
    spec = KindSpec(tuple(api_versions), kind, parse, namespaced)
    for api in api_versions:
        _REGISTRY[(api, kind)] = spec


def _load_kind_modules() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _KIND_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # a kind module not written yet
            if exc.name != mod:
                raise


def known_kinds() -> list[str]:
    _load_kind_modules()
    return sorted({f"{api} {kind}" for (api, kind) in _REGISTRY})


def load_documents(paths: Iterable[str], stdin_text: str | None = None) -> list[Document]:
    """Read every YAML/JSON document from files and directories (recursively, sorted)."""
    return documents_from_sources(read_sources(paths, stdin_text))


def documents_from_sources(sources: Iterable[tuple[str, str]]) -> list[Document]:
    docs: list[Document] = []
    for source, text in sources:
        docs.extend(parse_yaml_text(text, source))
    return docs


def require_kinds(docs: Iterable[Document], kinds: Iterable[str], what: str, hint: str) -> None:
    """Every document must be of one of `kinds` (`ostium policy apply` takes policies only): the error
    names the first that is not, e.g. "Endpoint is not a policy kind (use `ostium apply`)"."""
    allowed = frozenset(kinds)
    for d in docs:
        if d.kind not in allowed:
            raise ValidationError(f"{d.kind or 'a document without kind'} is not {what} ({hint})", path="kind",
                                  document=d.ref)


def parse_yaml_text(text: str, source: str) -> list[Document]:
    import yaml

    try:
        bodies = _load_yaml_all(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ManifestError(f"YAML syntax error at{where}: {problem}", document=source) from None
    docs = []
    for i, body in enumerate(bodies):
        if body is None:  # empty document between '---' separators
            continue
        if isinstance(body, dict) and body.get("kind") == "List" and isinstance(body.get("items"), list):
            for item in body["items"]:
                docs.append(Document(source, len(docs), item))
            continue
        docs.append(Document(source, i, body))
    return docs


def parse_document(doc: Document) -> Parsed:
    _load_kind_modules()
    body = doc.body
    if not isinstance(body, dict):
        raise ManifestError(f"a manifest must be a mapping, got {type(body).__name__}", document=doc.ref)
    api, kind = body.get("apiVersion"), body.get("kind")
    if not isinstance(api, str) or not api:
        raise ManifestError("missing apiVersion", path="apiVersion", document=doc.ref)
    if not isinstance(kind, str) or not kind:
        raise ManifestError("missing kind", path="kind", document=doc.ref)
    spec = _REGISTRY.get((api, kind))
    if spec is None:
        versions = sorted(a for (a, k) in _REGISTRY if k == kind)
        hint = f" (known apiVersions for {kind}: {', '.join(versions)})" if versions else \
            f" (known kinds: {', '.join(sorted({k for (_a, k) in _REGISTRY}))})"
        raise ManifestError(f"unknown kind {api}/{kind}{hint}", path="kind", document=doc.ref)
    meta = body.get("metadata")
    if not isinstance(meta, dict):
        raise ManifestError("metadata must be a mapping with a name", path="metadata", document=doc.ref)
    try:
        obj = spec.parse(doc)
    except ValidationError as exc:
        raise exc.with_document(doc.ref) from None
    name = getattr(obj, "name", None) or meta.get("name", "")
    namespace = getattr(obj, "namespace", None) if spec.namespaced else ""
    if namespace is None:
        namespace = meta.get("namespace") or "default"
    return Parsed(doc=doc, kind=kind, namespace=namespace or "", name=str(name), obj=obj)


def parse_documents(docs: Sequence[Document], *, allow_duplicates: bool = False) -> list[Parsed]:
    """Validate every document; raise on the first bad one, so nothing is applied.
    With `allow_duplicates` (deletes) an object named twice is kept once."""
    parsed = [parse_document(d) for d in docs]
    seen: dict[tuple[str, str, str], Parsed] = {}
    if allow_duplicates:
        return [seen.setdefault(p.key, p) for p in parsed if p.key not in seen]
    for p in parsed:
        if p.key in seen:
            first = seen[p.key]
            raise ManifestError(f"{p.kind} {p.namespace + '/' if p.namespace else ''}{p.name} is defined twice "
                                f"(also in {first.doc.ref})", path="metadata.name", document=p.doc.ref)
        seen[p.key] = p
    return parsed


# --- helpers for kind parsers -------------------------------------------------------------

def check_fields(obj: Any, path: str, allowed: Iterable[str], required: Iterable[str] = ()) -> dict:
    """`obj` must be a mapping with only `allowed` keys and every `required` one."""
    if not isinstance(obj, dict):
        raise ValidationError(f"must be a mapping, got {type(obj).__name__}", path=path)
    allowed_set = set(allowed)
    for key in obj:
        if key not in allowed_set:
            raise ValidationError(f"unknown field {key!r} (allowed: {', '.join(sorted(allowed_set))})",
                                  path=f"{path}.{key}" if path else str(key))
    for key in required:
        if key not in obj:
            raise ValidationError("required field is missing", path=f"{path}.{key}" if path else key)
    return obj


def expect_type(value: Any, types: type | tuple[type, ...], path: str, what: str) -> Any:
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ValidationError(f"must be {what}, got {value!r}", path=path)
    if not isinstance(value, types):
        raise ValidationError(f"must be {what}, got {type(value).__name__} {value!r}", path=path)
    return value


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    name: str
    namespace: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


def parse_metadata(body: dict, *, namespaced: bool = True, name_check: Callable[[Any], str | None] | None = None) -> ObjectMeta:
    """Validate `metadata` (name, namespace, labels, annotations; other k8s fields are tolerated)."""
    from mesh.labels import name_error, validate_labels, is_dns_subdomain

    meta = body.get("metadata")
    if not isinstance(meta, dict):
        raise ValidationError("must be a mapping", path="metadata")
    name = meta.get("name")
    check = name_check or (lambda n: None if isinstance(n, str) and is_dns_subdomain(n) else
                           f"name {n!r} must be a DNS subdomain (lowercase alphanumerics, '-' and '.')")
    err = check(name)
    if err:
        raise ValidationError(err, path="metadata.name")
    ns = ""
    if namespaced:
        ns = meta.get("namespace", "default")
        err = name_error(ns, "namespace")
        if err:
            raise ValidationError(err, path="metadata.namespace")
    labels = validate_labels(meta.get("labels"), "metadata.labels")
    ann = meta.get("annotations") or {}
    if not isinstance(ann, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in ann.items()):
        raise ValidationError("must be a mapping of strings to strings", path="metadata.annotations")
    return ObjectMeta(name=name, namespace=ns, labels=labels, annotations=dict(ann))


# --- YAML ---------------------------------------------------------------------------------------------

_STR_TAG = "tag:yaml.org,2002:str"
# Scalars PyYAML's SafeConstructor turns into Python values on its own (no effect on the mapping around them).
_PLAIN_SCALAR_TAGS = frozenset("tag:yaml.org,2002:" + t for t in ("null", "bool", "int", "float", "timestamp"))


class _Fallback(Exception):
    """Input the fast builder leaves to PyYAML's own loader."""


def _load_yaml_all(text: str) -> list[Any]:
    """`list(yaml.safe_load_all(text))` with libyaml, about twice as fast for large policies.

    PyYAML's loader composes a node tree and then walks it with its generic constructor (~13 ms of Python
    for a 1,000-rule policy). Here the objects are built straight from libyaml's events, each scalar
    resolved by PyYAML's own resolver and constructor, so the values are those safe_load gives. Anything
    beyond plain mappings, sequences and scalars (anchors and aliases, explicit tags, merge keys `<<`,
    `=` keys, unhashable keys) is handed to PyYAML's loader whole: the result, or the error, is then
    exactly its own."""
    import yaml

    loader_cls = getattr(yaml, "CSafeLoader", None)
    if loader_cls is None:  # PyYAML without libyaml: its pure-Python loader, unchanged
        return list(yaml.load_all(text, Loader=yaml.SafeLoader))
    try:
        return _build_from_events(loader_cls(text))
    except _Fallback:
        return list(yaml.load_all(text, Loader=loader_cls))


def _build_from_events(loader: Any) -> list[Any]:
    from yaml.events import (DocumentEndEvent, DocumentStartEvent, MappingEndEvent, MappingStartEvent,
                             ScalarEvent, SequenceEndEvent, SequenceStartEvent, StreamEndEvent,
                             StreamStartEvent)
    from yaml.nodes import ScalarNode

    no_key = _Fallback  # a sentinel no scalar can be
    docs: list[Any] = []
    stack: list[list[Any]] = []  # [container, pending mapping key or no_key]
    get_event, resolve = loader.get_event, loader.resolve
    plain_tags: dict[str, str] = {}  # plain scalar text → its resolved tag (4,000 scalars, few distinct)
    try:
        if loader.yaml_path_resolvers:  # a tag could then depend on the position too (never set by Ostium)
            raise _Fallback
        while True:
            ev = get_event()
            cls = type(ev)
            if cls is ScalarEvent:
                if ev.anchor is not None or ev.tag not in (None, "!"):
                    raise _Fallback
                if ev.tag is not None:
                    tag = _STR_TAG
                elif ev.implicit[0]:  # plain: its tag depends on its text alone
                    tag = plain_tags.get(ev.value)
                    if tag is None:
                        tag = plain_tags[ev.value] = resolve(ScalarNode, ev.value, ev.implicit)
                else:
                    tag = _STR_TAG  # quoted
                if tag == _STR_TAG:
                    value: Any = ev.value
                elif tag in _PLAIN_SCALAR_TAGS:
                    value = loader.construct_object(ScalarNode(tag, ev.value, ev.start_mark, ev.end_mark,
                                                               ev.style), deep=True)
                else:  # merge (`<<`), value (`=`), ...: they act on the mapping around them
                    raise _Fallback
            elif cls is MappingStartEvent or cls is SequenceStartEvent:
                if ev.anchor is not None or ev.tag not in (None, "!"):
                    raise _Fallback
                stack.append([{} if cls is MappingStartEvent else [], no_key])
                continue
            elif cls is MappingEndEvent or cls is SequenceEndEvent:
                value = stack.pop()[0]
            elif cls is DocumentStartEvent or cls is DocumentEndEvent or cls is StreamStartEvent:
                continue
            elif cls is StreamEndEvent:
                return docs
            else:  # an alias
                raise _Fallback
            if not stack:
                docs.append(value)
                continue
            top = stack[-1]
            container = top[0]
            if type(container) is list:
                container.append(value)
            elif top[1] is no_key:
                if type(value) in (dict, list):  # unhashable: PyYAML's error
                    raise _Fallback
                top[1] = value
            else:
                container[top[1]] = value
                top[1] = no_key
    finally:
        loader.dispose()
