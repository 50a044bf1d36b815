"""`ostium agent`: run the node agent (standalone mode)."""

from __future__ import annotations

import argparse

from mesh.config import Config


def register(sub) -> None:
    p = sub.add_parser("agent", help="run the Ostium agent",
                       description="Run the agent. Settings: defaults < --config YAML < OSTIUM_* environment < flags.")
    p.add_argument("--config", help="YAML config file (default $OSTIUM_CONFIG or /etc/ostium/config.yaml)")
    for f in Config.__dataclass_fields__.values():
        flag = "--" + f.name.replace("_", "-")
        if f.name == "socket":
            continue  # the global --socket is the agent's socket too
        typ = f.type if isinstance(f.type, str) else f.type.__name__
        if typ == "bool":
            p.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction)
        else:
            p.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper())
    p.set_defaults(func=run)


def run(args) -> int:
    import os

    from mesh.agent import run_agent
    from mesh.config import load_config
    from mesh.logs import setup_logging

    flags = {name: getattr(args, name) for name in Config.__dataclass_fields__ if name != "socket"
             and getattr(args, name, None) is not None}
    # The global --socket: only an explicit value (or OSTIUM_SOCKET) overrides file/env settings.
    if args.socket and (args.socket != "/var/run/ostium/ostium.sock" or "OSTIUM_SOCKET" in os.environ):
        flags["socket"] = args.socket
    cfg = load_config(args.config, flags=flags)
    setup_logging(cfg.log_level, cfg.log_format)
    return run_agent(cfg)
