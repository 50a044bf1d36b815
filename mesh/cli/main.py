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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ostium", description="Ostium: a sidecar-less, identity-aware service mesh.")
    parser.add_argument("--socket", default=os.environ.get("OSTIUM_SOCKET", "/var/run/ostium/ostium.sock"),
                        help="agent API unix socket (env OSTIUM_SOCKET)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=lambda args: print(f"ostium {__import__('mesh').__version__}") or 0)
    for name in PLUGIN_MODULES:
        try:
            mod = importlib.import_module(f"mesh.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"mesh.cli.{name}":
                continue  # that noun is not built yet
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
