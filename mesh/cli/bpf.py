"""`ostium bpf maps` and `ostium bpf map dump NAME`: the datapath's maps, for debugging.

Through the agent (GET /v1/bpf/maps, GET /v1/bpf/maps/NAME), or straight from the pinned maps
with `--pin-dir DIR` when the agent is down (the datapath keeps running without it).
"""

from __future__ import annotations

import os

from mesh.cli.output import add_output_flag, emit
from mesh.errors import NotFoundError

MAP_COLUMNS = [("NAME", "name"), ("TYPE", "type"), ("ENTRIES", "entries"), ("MAX", "max_entries"),
               ("FILL%", "fill_percent"), ("FULL-ERRORS", "map_full_errors")]


def register(sub) -> None:
    p = sub.add_parser("bpf", help="inspect the eBPF datapath (maps)")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    ls = verbs.add_parser("maps", help="list the datapath's maps with size and fill level")
    ls.add_argument("--pin-dir", help="read pinned maps directly (no agent), e.g. /sys/fs/bpf/ostium")
    add_output_flag(ls)
    ls.set_defaults(func=maps_)
    m = verbs.add_parser("map", help="one map")
    mverbs = m.add_subparsers(dest="map_verb", metavar="VERB", required=True)
    d = mverbs.add_parser("dump", help="decode every entry of a map")
    d.add_argument("name", help="map name, e.g. ost_lb4_svc, ost_policy, ost_ct4, ost_ipcache")
    d.add_argument("--pin-dir", help="read the pinned map directly (no agent)")
    add_output_flag(d)
    d.set_defaults(func=dump)


def _local_maps(pin_dir: str) -> list[dict]:
    from bpf import loader
    lib = loader.LibBPF()
    out = []
    mdir = os.path.join(pin_dir, "maps")
    if not os.path.isdir(mdir):
        raise NotFoundError(f"no pinned maps under {mdir}")
    for name in sorted(os.listdir(mdir)):
        m = loader.Map.from_pin(lib, os.path.join(mdir, name))
        try:
            n = None if m.info.type == "ringbuf" else (
                m.info.max_entries if m.info.type.endswith("array") else m.count())
            out.append({"name": name, "type": m.info.type, "entries": n, "max_entries": m.info.max_entries,
                        "fill_percent": None if n is None else round(100.0 * n / m.info.max_entries, 2),
                        "map_full_errors": None})
        finally:
            m.close()
    return out


def _local_dump(pin_dir: str, name: str) -> list[dict]:
    from bpf import loader
    from bpf.maps import LAYOUTS, decode_entry
    if name not in LAYOUTS:
        raise NotFoundError(f"no map named {name!r}; maps: {', '.join(sorted(LAYOUTS))}")
    path = os.path.join(pin_dir, "maps", name)
    if not os.path.exists(path):
        raise NotFoundError(f"{path} is not pinned")
    m = loader.Map.from_pin(loader.LibBPF(), path)
    try:
        return [decode_entry(name, k, v) for k, v in m.items()]
    finally:
        m.close()


def maps_(args) -> int:
    if args.pin_dir:
        data = _local_maps(args.pin_dir)
    else:
        from mesh.api.client import APIClient
        data = APIClient(args.socket).get("/v1/bpf/maps")
    emit(data, args.output, MAP_COLUMNS)
    return 0


def dump(args) -> int:
    if args.pin_dir:
        data = _local_dump(args.pin_dir, args.name)
    else:
        from mesh.api.client import APIClient
        data = APIClient(args.socket).get(f"/v1/bpf/maps/{args.name}")
    if args.output == "table":
        rows = [{"key": " ".join(f"{k}={v}" for k, v in e["key"].items()),
                 "value": " ".join(f"{k}={v}" for k, v in e["value"].items())} for e in data]
        emit(rows, "table", [("KEY", "key"), ("VALUE", "value")])
    else:
        emit(data, args.output)
    return 0
