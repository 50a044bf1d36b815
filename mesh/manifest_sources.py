"""Reading manifest files as text (stdlib only: `ostium policy apply` sends the text to the agent unparsed and
must start fast, without PyYAML or dataclasses). mesh.manifests parses what this reads."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~6 ms of the CLI's start
    from typing import Iterable

import os

from mesh.errors import ManifestError


def read_sources(paths: Iterable[str], stdin_text: str | None = None) -> list[tuple[str, str]]:
    """(source name, text) of every file `paths` name, in the order `load_documents` reads them: "-" is
    stdin, a directory its .yaml/.yml/.json files (recursively, sorted)."""
    out: list[tuple[str, str]] = []
    for path in paths:
        if path == "-":
            out.append(("<stdin>", stdin_text or ""))
            continue
        if os.path.isdir(path):
            files = []
            for root, _dirs, names in os.walk(path):
                for n in names:
                    if n.endswith((".yaml", ".yml", ".json")):
                        files.append(os.path.join(root, n))
            out.extend((f, read_text(f)) for f in sorted(files))
        elif os.path.exists(path):
            out.append((path, read_text(path)))
        else:
            raise ManifestError(f"{path}: no such file or directory")
    return out


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read: {exc}") from None
