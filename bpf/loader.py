"""The system libbpf (libbpf.so.1) through ctypes: open/load objects, pin, attach, map access.

Thin and explicit: every call that can fail raises DatapathError with libbpf's own log lines
(the verifier's complaint, the pinned map that did not match), never a bare errno.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator

from mesh.errors import DatapathError

# enum bpf_attach_type values this module uses (stable kernel UAPI). Debian 12's headers predate
# tcx, so the numbers are spelled out.
BPF_CGROUP_INET4_CONNECT = 10
BPF_CGROUP_INET6_CONNECT = 11
BPF_CGROUP_UDP4_SENDMSG = 14
BPF_CGROUP_UDP6_SENDMSG = 15
BPF_CGROUP_UDP4_RECVMSG = 19
BPF_CGROUP_UDP6_RECVMSG = 20
BPF_CGROUP_INET4_GETPEERNAME = 29
BPF_CGROUP_INET6_GETPEERNAME = 30
BPF_CGROUP_INET_SOCK_RELEASE = 34
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47

BPF_ANY = 0
BPF_NOEXIST = 1

MAP_TYPE_NAMES = {
    1: "hash", 2: "array", 5: "percpu_hash", 6: "percpu_array", 9: "lru_hash",
    11: "lpm_trie", 27: "ringbuf",
}

_print_fn_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_ringbuf_cb_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


class _BpfMapInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("name", ctypes.c_char * 16),
                ("_rest", ctypes.c_uint8 * 128)]


class _TestRunOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p), ("data_out", ctypes.c_void_p),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_void_p), ("ctx_out", ctypes.c_void_p),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("retval", ctypes.c_uint32), ("repeat", ctypes.c_int), ("duration", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32), ("batch_size", ctypes.c_uint32)]


class LibBPF:
    """One loaded libbpf with typed signatures and a log buffer. Pass it around; no global state."""

    def __init__(self, path: str | None = None) -> None:
        path = path or ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            self.lib = ctypes.CDLL(path, use_errno=True)
        except OSError as exc:
            raise DatapathError(
                f"libbpf is not installed ({exc}): install libbpf1 (scripts/apt-packages.txt); "
                "without it no BPF program can be loaded") from None
        self.libc = ctypes.CDLL(None, use_errno=True)
        self._log: deque[str] = deque(maxlen=200)
        self._log_lock = threading.Lock()
        self._declare()
        self._print_cb = _print_fn_type(self._on_print)  # kept alive as long as self
        self.lib.libbpf_set_print(self._print_cb)

    def _declare(self) -> None:
        L = self.lib
        vp, cp, ci, u32, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_size_t
        sig = {
            "libbpf_set_print": (vp, [vp]),
            "bpf_object__open_file": (vp, [cp, vp]),
            "bpf_object__load": (ci, [vp]),
            "bpf_object__close": (None, [vp]),
            "bpf_object__next_map": (vp, [vp, vp]),
            "bpf_object__find_program_by_name": (vp, [vp, cp]),
            "bpf_map__name": (cp, [vp]),
            "bpf_map__set_pin_path": (ci, [vp, cp]),
            "bpf_map__set_max_entries": (ci, [vp, u32]),
            "bpf_map__max_entries": (u32, [vp]),
            "bpf_map__type": (ci, [vp]),
            "bpf_map__key_size": (u32, [vp]),
            "bpf_map__value_size": (u32, [vp]),
            "bpf_map__fd": (ci, [vp]),
            "bpf_program__fd": (ci, [vp]),
            "bpf_program__attach_cgroup": (vp, [vp, ci]),
            "bpf_link__pin": (ci, [vp, cp]),
            "bpf_link__fd": (ci, [vp]),
            "bpf_link__destroy": (ci, [vp]),
            "bpf_link_create": (ci, [ci, ci, ci, vp]),
            "bpf_link_update": (ci, [ci, ci, vp]),
            "bpf_link_detach": (ci, [ci]),
            "bpf_obj_pin": (ci, [ci, cp]),
            "bpf_obj_get": (ci, [cp]),
            "bpf_obj_get_info_by_fd": (ci, [ci, vp, ctypes.POINTER(u32)]),
            "bpf_map_update_elem": (ci, [ci, vp, vp, ctypes.c_uint64]),
            "bpf_map_lookup_elem": (ci, [ci, vp, vp]),
            "bpf_map_delete_elem": (ci, [ci, vp]),
            "bpf_map_get_next_key": (ci, [ci, vp, vp]),
            "bpf_map_update_batch": (ci, [ci, vp, vp, ctypes.POINTER(u32), vp]),
            "bpf_map_delete_batch": (ci, [ci, vp, ctypes.POINTER(u32), vp]),
            "bpf_map_lookup_batch": (ci, [ci, vp, vp, vp, vp, ctypes.POINTER(u32), vp]),
            "libbpf_num_possible_cpus": (ci, []),
            "bpf_prog_test_run_opts": (ci, [ci, vp]),
            "ring_buffer__new": (vp, [ci, _ringbuf_cb_type, vp, vp]),
            "ring_buffer__poll": (ci, [vp, ci]),
            "ring_buffer__consume": (ci, [vp]),
            "ring_buffer__epoll_fd": (ci, [vp]),
            "ring_buffer__free": (None, [vp]),
        }
        for name, (res, args) in sig.items():
            fn = getattr(L, name)
            fn.restype = res
            fn.argtypes = args
        self.libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]

    def _on_print(self, level: int, fmt: bytes, va: int) -> int:
        buf = ctypes.create_string_buffer(2048)
        self.libc.vsnprintf(buf, len(buf), fmt, va)
        text = buf.value.decode(errors="replace").rstrip()
        with self._log_lock:
            self._log.extend(line for line in text.splitlines() if line)
        return 0

    def take_log(self) -> list[str]:
        with self._log_lock:
            lines = list(self._log)
            self._log.clear()
        return lines

    def error(self, what: str, err: int | None = None, hint: str = "") -> DatapathError:
        err = ctypes.get_errno() if err is None else abs(err)
        log = [line for line in self.take_log() if not line.startswith("libbpf: prog") or "failed" in line]
        detail = f": {os.strerror(err)}" if err else ""
        msg = f"{what}{detail}"
        if hint:
            msg += f" ({hint})"
        if log:
            msg += "\n  " + "\n  ".join(log[-25:])
        return DatapathError(msg)

    @property
    def num_cpus(self) -> int:
        return max(1, self.lib.libbpf_num_possible_cpus())


# ---- maps -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MapInfo:
    name: str
    type: str
    key_size: int
    value_size: int
    max_entries: int
    flags: int


class Map:
    """A BPF map by fd. Keys and values are bytes; bpf/maps.py codecs give them meaning."""

    def __init__(self, bpf: LibBPF, fd: int, name: str, owns_fd: bool = True) -> None:
        self.bpf = bpf
        self.fd = fd
        self.name = name
        self._owns = owns_fd
        self.info = map_info(bpf, fd)
        self.percpu = self.info.type.startswith("percpu")

    @classmethod
    def from_pin(cls, bpf: LibBPF, path: str) -> "Map":
        fd = bpf.lib.bpf_obj_get(path.encode())
        if fd < 0:
            raise bpf.error(f"cannot open pinned map {path}", fd)
        return cls(bpf, fd, os.path.basename(path))

    def close(self) -> None:
        if self._owns and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def _value_len(self) -> int:
        if self.percpu:
            return ((self.info.value_size + 7) // 8 * 8) * self.bpf.num_cpus
        return self.info.value_size

    def lookup(self, key: bytes) -> bytes | None:
        val = ctypes.create_string_buffer(self._value_len())
        rc = self.bpf.lib.bpf_map_lookup_elem(self.fd, key, val)
        if rc < 0:
            if ctypes.get_errno() == errno.ENOENT:
                return None
            raise self.bpf.error(f"lookup in map {self.name} failed", rc)
        return val.raw

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        rc = self.bpf.lib.bpf_map_update_elem(self.fd, key, value, flags)
        if rc < 0:
            raise self._update_error(rc)

    def _update_error(self, rc: int) -> DatapathError:
        err = ctypes.get_errno() or abs(rc)
        if err in (errno.E2BIG, errno.ENOSPC, errno.ENOMEM):
            return MapFullError(self.name, self.info.max_entries)
        return self.bpf.error(f"update of map {self.name} failed", err)

    def delete(self, key: bytes) -> bool:
        rc = self.bpf.lib.bpf_map_delete_elem(self.fd, key)
        if rc < 0:
            if ctypes.get_errno() == errno.ENOENT:
                return False
            raise self.bpf.error(f"delete from map {self.name} failed", rc)
        return True

    def keys(self) -> Iterator[bytes]:
        ks = self.info.key_size
        prev = None
        cur = ctypes.create_string_buffer(ks)
        while True:
            rc = self.bpf.lib.bpf_map_get_next_key(self.fd, prev, cur)
            if rc < 0:
                return
            k = cur.raw
            yield k
            prev = ctypes.create_string_buffer(k, ks)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        batched = self._items_batched()
        if batched is not None:
            yield from batched
            return
        for k in list(self.keys()):
            v = self.lookup(k)
            if v is not None:
                yield k, v

    def _items_batched(self, chunk: int = 4096) -> list[tuple[bytes, bytes]] | None:
        """All entries with BPF_MAP_LOOKUP_BATCH (a few syscalls instead of two per entry);
        None where the map type has no batch lookup (LPM tries, arrays of old kernels)."""
        ks, vs = self.info.key_size, self._value_len()
        keys = ctypes.create_string_buffer(ks * chunk)
        vals = ctypes.create_string_buffer(vs * chunk)
        tok_in = ctypes.create_string_buffer(max(ks, 8))
        tok_out = ctypes.create_string_buffer(max(ks, 8))
        out: list[tuple[bytes, bytes]] = []
        first = True
        while True:
            count = ctypes.c_uint32(chunk)
            rc = self.bpf.lib.bpf_map_lookup_batch(self.fd, None if first else tok_in, tok_out, keys, vals,
                                                   ctypes.byref(count), None)
            err = ctypes.get_errno() if rc < 0 else 0
            if rc < 0 and err != errno.ENOENT:
                if first:
                    return None
                raise self.bpf.error(f"batch lookup in map {self.name} failed", err)
            kr, vr = keys.raw, vals.raw
            out.extend((kr[i * ks:(i + 1) * ks], vr[i * vs:(i + 1) * vs]) for i in range(count.value))
            if rc < 0:   # ENOENT: that was the last chunk
                return out
            ctypes.memmove(tok_in, tok_out, len(tok_out))
            first = False

    def count(self) -> int:
        batched = self._items_batched()
        if batched is not None:
            return len(batched)
        return sum(1 for _ in self.keys())

    def update_batch(self, pairs: list[tuple[bytes, bytes]]) -> None:
        """Write many entries in one syscall (falls back per element where the map type has no
        batch support). Raises MapFullError; the caller rolls back what it had written."""
        if not pairs:
            return
        # zip(*pairs) splits in C; the two joins are the contiguous key and value arrays the
        # syscall reads, with no per-element Python work.
        keys, vals = zip(*pairs)
        if self.update_batch_raw(b"".join(keys), b"".join(vals), len(pairs)):
            return
        for k, v in pairs:
            self.update(k, v)

    def update_batch_dict(self, entries: dict[bytes, bytes]) -> None:
        """update_batch for a dict: the arrays are joined straight from its keys and values
        (no list of pairs), in its order."""
        if not entries:
            return
        if self.update_batch_raw(b"".join(entries), b"".join(entries.values()), len(entries)):
            return
        for k, v in entries.items():
            self.update(k, v)

    def update_batch_raw(self, keys: bytes, values: bytes, count: int) -> bool:
        """Write `count` entries given as contiguous key and value arrays (key_size and
        value_size bytes each, in the same order) in one syscall. Returns False, having written
        nothing, when the map type has no batch support (the caller writes per element); raises
        MapFullError and DatapathError like update_batch."""
        if count == 0:
            return True
        if len(keys) != count * self.info.key_size or len(values) != count * self._value_len():
            raise DatapathError(f"batch update of map {self.name}: {len(keys)} key bytes and "
                                f"{len(values)} value bytes are not {count} entries of "
                                f"{self.info.key_size}+{self._value_len()} bytes")
        n = ctypes.c_uint32(count)
        rc = self.bpf.lib.bpf_map_update_batch(self.fd, keys, values, ctypes.byref(n), None)
        if rc == 0:
            return True
        err = ctypes.get_errno()
        if err in (errno.EINVAL, errno.ENOTSUPP if hasattr(errno, "ENOTSUPP") else 524, 524,
                   errno.EOPNOTSUPP) and n.value == 0:
            return False
        raise self._update_error(rc)

    def delete_many(self, keys: list[bytes]) -> None:
        for k in keys:
            self.delete(k)

    def delete_batch(self, keys: list[bytes]) -> None:
        """Delete these keys in order, with BPF_MAP_DELETE_BATCH (one syscall instead of one
        per key); keys that are not there are skipped, like delete_many does."""
        self.delete_batch_raw(b"".join(keys), len(keys))

    def delete_batch_raw(self, keys: bytes, count: int) -> None:
        """delete_batch for `count` keys given back to back (key_size bytes each). Falls back
        to one delete per key where the map type has no batch delete."""
        ks = self.info.key_size
        if len(keys) != count * ks:
            raise DatapathError(f"batch delete from map {self.name}: {len(keys)} key bytes are not "
                                f"{count} keys of {ks} bytes")
        start = 0
        while start < count:
            n = ctypes.c_uint32(count - start)
            rc = self.bpf.lib.bpf_map_delete_batch(self.fd, keys[start * ks:], ctypes.byref(n), None)
            if rc == 0:
                return
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                # The kernel stops at a key that is not there: skip it, go on after it.
                start += n.value + 1
                continue
            if err in (errno.EINVAL, 524, errno.EOPNOTSUPP) and n.value == 0:
                self.delete_many([keys[i:i + ks] for i in range(start * ks, count * ks, ks)])
                return
            raise self.bpf.error(f"batch delete from map {self.name} failed", err)


class MapFullError(DatapathError):
    def __init__(self, name: str, max_entries: int) -> None:
        self.map_name = name
        self.max_entries = max_entries
        super().__init__(
            f"BPF map {name} is full ({max_entries} entries): nothing of this update was applied; "
            f"raise its size in the agent configuration (datapath.map_sizes.{name})")


def map_info(bpf: LibBPF, fd: int) -> MapInfo:
    info = _BpfMapInfo()
    ln = ctypes.c_uint32(ctypes.sizeof(info))
    rc = bpf.lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(ln))
    if rc < 0:
        raise bpf.error("cannot read map info", rc)
    return MapInfo(info.name.decode(), MAP_TYPE_NAMES.get(info.type, str(info.type)), info.key_size,
                   info.value_size, info.max_entries, info.map_flags)


# ---- objects, programs, links ----------------------------------------------------------------

class BPFObject:
    """An opened and loaded .bpf.o whose maps are pinned by name under `map_pin_dir` (shared
    between objects and across restarts: an existing compatible pin is reused, not recreated)."""

    def __init__(self, bpf: LibBPF, path: str, map_pin_dir: str,
                 max_entries: dict[str, int] | None = None) -> None:
        self.bpf = bpf
        self.path = path
        bpf.take_log()
        self.obj = bpf.lib.bpf_object__open_file(path.encode(), None)
        if not self.obj:
            raise bpf.error(f"cannot open BPF object {path}")
        self.maps: dict[str, int] = {}
        m = bpf.lib.bpf_object__next_map(self.obj, None)
        while m:
            name = bpf.lib.bpf_map__name(m).decode()
            if "." in name:   # <obj>.rodata/.bss: per object, never pinned
                m = bpf.lib.bpf_object__next_map(self.obj, m)
                continue
            if max_entries and name in max_entries:
                bpf.lib.bpf_map__set_max_entries(m, max_entries[name])
            pin = os.path.join(map_pin_dir, name)
            _drop_incompatible_pin(bpf, pin, (
                MAP_TYPE_NAMES.get(bpf.lib.bpf_map__type(m), str(bpf.lib.bpf_map__type(m))),
                bpf.lib.bpf_map__key_size(m), bpf.lib.bpf_map__value_size(m), bpf.lib.bpf_map__max_entries(m)))
            bpf.lib.bpf_map__set_pin_path(m, pin.encode())
            self.maps[name] = m
            m = bpf.lib.bpf_object__next_map(self.obj, m)
        rc = bpf.lib.bpf_object__load(self.obj)
        if rc < 0:
            err = self.bpf.error(f"loading {os.path.basename(path)} into the kernel failed", rc,
                                 hint="the kernel rejected a program or map; see libbpf's log")
            self.close()
            raise err

    def map_fd(self, name: str) -> int:
        return self.bpf.lib.bpf_map__fd(self.maps[name])

    def prog_fd(self, name: str) -> int:
        p = self.bpf.lib.bpf_object__find_program_by_name(self.obj, name.encode())
        if not p:
            raise DatapathError(f"program {name} is not in {self.path}")
        return self.bpf.lib.bpf_program__fd(p)

    def close(self) -> None:
        if self.obj:
            self.bpf.lib.bpf_object__close(self.obj)
            self.obj = None


def _drop_incompatible_pin(bpf: LibBPF, pin: str, want: tuple[str, int, int, int]) -> None:
    """A pinned map whose type, key/value layout or size differs from this object's (a new
    Ostium version, a changed map size) cannot be reused: unpin it so a new one is created. The
    agent refills services, policy and the ipcache; conntrack entries of that map are lost."""
    if not os.path.exists(pin):
        return
    fd = bpf.lib.bpf_obj_get(pin.encode())
    if fd < 0:
        return
    try:
        info = map_info(bpf, fd)
    finally:
        os.close(fd)
    have = (info.type, info.key_size, info.value_size, info.max_entries)
    if have != want and not (info.type == "ringbuf" == want[0] and info.max_entries == want[3]):
        os.unlink(pin)


def link_create(bpf: LibBPF, prog_fd: int, target_fd: int, attach_type: int) -> int:
    """bpf_link_create for cgroup and tcx attach points; returns the link fd."""
    fd = bpf.lib.bpf_link_create(prog_fd, target_fd, attach_type, None)
    if fd < 0:
        err = ctypes.get_errno()
        raise bpf.error(f"attaching (type {attach_type}) failed", err)
    return fd


def pin_fd(bpf: LibBPF, fd: int, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if bpf.lib.bpf_obj_pin(fd, path.encode()) < 0:
        raise bpf.error(f"cannot pin {path}")


def open_pinned(bpf: LibBPF, path: str) -> int | None:
    if not os.path.exists(path):
        return None
    fd = bpf.lib.bpf_obj_get(path.encode())
    return fd if fd >= 0 else None


def link_update(bpf: LibBPF, link_fd: int, prog_fd: int) -> None:
    """Swap the program behind a link atomically: no moment without a program attached."""
    if bpf.lib.bpf_link_update(link_fd, prog_fd, None) < 0:
        raise bpf.error("cannot replace the program of a pinned link")


def link_detach(bpf: LibBPF, link_fd: int) -> None:
    bpf.lib.bpf_link_detach(link_fd)


def prog_test_run(bpf: LibBPF, prog_fd: int, packet: bytes, ctx: bytes = b"", repeat: int = 1
                  ) -> tuple[int, int]:
    """BPF_PROG_TEST_RUN: run a program on `packet` `repeat` times in the kernel; returns
    (program return value, average ns per run)."""
    out = ctypes.create_string_buffer(len(packet) + 256)
    ctx_buf = ctypes.create_string_buffer(ctx, len(ctx)) if ctx else None
    opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts), data_in=ctypes.cast(ctypes.c_char_p(packet), ctypes.c_void_p),
                        data_out=ctypes.cast(out, ctypes.c_void_p), data_size_in=len(packet),
                        data_size_out=len(out), repeat=repeat)
    if ctx_buf is not None:
        opts.ctx_in = ctypes.cast(ctx_buf, ctypes.c_void_p)
        opts.ctx_size_in = len(ctx)
    rc = bpf.lib.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts))
    if rc < 0:
        raise bpf.error("BPF_PROG_TEST_RUN failed", rc)
    return ctypes.c_int32(opts.retval).value, opts.duration


# ---- ring buffer -----------------------------------------------------------------------------

class RingBuffer:
    """Consumer of a BPF ring buffer. One consumer per ring: the kernel keeps one read position,
    so two readers would each see part of the events (the agent fans out instead)."""

    def __init__(self, bpf: LibBPF, map_fd: int) -> None:
        self.bpf = bpf
        self._pending: list[bytes] = []
        self._cb = _ringbuf_cb_type(self._on_sample)
        self.rb = bpf.lib.ring_buffer__new(map_fd, self._cb, None, None)
        if not self.rb:
            raise bpf.error("cannot open the event ring buffer")

    def _on_sample(self, _ctx: int, data: int, size: int) -> int:
        self._pending.append(ctypes.string_at(data, size))
        return 0

    @property
    def epoll_fd(self) -> int:
        return self.bpf.lib.ring_buffer__epoll_fd(self.rb)

    def poll(self, timeout_ms: int) -> list[bytes]:
        self.bpf.lib.ring_buffer__poll(self.rb, timeout_ms)
        out, self._pending = self._pending, []
        return out

    def consume(self) -> list[bytes]:
        self.bpf.lib.ring_buffer__consume(self.rb)
        out, self._pending = self._pending, []
        return out

    def close(self) -> None:
        if self.rb:
            self.bpf.lib.ring_buffer__free(self.rb)
            self.rb = None


Callback = Callable[[bytes], None]
