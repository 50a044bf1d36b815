"""Output of read commands: `-o json|yaml|table` (and `wide`, a table with every column)."""

from __future__ import annotations

import argparse
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing and json cost ~9 ms of every CLI start; annotations only need them for checkers
    from typing import Any, Iterable, Sequence

FORMATS = ("table", "json", "yaml")


def add_output_flag(parser: argparse.ArgumentParser, default: str = "table",
                    choices: Sequence[str] = FORMATS) -> None:
    parser.add_argument("-o", "--output", default=default, choices=list(choices),
                        help=f"output format ({', '.join(choices)}; default {default})")


def _cell(value: Any) -> str:
    if value is None:
        return "<none>"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "<none>"
    if isinstance(value, (list, tuple)):
        return ",".join(_cell(v) for v in value) or "<none>"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def render_table(rows: Iterable[dict[str, Any]], columns: Sequence[str | tuple[str, str]]) -> str:
    """Columns are keys, or (HEADER, key) pairs; nested keys with dots (`status.state`)."""
    cols = [(c.upper(), c) if isinstance(c, str) else c for c in columns]
    table = [[h for h, _ in cols]]
    for row in rows:
        line = []
        for _h, key in cols:
            value: Any = row
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            line.append(_cell(value))
        table.append(line)
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table)


def emit(data: Any, fmt: str, columns: Sequence[str | tuple[str, str]] | None = None,
         stream=None) -> None:
    """Print `data` (a dict or a list of dicts) in the chosen format."""
    import json

    out = stream or sys.stdout
    if fmt == "json":
        out.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    elif fmt == "yaml":
        import yaml
        out.write(yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False))
    else:
        rows = data if isinstance(data, list) else [data]
        if columns is None:
            keys: list[str] = []
            for r in rows:
                for k in r:
                    if k not in keys:
                        keys.append(k)
            columns = keys
        out.write(render_table(rows, columns) + "\n")
    out.flush()


def kv_block(data: dict[str, Any], indent: int = 0) -> str:
    """A human key: value block for `get`/`status` tables."""
    lines = []
    pad = " " * indent
    for k, v in data.items():
        if isinstance(v, dict) and v:
            lines.append(f"{pad}{k}:")
            lines.append(kv_block(v, indent + 2))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            lines.append(f"{pad}{k}:")
            for x in v:
                lines.append(f"{pad}  - " + ", ".join(f"{a}={_cell(b)}" for a, b in x.items()))
        else:
            lines.append(f"{pad}{k}: {_cell(v)}")
    return "\n".join(lines)
