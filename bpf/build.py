"""Compile the datapath's C sources with clang, once per source content (content hash cache).

`python -m bpf.build [OUT_DIR]` builds ahead of time (`make bpf`); the agent calls `build()` at
start and reuses an object whose hash matches, so an unchanged source is never recompiled.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mesh.errors import DatapathError

SOURCE_DIR = Path(__file__).resolve().parent
OBJECTS = ("sock", "lxc")
DEFAULT_BUILD_DIR = "/var/cache/ostium/bpf"


def _flags() -> list[str]:
    arch = platform.machine()
    return ["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", f"-I/usr/include/{arch}-linux-gnu",
            f"-I{SOURCE_DIR}"]


def find_clang() -> str:
    clang = os.environ.get("OSTIUM_CLANG") or shutil.which("clang")
    if not clang:
        raise DatapathError(
            "clang is not installed: the eBPF datapath (socket load balancing and policy "
            "enforcement) cannot be built. Install it with `apt-get install clang llvm libbpf-dev` "
            "(scripts/apt-packages.txt) or build the objects elsewhere with `make bpf`.")
    return clang


def source_hash(name: str) -> str:
    """Hash of everything that determines the object: its source, every shared header, flags."""
    h = hashlib.sha256()
    paths = [SOURCE_DIR / f"{name}.bpf.c", *sorted((SOURCE_DIR / "lib").glob("*.h"))]
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(" ".join(_flags()).encode())
    return h.hexdigest()[:16]


def object_path(build_dir: str | os.PathLike, name: str) -> Path:
    return Path(build_dir) / f"{name}-{source_hash(name)}.bpf.o"


def build(build_dir: str | os.PathLike = DEFAULT_BUILD_DIR, names: tuple[str, ...] = OBJECTS
          ) -> dict[str, Path]:
    """Return {name: object path}, compiling only objects whose content hash has no object yet."""
    out: dict[str, Path] = {}
    os.makedirs(build_dir, exist_ok=True)
    for name in names:
        target = object_path(build_dir, name)
        if not target.exists():
            _compile(name, target)
        out[name] = target
    return out


def _compile(name: str, target: Path) -> None:
    clang = find_clang()
    src = SOURCE_DIR / f"{name}.bpf.c"
    # Compile to a temporary file and rename: a concurrent or interrupted build never leaves a
    # truncated object under the final name.
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".o", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([clang, *_flags(), "-c", str(src), "-o", tmp],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise DatapathError(f"compiling {src.name} failed:\n{proc.stderr.strip()}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    # Old objects of the same name are garbage once a new hash exists.
    for old in target.parent.glob(f"{name}-*.bpf.o"):
        if old != target:
            try:
                old.unlink()
            except OSError:
                pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out_dir = argv[0] if argv else DEFAULT_BUILD_DIR
    try:
        for name, path in build(out_dir).items():
            print(f"{name}: {path}")
    except DatapathError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
