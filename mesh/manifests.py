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

import yaml

from mesh.errors import ManifestError, ValidationError

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
    docs: list[Document] = []
    for path in paths:
        if path == "-":
            docs.extend(parse_yaml_text(stdin_text or "", "<stdin>"))
            continue
        if os.path.isdir(path):
            files = []
            for root, _dirs, names in os.walk(path):
                for n in names:
                    if n.endswith((".yaml", ".yml", ".json")):
                        files.append(os.path.join(root, n))
            for f in sorted(files):
                docs.extend(_read_file(f))
        elif os.path.exists(path):
            docs.extend(_read_file(path))
        else:
            raise ManifestError(f"{path}: no such file or directory")
    return docs


def _read_file(path: str) -> list[Document]:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read: {exc}") from None
    return parse_yaml_text(text, path)


def parse_yaml_text(text: str, source: str) -> list[Document]:
    try:
        # libyaml's loader when present: ~7x faster on large policy files (same safe semantics).
        bodies = list(yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
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
