"""eBPF plumbing: compile with clang (cached), load and pin with bpftool, attach with tc, maps via bpf(2).

Each step uses the tool made for it, and nothing here knows about IPIP (``ipip.py`` does):

    bpf/NAME.c ──clang -O2 -g -target bpf──▶ CACHE/NAME-<key>.o        compile_program (cached)
        ──bpftool prog loadall … pinmaps──▶ bpffs: programs + maps     load_object (maps reused)
        ──tc filter replace … bpf da object-pinned──▶ clsact hook       attach_tc (atomic swap)
    Python ◀──bpf(2) via ctypes: lookup / update / delete / next key──▶ pinned maps (BpfMap)

- **Cache key**: sha256 of the source, of every ``*.h`` beside it, of the clang version and of the
  flags (``cache_key``). An object is written to a temporary file and renamed, so concurrent agents
  and a crash mid-compile never leave a torn ``.o``.
- **Namespaces**: tc hooks and ``bpftool net`` are per network namespace; the bpf filesystem is
  per *mount* namespace. ``ip netns exec`` (and ``tc -n``) remount ``/sys``, which hides
  ``/sys/fs/bpf`` and its pins, so commands for a netns are started from a helper thread that
  entered the netns with ``setns`` (``netns.run_in_netns``): the child inherits the thread's network
  namespace and keeps the caller's mounts.
- **Maps from Python** go through the ``bpf(2)`` syscall with ctypes (``BpfMap``): one syscall per
  element, a few microseconds each, where ``bpftool map update`` costs a process per entry. Lookups
  by id (``prog_info``, ``map_info``, ``pin_map_id``) let a restarted agent re-pin the maps of a
  program that is still attached after its pins were lost.
- **Attaching** is ``tc filter replace`` at a fixed ``pref``/``handle`` on a ``clsact`` qdisc: the
  kernel swaps the program in one step, so packets see the old or the new program, never none.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import platform
import shutil
import struct
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from podnet.dataplane.errors import DataplaneError
from podnet.dataplane.netns import run_in_netns

log = logging.getLogger(__name__)

BPFFS = "/sys/fs/bpf"
BPF_FS_MAGIC = 0xCAFE4A11
CLANG = "clang"
BPFTOOL = "bpftool"
TC = "tc"
TOOL_TIMEOUT = 60.0
#: The C sources, package data in ``podnet/bpf/`` (``bpf/`` at the repository's root links there);
#: ``PODNET_BPF_DIR`` overrides.
BPF_SOURCE_DIR = Path(os.environ.get("PODNET_BPF_DIR") or Path(__file__).resolve().parents[1] / "bpf")
PACKAGES_HINT = "install clang, llvm, libbpf-dev, bpftool and iproute2 (scripts/setup.sh does)"

# bpf(2) commands and map types used here (linux/bpf.h)
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_TEST_RUN = 10
BPF_ANY = 0
PERCPU_MAP_TYPES = {5, 6, 10, 21}  # percpu hash / array, lru percpu hash, percpu cgroup storage
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351, "armv7l": 386}

_libc = ctypes.CDLL(None, use_errno=True)


class BpfError(DataplaneError):
    """A BPF tool or syscall failed (compile, load, attach, map access)."""

    code = "bpf"


# ---------------------------------------------------------------------- running tools


def run_tool(argv: Sequence[str], netns: str | None = None, *, check: bool = True) -> str:
    """Run a tool (tc, bpftool, clang) in ``netns`` (None: here) and return its stdout.

    The child is forked by a thread that ``setns``-ed into the namespace, so it keeps this
    process's mounts (bpffs pins stay visible), unlike ``ip netns exec``.
    """

    try:
        proc = run_in_netns(netns, argv, timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise BpfError(f"{argv[0]} is not installed", hint=PACKAGES_HINT) from None
    if check and proc.returncode != 0:
        where = f" in netns {netns}" if netns else ""
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise BpfError(f"{' '.join(argv)}{where} failed: {' / '.join(detail[-3:]) or proc.returncode}")
    return proc.stdout


def _json(argv: Sequence[str], netns: str | None = None) -> Any:
    out = run_tool(argv, netns)
    try:
        return json.loads(out) if out.strip() else []
    except json.JSONDecodeError as exc:
        raise BpfError(f"{' '.join(argv)} printed no JSON: {out[:200]!r}") from exc


# ---------------------------------------------------------------------- compile (cached)


def multiarch_include() -> str:
    """Debian's multiarch header directory (``asm/types.h`` lives there, clang -target bpf needs it)."""
    return f"/usr/include/{platform.machine()}-linux-gnu"


def clang_flags() -> list[str]:
    return ["-O2", "-g", "-Wall", "-target", "bpf", f"-I{multiarch_include()}"]


@lru_cache(maxsize=1)
def clang_version() -> str:
    out = run_tool([CLANG, "--version"])
    return out.splitlines()[0].strip() if out else "unknown"


def cache_key(
    source: bytes, headers: Sequence[tuple[str, bytes]], compiler: str, flags: Sequence[str]
) -> str:
    """Pure: 16 hex digits naming one compiled object (source, local headers, compiler, flags)."""
    h = hashlib.sha256()
    for part in (source, compiler.encode(), "\0".join(flags).encode()):
        h.update(len(part).to_bytes(8, "little") + part)
    for name, text in sorted(headers):
        h.update(name.encode() + b"\0" + len(text).to_bytes(8, "little") + text)
    return h.hexdigest()[:16]


def source_path(name: str) -> str:
    """``podnet/bpf/<name>`` of the installed package (or ``$PODNET_BPF_DIR/<name>``)."""
    return str(BPF_SOURCE_DIR / name)


def object_key(source: str) -> str:
    """The cache key ``compile_program`` uses for ``source`` (a path to a ``.c`` file)."""
    src = Path(source)
    try:
        text = src.read_bytes()
        headers = [(p.name, p.read_bytes()) for p in src.parent.glob("*.h")]
    except OSError as exc:
        raise BpfError(f"cannot read BPF source {source}: {exc.strerror}") from exc
    return cache_key(text, headers, clang_version(), clang_flags())


def compile_program(source: str, cache_dir: str) -> str:
    """Compile ``source`` (path of a ``.c``) unless the cache has it; returns the ``.o`` path."""
    key = object_key(source)
    out = Path(cache_dir) / f"{Path(source).stem}-{key}.o"
    if out.is_file():
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".o", dir=out.parent)
    os.close(fd)
    try:
        run_tool([CLANG, *clang_flags(), "-c", source, "-o", tmp])
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    log.info("compiled %s -> %s", source, out)
    return str(out)


# ---------------------------------------------------------------------- bpffs


def is_bpffs(path: str) -> bool:
    """True if ``path`` is on a bpf filesystem (a mount point or a directory inside one)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first field (a long)
    if _libc.statfs(os.fsencode(path), buf) != 0:
        return False
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF == BPF_FS_MAGIC


def ensure_bpffs(path: str = BPFFS) -> None:
    """Mount a bpf filesystem on ``path`` unless one is there (pins live only on bpffs)."""
    if is_bpffs(path):
        return
    os.makedirs(path, exist_ok=True)
    if _libc.mount(b"bpf", os.fsencode(path), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise BpfError(f"mount -t bpf bpf {path}: {os.strerror(err)}", hint="mounting needs root")
    log.info("mounted bpffs on %s", path)


def ensure_pin_dir(pin_dir: str, error: type[BpfError] = BpfError) -> None:
    """Create ``pin_dir`` on a bpf filesystem: bpffs is mounted on ``BPFFS`` first when the directory
    is below it; a directory elsewhere must already be on one (``error`` says so, with a hint)."""
    if pin_dir.startswith(BPFFS + "/"):
        ensure_bpffs(BPFFS)
    os.makedirs(pin_dir, exist_ok=True)
    if not is_bpffs(pin_dir):
        raise error(
            f"pin directory {pin_dir} is not on a bpf filesystem",
            hint=f"mount -t bpf bpf <dir> first, or use a pin_dir under {BPFFS}",
        )


def unpin_tree(path: str) -> None:
    """Remove a directory of pins (unlinking a pin drops a reference; attached programs stay)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


# ---------------------------------------------------------------------- bpf(2)


def _sys_bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        raise BpfError(f"bpf(2) syscall number unknown for {platform.machine()}")
    ret = _libc.syscall(number, cmd, attr, len(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _attr(*fields: tuple[int, str, int]) -> ctypes.Array[ctypes.c_char]:
    """A zeroed ``union bpf_attr`` (128 bytes) with ``(offset, struct format, value)`` fields set."""
    attr = ctypes.create_string_buffer(128)
    for offset, fmt, value in fields:
        struct.pack_into("=" + fmt, attr, offset, value)
    return attr


def obj_get(path: str) -> int:
    """An fd for the pinned object at ``path`` (BPF_OBJ_GET)."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    try:
        return _sys_bpf(BPF_OBJ_GET, _attr((0, "Q", ctypes.addressof(name))))
    except OSError as exc:
        raise BpfError(f"open pinned BPF object {path}: {exc.strerror}") from exc


def obj_pin(fd: int, path: str) -> None:
    name = ctypes.create_string_buffer(os.fsencode(path))
    try:
        _sys_bpf(BPF_OBJ_PIN, _attr((0, "Q", ctypes.addressof(name)), (8, "I", fd)))
    except OSError as exc:
        raise BpfError(f"pin BPF object at {path}: {exc.strerror}") from exc


def _fd_by_id(cmd: int, ident: int, what: str) -> int:
    try:
        return _sys_bpf(cmd, _attr((0, "I", ident)))
    except OSError as exc:
        raise BpfError(f"open {what} id {ident}: {exc.strerror}") from exc


@dataclass(frozen=True)
class MapInfo:
    id: int
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


@dataclass(frozen=True)
class ProgInfo:
    id: int
    name: str
    type: int
    tag: str
    map_ids: tuple[int, ...]


def _info(fd: int, size: int = 256, setup: tuple[tuple[int, str, int], ...] = ()) -> bytes:
    info = ctypes.create_string_buffer(size)
    for offset, fmt, value in setup:
        struct.pack_into("=" + fmt, info, offset, value)
    try:
        _sys_bpf(
            BPF_OBJ_GET_INFO_BY_FD, _attr((0, "I", fd), (4, "I", size), (8, "Q", ctypes.addressof(info)))
        )
    except OSError as exc:
        raise BpfError(f"BPF_OBJ_GET_INFO_BY_FD: {exc.strerror}") from exc
    return info.raw


def map_info_fd(fd: int) -> MapInfo:
    raw = _info(fd)
    kind, ident, key_size, value_size, max_entries, flags = struct.unpack_from("=6I", raw, 0)
    name = raw[24:40].split(b"\0", 1)[0].decode()
    return MapInfo(ident, name, kind, key_size, value_size, max_entries, flags)


def prog_info_fd(fd: int, max_maps: int = 64) -> ProgInfo:
    ids = (ctypes.c_uint32 * max_maps)()
    raw = _info(fd, setup=((52, "I", max_maps), (56, "Q", ctypes.addressof(ids))))
    kind, ident = struct.unpack_from("=2I", raw, 0)
    (nr_map_ids,) = struct.unpack_from("=I", raw, 52)
    name = raw[64:80].split(b"\0", 1)[0].decode()
    return ProgInfo(ident, name, kind, raw[8:16].hex(), tuple(ids[: min(nr_map_ids, max_maps)]))


def prog_info(*, pinned: str | None = None, prog_id: int | None = None) -> ProgInfo:
    fd = obj_get(pinned) if pinned else _fd_by_id(BPF_PROG_GET_FD_BY_ID, prog_id or 0, "program")
    try:
        return prog_info_fd(fd)
    finally:
        os.close(fd)


def map_info(*, pinned: str | None = None, map_id: int | None = None) -> MapInfo:
    fd = obj_get(pinned) if pinned else _fd_by_id(BPF_MAP_GET_FD_BY_ID, map_id or 0, "map")
    try:
        return map_info_fd(fd)
    finally:
        os.close(fd)


def pin_map_id(map_id: int, path: str) -> None:
    """Pin the map with kernel id ``map_id`` at ``path`` (adopting a map of an attached program)."""
    fd = _fd_by_id(BPF_MAP_GET_FD_BY_ID, map_id, "map")
    try:
        obj_pin(fd, path)
    finally:
        os.close(fd)


@lru_cache(maxsize=1)
def possible_cpus() -> int:
    """Number of possible CPUs: the per-CPU value count of per-CPU maps."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


class BpfMap:
    """A pinned map opened through ``bpf(2)``; keys and values are raw bytes.

    Per-CPU maps read as ``possible_cpus()`` values of ``value_size`` (8-byte aligned) each.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = obj_get(path)
        try:
            self.info = map_info_fd(self.fd)
        except BaseException:
            os.close(self.fd)
            raise
        self.percpu = self.info.type in PERCPU_MAP_TYPES
        stride = (self.info.value_size + 7) & ~7
        self._value_len = stride * possible_cpus() if self.percpu else self.info.value_size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> BpfMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _elem(
        self, cmd: int, key: bytes | None, value: ctypes.Array[ctypes.c_char] | None, flags: int = 0
    ) -> int:
        kbuf = ctypes.create_string_buffer(key, self.info.key_size) if key is not None else None
        return _sys_bpf(
            cmd,
            _attr(
                (0, "I", self.fd),
                (8, "Q", ctypes.addressof(kbuf) if kbuf is not None else 0),
                (16, "Q", ctypes.addressof(value) if value is not None else 0),
                (24, "Q", flags),
            ),
        )

    def _check_key(self, key: bytes) -> None:
        if len(key) != self.info.key_size:
            raise ValueError(f"{self.info.name}: key of {len(key)} bytes, the map's are {self.info.key_size}")

    def lookup(self, key: bytes) -> bytes | None:
        self._check_key(key)
        value = ctypes.create_string_buffer(self._value_len)
        try:
            self._elem(BPF_MAP_LOOKUP_ELEM, key, value)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise BpfError(f"lookup in map {self.path}: {exc.strerror}") from exc
        return value.raw

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        self._check_key(key)
        if len(value) != self._value_len:
            raise ValueError(f"{self.info.name}: value of {len(value)} bytes, expected {self._value_len}")
        try:
            self._elem(BPF_MAP_UPDATE_ELEM, key, ctypes.create_string_buffer(value, len(value)), flags)
        except OSError as exc:
            raise BpfError(f"update map {self.path}: {exc.strerror}") from exc

    def delete(self, key: bytes) -> bool:
        self._check_key(key)
        try:
            self._elem(BPF_MAP_DELETE_ELEM, key, None)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise BpfError(f"delete from map {self.path}: {exc.strerror}") from exc
        return True

    def iter_keys(self) -> Iterator[bytes]:
        key: bytes | None = None
        while True:
            nxt = ctypes.create_string_buffer(self.info.key_size)
            try:
                self._elem(BPF_MAP_GET_NEXT_KEY, key, nxt)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return
                raise BpfError(f"iterate map {self.path}: {exc.strerror}") from exc
            key = nxt.raw
            yield key

    def items(self) -> list[tuple[bytes, bytes]]:
        out = []
        for key in list(self.iter_keys()):
            value = self.lookup(key)
            if value is not None:  # deleted meanwhile
                out.append((key, value))
        return out

    def percpu_values(self, raw: bytes) -> list[bytes]:
        stride = (self.info.value_size + 7) & ~7
        return [raw[i : i + self.info.value_size] for i in range(0, len(raw), stride)]


def prog_test_run(pinned_prog: str, packet: bytes, repeat: int = 1) -> tuple[int, bytes]:
    """Run the pinned program once (or ``repeat`` times) on ``packet`` with BPF_PROG_TEST_RUN:
    (its return code, the packet as it left the program). Nothing is sent anywhere: a redirect is
    only a return code (TC_ACT_REDIRECT), which makes this the datapath's deterministic test bed."""
    retval, data, _ = _test_run(pinned_prog, packet, repeat, None)
    return retval, data


def prog_test_run_marked(pinned_prog: str, packet: bytes, mark: int = 0) -> tuple[int, int]:
    """:func:`prog_test_run` of a tc program on a packet carrying ``skb->mark`` = ``mark``: (its
    return code, the mark it left)."""
    retval, _, mark_out = _test_run(pinned_prog, packet, 1, mark)
    return retval, mark_out


_SKB_CTX = struct.Struct("=IIII")  # the head of struct __sk_buff: len, pkt_type, mark, queue_mapping


def _test_run(pinned_prog: str, packet: bytes, repeat: int, mark: int | None) -> tuple[int, bytes, int]:
    fd = obj_get(pinned_prog)
    try:
        data_in = ctypes.create_string_buffer(packet, len(packet))
        data_out = ctypes.create_string_buffer(len(packet) + 256)
        fields = [
            (0, "I", fd),
            (8, "I", len(packet)),
            (12, "I", len(data_out)),
            (16, "Q", ctypes.addressof(data_in)),
            (24, "Q", ctypes.addressof(data_out)),
            (32, "I", repeat),
        ]
        ctx_in = ctx_out = None
        if mark is not None:
            ctx_in = ctypes.create_string_buffer(_SKB_CTX.pack(0, 0, mark, 0), _SKB_CTX.size)
            ctx_out = ctypes.create_string_buffer(256)  # the whole struct __sk_buff, or ENOSPC
            fields += [
                (40, "I", _SKB_CTX.size),
                (44, "I", len(ctx_out)),
                (48, "Q", ctypes.addressof(ctx_in)),
                (56, "Q", ctypes.addressof(ctx_out)),
            ]
        attr = _attr(*fields)
        try:
            _sys_bpf(BPF_PROG_TEST_RUN, attr)
        except OSError as exc:
            raise BpfError(f"BPF_PROG_TEST_RUN {pinned_prog}: {exc.strerror}") from exc
        retval, size = struct.unpack_from("=II", attr, 4)
        mark_out = _SKB_CTX.unpack_from(ctx_out.raw)[2] if ctx_out is not None else 0
        return retval, data_out.raw[:size], mark_out
    finally:
        os.close(fd)


def percpu_counters(pinned: str, names: Sequence[str]) -> dict[str, int]:
    """A pinned per-CPU array of u64 counters, slot ``i`` named ``names[i]``, each summed over CPUs."""
    out = {}
    with BpfMap(pinned) as counters:
        for index, name in enumerate(names):
            raw = counters.lookup(struct.pack("=I", index)) or b""
            out[name] = sum(struct.unpack("=Q", v)[0] for v in counters.percpu_values(raw))
    return out


# ---------------------------------------------------------------------- load with bpftool


def _layout(info: MapInfo) -> tuple[int, int, int, int, int]:
    return (info.type, info.key_size, info.value_size, info.max_entries, info.flags)


def load_object(
    obj: str,
    prog_dir: str,
    map_dir: str,
    reuse: Mapping[str, str] | None = None,
    *,
    prog_type: str | None = "classifier",
) -> None:
    """``bpftool prog loadall``: pin every program of ``obj`` under ``prog_dir`` and its maps under
    ``map_dir`` (both must not exist yet); maps named in ``reuse`` (name -> pinned path) are the
    existing ones, contents and all, instead of new ones. ``prog_type`` None: libbpf takes each
    program's type and attach type from its section name (``cgroup/connect4`` ...)."""
    argv = [BPFTOOL, "prog", "loadall", obj, prog_dir] + (["type", prog_type] if prog_type else [])
    for name, path in sorted((reuse or {}).items()):
        argv += ["map", "name", name, "pinned", path]
    argv += ["pinmaps", map_dir]
    run_tool(argv)


def _repin_maps(prog_ids: Iterable[int], missing: set[str], pin_dir: str) -> dict[str, str]:
    """Pin the maps named in ``missing`` that the programs ``prog_ids`` use (pins lost, programs
    still running) as ``pin_dir/<name>``: name -> pin."""
    adopted: dict[str, str] = {}
    for prog_id in prog_ids:
        for map_id in prog_info(prog_id=prog_id).map_ids:
            name = map_info(map_id=map_id).name
            if name in missing and name not in adopted:
                adopted[name] = os.path.join(pin_dir, name)
                pin_map_id(map_id, adopted[name])
    if adopted:
        log.warning("re-pinned maps of attached programs: %s", ", ".join(sorted(adopted)))
    return adopted


def ensure_objects(
    obj: str,
    pin_dir: str,
    key: str,
    maps: Sequence[str],
    programs: Sequence[str],
    attached: Callable[[], Iterable[int]],
    *,
    prog_type: str | None = "classifier",
) -> dict[str, str]:
    """The programs of ``obj`` pinned under ``pin_dir/prog-<key>`` (name -> pin), using the maps
    pinned as ``pin_dir/<name>``: reused when they are there (contents kept), else re-pinned from
    the programs still attached (``attached()``: their ids), else new. Already loaded against
    those very maps: nothing is done. A pinned map whose type, key, value, size or flags differ
    from the object's (a new layout; libbpf would reuse it as is) is replaced by a new, empty one,
    with a warning. Loading goes through a scratch directory renamed into place, so a crash never
    leaves half a program set under ``prog-<key>``."""
    pinned = {name: os.path.join(pin_dir, name) for name in maps}
    found = {name: path for name, path in pinned.items() if os.path.exists(path)}
    if len(found) < len(maps):
        found.update(_repin_maps(attached(), set(maps) - set(found), pin_dir))
    prog_dir = os.path.join(pin_dir, f"prog-{key}")
    progs = {name: os.path.join(prog_dir, name) for name in programs}
    if len(found) == len(maps) and all(os.path.exists(p) for p in progs.values()):
        map_ids = {map_info(pinned=p).id for p in found.values()}
        if all(set(prog_info(pinned=p).map_ids) <= map_ids for p in progs.values()):
            return progs
    tmp = os.path.join(pin_dir, f"load-{uuid.uuid4().hex[:8]}")  # bpffs names may not contain dots
    try:
        os.makedirs(tmp)  # bpftool wants the parent of a pin path to exist on bpffs
        load_object(obj, f"{tmp}/progs", f"{tmp}/maps", prog_type=prog_type)  # all new: the layouts
        wanted = {name: _layout(map_info(pinned=f"{tmp}/maps/{name}")) for name in found}
        reuse = {name: path for name, path in found.items() if _layout(map_info(pinned=path)) == wanted[name]}
        if set(found) - set(reuse):
            log.warning(
                "pinned maps %s do not fit %s (another layout): replaced by new, empty ones",
                ", ".join(sorted(set(found) - set(reuse))),
                obj,
            )
        if reuse:
            unpin_tree(tmp)
            os.makedirs(tmp)
            load_object(obj, f"{tmp}/progs", f"{tmp}/maps", reuse, prog_type=prog_type)
        fresh = set(maps) - set(reuse)
        for name in fresh:
            os.replace(f"{tmp}/maps/{name}", pinned[name])
        unpin_tree(prog_dir)
        os.rename(f"{tmp}/progs", prog_dir)
    finally:
        unpin_tree(tmp)
    log.info("loaded %s into %s (new maps: %s)", obj, prog_dir, ", ".join(sorted(fresh)) or "none")
    return progs


# ---------------------------------------------------------------------- tc hooks

DIRECTIONS = ("ingress", "egress")


def ensure_clsact(dev: str, netns: str | None = None) -> bool:
    """Add a ``clsact`` qdisc to ``dev`` unless it has one. True if it was added."""
    qdiscs = _json([TC, "-j", "qdisc", "show", "dev", dev], netns)
    if any(q.get("kind") == "clsact" for q in qdiscs):
        return False
    run_tool([TC, "qdisc", "add", "dev", dev, "clsact"], netns)
    return True


def delete_clsact_if_empty(dev: str, netns: str | None = None) -> bool:
    """Remove ``dev``'s clsact qdisc if no filter is left on either hook. True if removed."""
    if any(tc_filters(dev, d, netns) for d in DIRECTIONS):
        return False
    qdiscs = _json([TC, "-j", "qdisc", "show", "dev", dev], netns)
    if not any(q.get("kind") == "clsact" for q in qdiscs):
        return False
    run_tool([TC, "qdisc", "del", "dev", dev, "clsact"], netns)
    return True


@dataclass(frozen=True)
class TcFilter:
    dev: str
    direction: str
    pref: int
    handle: int
    prog_id: int | None
    prog_name: str | None
    tag: str | None
    bpf_name: str | None  # tc's label: "file.o:[section]" or "name:[*fsobj]" for a pinned program


def tc_filters(dev: str, direction: str, netns: str | None = None) -> list[TcFilter]:
    """The filters on ``dev``'s clsact hook ``direction`` ([] when the device has no clsact)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}")
    try:
        rows = _json([TC, "-j", "filter", "show", "dev", dev, direction], netns)
    except BpfError:
        return []  # no clsact qdisc: "Cannot find specified qdisc" (tc 6.1 exits non-zero)
    out = []
    for row in rows:
        opts = row.get("options")
        if not opts:
            continue  # the per-pref header row
        prog = opts.get("prog") or {}
        out.append(
            TcFilter(
                dev=dev,
                direction=direction,
                pref=int(row.get("pref", 0)),
                handle=int(str(opts.get("handle", "0")), 0),
                prog_id=prog.get("id"),
                prog_name=prog.get("name"),
                tag=prog.get("tag"),
                bpf_name=opts.get("bpf_name"),
            )
        )
    return out


def attach_tc(
    dev: str, direction: str, pinned_prog: str, *, pref: int, handle: int = 1, netns: str | None = None
) -> None:
    """Attach (or atomically replace) the pinned program at ``dev`` ``direction`` ``pref``/``handle``."""
    ensure_clsact(dev, netns)
    run_tool(
        [
            TC,
            "filter",
            "replace",
            "dev",
            dev,
            direction,
            "pref",
            str(pref),
            "handle",
            hex(handle),
            "bpf",
            "direct-action",
            "object-pinned",
            pinned_prog,
        ],
        netns,
    )


def attach_tc_programs(
    dev: str, programs: Mapping[str, str], *, pref: int, handle: int = 1, netns: str | None = None
) -> None:
    """``dev``'s clsact (made if missing) with ``{direction: pinned program}`` in direct-action
    mode at ``pref``/``handle``, each created or atomically replaced, through one rtnetlink write
    (:meth:`~podnet.dataplane.netlink.Netlink.tc_attach_bpf`): no ``tc`` process, which cost a new
    veth ~15 ms under the attach lock. Annotated as tc's ``object-pinned`` is (``name:[*fsobj]``)."""
    from podnet.dataplane.netlink import Netlink

    fds: dict[str, tuple[int, str]] = {}
    try:
        for direction, pinned in programs.items():
            if direction not in DIRECTIONS:
                raise ValueError(f"direction must be one of {DIRECTIONS}")
            fds[direction] = (obj_get(pinned), f"{os.path.basename(pinned)}:[*fsobj]")
        with Netlink.open(netns) as nl:
            nl.tc_attach_bpf(dev, fds, pref=pref, handle=handle)
    except DataplaneError as exc:
        if isinstance(exc, BpfError):
            raise
        raise BpfError(f"attach {', '.join(programs)} programs to {dev}: {exc}") from exc
    finally:
        for fd, _ in fds.values():
            os.close(fd)


def detach_tc(dev: str, direction: str, *, pref: int, handle: int = 1, netns: str | None = None) -> None:
    run_tool(
        [TC, "filter", "del", "dev", dev, direction, "pref", str(pref), "handle", hex(handle), "bpf"], netns
    )


# ---------------------------------------------------------------------- listing


def _kind_direction(kind: str) -> str:
    # bpftool net: "clsact/ingress", "clsact/egress", "tcx/ingress" (newer), "ingress" (old qdisc)
    return kind.rsplit("/", 1)[-1]


def list_programs(netns: str | None = None) -> list[dict[str, Any]]:
    """Every BPF program on a tc hook of ``netns``, like ``cilium bpf prog list``.

    One dict per attachment: ``device``, ``ifindex``, ``direction``, ``name``, ``id``, ``tag``,
    ``section`` (tc's label: ``file:[section]``, or ``name:[*fsobj]`` for a pinned program),
    ``pref``, ``handle``, ``pinned`` (paths of the program's pins) and ``maps`` (``id``, ``name``,
    ``type``, ``pinned``). Pinned paths are found by bpftool scanning the bpf filesystems visible
    to this process.
    """
    net = _json([BPFTOOL, "-j", "net", "show"], netns)
    attached = [t for entry in net for t in entry.get("tc", [])]
    if not attached:
        return []
    progs = {p["id"]: p for p in _json([BPFTOOL, "-j", "-f", "prog", "show"])}
    maps = {m["id"]: m for m in _json([BPFTOOL, "-j", "-f", "map", "show"])}
    filters: dict[tuple[str, str], list[TcFilter]] = {}
    out: list[dict[str, Any]] = []
    for t in attached:
        device, direction, prog_id = t["devname"], _kind_direction(t.get("kind", "")), t.get("id")
        if (device, direction) not in filters:
            filters[(device, direction)] = (
                tc_filters(device, direction, netns) if direction in DIRECTIONS else []
            )
        flt = next((f for f in filters[(device, direction)] if f.prog_id == prog_id), None)
        prog = progs.get(prog_id, {})
        out.append(
            {
                "device": device,
                "ifindex": t.get("ifindex"),
                "direction": direction,
                "name": prog.get("name") or (t.get("name") or "").split(":", 1)[0],
                "id": prog_id,
                "tag": prog.get("tag"),
                "section": flt.bpf_name if flt else t.get("name"),
                "pref": flt.pref if flt else None,
                "handle": flt.handle if flt else None,
                "pinned": sorted(prog.get("pinned", [])),
                "maps": [
                    {
                        "id": mid,
                        "name": maps.get(mid, {}).get("name"),
                        "type": maps.get(mid, {}).get("type"),
                        "pinned": sorted(maps.get(mid, {}).get("pinned", [])),
                    }
                    for mid in prog.get("map_ids", [])
                ],
            }
        )
    out.sort(key=lambda p: (p["device"], p["direction"], p["pref"] or 0))
    return out
