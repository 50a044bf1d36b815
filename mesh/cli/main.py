"""`ostium`: the command line. Verbs and nouns like cilium/kubectl; errors on one stderr line.

Exit codes: 0 ok, 1 error, 2 invalid input, 3 not found, 4 conflict, 5 agent unreachable; a command run
by `endpoint exec` exits with that command's code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from mesh.errors import OstiumError

# Nouns implemented in their own modules (mesh/cli/<noun>.py, each with register(sub)).
PLUGIN_MODULES = ("endpoint", "manifest", "agent_cmd", "status", "policy", "identity", "service", "bpf",
                  "monitor", "kafka", "observe", "gateway")

# Command word (and alias) → the module that registers it. A command line naming one of these imports only
# that module: `ostium policy apply` then starts without the agent's config model, the flow filters, ...
# (tests/unit/test_cli_main.py checks this table against what the modules register).
COMMAND_MODULES = {
    "endpoint": "endpoint", "ep": "endpoint", "apply": "manifest", "delete": "manifest", "agent": "agent_cmd",
    "status": "status", "policy": "policy", "identity": "identity", "id": "identity", "service": "service",
    "svc": "service", "bpf": "bpf", "monitor": "monitor", "kafka": "kafka", "observe": "observe",
    "gateway": "gateway", "gw": "gateway",
}


def command_word(argv: list[str]) -> str | None:
    """The COMMAND of `ostium [--socket PATH] COMMAND ...`, or None (none given, or --help first)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--socket":
            i += 2
            continue
        if arg.startswith("--socket="):
            i += 1
            continue
        return None if arg.startswith("-") else arg
    return None


def _terminal_width() -> int:
    """shutil.get_terminal_size().columns, without importing shutil (it brings bz2 and lzma: ~5 ms of every
    CLI start, and argparse imports it for the help formatter that each add_argument builds)."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class _HelpFormatter(argparse.HelpFormatter):
    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _terminal_width() - 2 if width is None else width)


class _ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with `_HelpFormatter` by default; sub-commands' parsers are of the same class."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `ostium` parser; given the command line, only the module of the command it names is imported
    (all of them for `ostium --help`, no command, or an unknown one, so help and errors list every noun)."""
    parser = _ArgumentParser(prog="ostium", description="Ostium: a sidecar-less, identity-aware service mesh.")
    parser.add_argument("--socket", default=os.environ.get("OSTIUM_SOCKET", "/var/run/ostium/ostium.sock"),
                        help="agent API unix socket (env OSTIUM_SOCKET)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=lambda args: print(f"ostium {__import__('mesh').__version__}") or 0)
    word = command_word(argv) if argv is not None else None
    modules = PLUGIN_MODULES
    if word in COMMAND_MODULES:
        modules = (COMMAND_MODULES[word],)
    elif word == "version":
        modules = ()
    for name in modules:
        try:
            mod = importlib.import_module(f"mesh.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"mesh.cli.{name}":
                continue  # that noun is not built yet
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except OstiumError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
