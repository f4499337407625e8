"""The CNI protocol as podnet-cni speaks it: versions, environment, configuration, errors, results.

Pure functions over the standard library (the plugin must start in milliseconds: no dataclasses,
typing, logging or ipaddress here). Everything follows CNI spec 1.1.0 and, where the spec is silent,
what ``containernetworking/cni``'s ``skel`` and ``libcni`` do (the spec:
https://github.com/containernetworking/cni/blob/main/SPEC.md, labelled 1.1.0 but later than the
spec-v1.1.0 tag: ``disableGC``, ``cni.dev/valid-attachments``, drop-in directories).

Versions (:mod:`podnet.cni.versions`)
    podnet-cni supports 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0: every version whose result has the
    ``interfaces``/``ips``/``routes`` shape (0.1.0/0.2.0 used ``ip4``/``ip6`` and are refused), so a
    result converts between them without loss of meaning. CHECK needs 0.4.0, GC and STATUS 1.1.0.
    A missing ``cniVersion`` reads as "0.1.0" (as libcni does) and is refused with code 1.

Order of checks (as ``skel``): command and environment (4), stdin (5), JSON (6), ``name`` (7),
version (1), per-command version gates (1), podnet's keys (7 wrong type / 2 unsupported value).
An error carries ``cniVersion`` only once the request's version is known to be one we support.

Results
    The agent answers in the 1.1.0 shape. :func:`upgrade_result` reads any supported version into
    that shape, :func:`merge_results` appends the agent's result to a chained ``prevResult``
    (re-indexing ``ips[].interface``) and :func:`downgrade_result` writes exactly the keys the target
    version defines: 1.0.0 loses interface ``mtu``/``socketPath``/``pciID`` and route
    ``mtu``/``advmss``/``priority``/``table``/``scope``; 0.4.0/0.3.x also gain ``ips[].version``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from podnet.cni.versions import (
    DEFAULT_TIMEOUT_SECONDS,
    MAX_TIMEOUT_SECONDS,
    NEWEST_VERSION,
    SUPPORTED_VERSIONS,
    VERSION_JSON,
)

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")

# Error codes: CNI spec §5 (0-99 reserved) plus the library's 8 and 999.
ERR_UNKNOWN = 0
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENVIRONMENT = 4
ERR_IO = 5
ERR_DECODING = 6
ERR_INVALID_CONFIG = 7
ERR_INVALID_NETNS = 8
ERR_TRY_AGAIN_LATER = 11
ERR_NOT_AVAILABLE = 50
ERR_NOT_AVAILABLE_DEGRADED = 51
ERR_INTERNAL = 999

MAX_IFNAME_BYTES = 15  # IFNAMSIZ - 1
LOG_LEVELS = ("debug", "info", "warning", "error")
IPAM_TYPE = "podnet-ipam"
GC_KEY = "cni.dev/valid-attachments"
GC_KEY_OLD = "cni.dev/attachments"  # the spec's name until 2024-07; libcni sends both (#1101)

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_DNS_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


class CNIError(Exception):
    """A CNI error result: ``code``, ``msg`` and ``details`` exactly as printed on stdout."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str | None = None) -> dict:
        out: dict = {"cniVersion": cni_version} if cni_version else {}
        out["code"] = self.code
        out["msg"] = self.msg
        if self.details:
            out["details"] = self.details
        return out


# ---------------------------------------------------------------------------------------- versions


def parse_version(text: object) -> tuple[int, int, int] | None:
    """``"1.0.0"`` → ``(1, 0, 0)``; anything that is not three dot-separated numbers → None."""
    if not isinstance(text, str):
        return None
    parts = text.split(".")
    if len(parts) != 3 or not all(p.isdigit() and p.isascii() for p in parts):
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])


def version_at_least(version: str, minimum: str) -> bool:
    parsed = parse_version(version)
    return parsed is not None and parsed >= (parse_version(minimum) or (0, 0, 0))


def version_json() -> str:
    """The VERSION answer (``skel`` reports its own newest version and ignores stdin)."""
    return VERSION_JSON


# ------------------------------------------------------------------------------------- environment


def valid_name(name: str) -> bool:
    """Container ID and network name rule: ``^[a-zA-Z0-9][a-zA-Z0-9_.-]*$``."""
    return bool(name) and name[0].isascii() and name[0].isalnum() and set(name) <= _NAME_CHARS


def interface_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a Linux interface name (``skel``'s four rules), or None."""
    if not name:
        return "interface name is empty"
    try:
        encoded = name.encode()
    except UnicodeEncodeError:  # bytes that are not UTF-8 reach os.environ as lone surrogates
        return f"interface name {name!r} is not valid UTF-8"
    if len(encoded) > MAX_IFNAME_BYTES:
        return f"interface name {name!r} is too long (at most {MAX_IFNAME_BYTES} bytes)"
    if name in (".", ".."):
        return f"interface name {name!r} is . or .."
    if any(c in "/:" or c.isspace() for c in name):
        return f"interface name {name!r} contains '/', ':' or whitespace"
    return None


def _dns_label(value: str, max_len: int = 63) -> bool:
    return 0 < len(value) <= max_len and set(value) <= _DNS_CHARS and value[0] != "-" and value[-1] != "-"


def _check_k8s_value(key: str, value: str) -> str | None:
    if key == "K8S_POD_NAMESPACE":
        return None if _dns_label(value) else "not a DNS-1123 label"
    if key == "K8S_POD_NAME":
        ok = len(value) <= 253 and all(_dns_label(part) for part in value.split("."))
        return None if ok else "not a DNS-1123 subdomain"
    if key == "K8S_POD_INFRA_CONTAINER_ID":
        return None if valid_name(value) else "not a container ID"
    if key == "K8S_POD_UID":
        return None if len(value) <= 128 and valid_name(value) else "not a UID"
    return None


K8S_ARGS = ("K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID")


def parse_cni_args(text: str) -> tuple[dict[str, str], list[str]]:
    """Parse ``CNI_ARGS`` like the Go library's ``types.LoadArgs``.

    ``K=V`` pairs separated by ``;``, each with exactly one ``=``. podnet knows the four ``K8S_POD_*``
    keys; any other key is an error unless ``IgnoreUnknown`` is ``1``/``true`` (the convention;
    containerd and CRI-O always send ``IgnoreUnknown=1``). Returns the known non-empty values and
    a list of problems.
    """
    values: dict[str, str] = {}
    problems: list[str] = []
    if not text:
        return values, problems
    unknown: list[str] = []
    ignore_unknown = False
    for pair in text.split(";"):
        kv = pair.split("=")
        if len(kv) != 2:
            problems.append(f"invalid pair {pair!r} (want KEY=VALUE)")
            continue
        key, value = kv
        if key == "IgnoreUnknown":
            if value.lower() in ("1", "true"):
                ignore_unknown = True
            elif value.lower() not in ("0", "false"):
                problems.append(f"IgnoreUnknown={value!r} is not 1, true, 0 or false")
        elif key in K8S_ARGS:
            if value:
                problem = _check_k8s_value(key, value)
                if problem:
                    problems.append(f"{key}={value!r}: {problem}")
                else:
                    values[key] = value
        else:
            unknown.append(pair)
    if unknown and not ignore_unknown:
        problems.append(f"unknown args {unknown} (set IgnoreUnknown=1 to ignore them)")
    return values, problems


class Invocation:
    """The CNI parameters from the environment, validated for ``command``."""

    __slots__ = ("args", "command", "container_id", "ifname", "netns", "netns_override", "path")

    def __init__(
        self,
        command: str,
        container_id: str = "",
        netns: str = "",
        ifname: str = "",
        args: dict[str, str] | None = None,
        path: list[str] | None = None,
        netns_override: bool = False,
    ) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = args or {}
        self.path = path or []
        self.netns_override = netns_override


# Which variables each command requires (skel's table; CNI_NETNS is optional on DEL).
_REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
    "VERSION": (),
}


def parse_environment(env: Mapping[str, str]) -> Invocation:
    """Validate the CNI variables for ``CNI_COMMAND``; code 4 names every bad variable at once.

    An empty variable counts as unset (libcni always sets all six, some empty).
    """
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CNIError(ERR_INVALID_ENVIRONMENT, "required env variables [CNI_COMMAND] missing")
    if command not in COMMANDS:
        raise CNIError(
            ERR_INVALID_ENVIRONMENT,
            f"unknown CNI_COMMAND: {command}",
            f"CNI_COMMAND must be one of {', '.join(COMMANDS)}",
        )
    required = _REQUIRED[command]
    problems: dict[str, str] = {}
    for var in required:
        if not env.get(var, ""):
            problems[var] = f"missing (required for {command})"
    container_id = env.get("CNI_CONTAINERID", "")
    ifname = env.get("CNI_IFNAME", "")
    netns = env.get("CNI_NETNS", "")
    args: dict[str, str] = {}
    if command in ("ADD", "CHECK", "DEL"):
        if container_id and not valid_name(container_id):
            problems["CNI_CONTAINERID"] = (
                f"{container_id!r} has invalid characters (want ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$)"
            )
        if ifname:
            problem = interface_name_problem(ifname)
            if problem:
                problems["CNI_IFNAME"] = problem
        args, arg_problems = parse_cni_args(env.get("CNI_ARGS", ""))
        if arg_problems:
            problems["CNI_ARGS"] = "; ".join(arg_problems)
        if netns and not os.path.isabs(netns):
            # The agent opens the path, not this process: make it mean what it means here.
            netns = os.path.abspath(netns)
    if problems:
        raise CNIError(
            ERR_INVALID_ENVIRONMENT,
            "invalid CNI environment variables: " + ", ".join(problems),
            "; ".join(f"{var}: {why}" for var, why in problems.items()),
        )
    override = env.get("CNI_NETNS_OVERRIDE", "").lower() in ("1", "true")
    path = [p for p in env.get("CNI_PATH", "").split(":") if p]
    return Invocation(command, container_id, netns, ifname, args, path, override)


# ----------------------------------------------------------------------------------- configuration


class NetConf:
    """The validated plugin configuration. ``raw`` is the object as received (forwarded to the agent)."""

    __slots__ = (
        "agent_socket",
        "cni_version",
        "delete_queue_dir",
        "ipam",
        "log_file",
        "log_level",
        "mtu",
        "name",
        "prev_result",
        "raw",
        "timeout_seconds",
        "type",
        "warnings",
    )

    def __init__(self, raw: dict, name: str, cni_version: str, type_: str) -> None:
        self.raw = raw
        self.name = name
        self.cni_version = cni_version
        self.type = type_
        self.agent_socket: str | None = None
        self.delete_queue_dir: str | None = None
        self.mtu = 0
        self.ipam: dict | None = None
        self.log_level = "info"
        self.log_file: str | None = None
        self.timeout_seconds = DEFAULT_TIMEOUT_SECONDS
        self.prev_result: dict | None = None
        self.warnings: list[str] = []


def decode_config(data: bytes) -> dict:
    """stdin → JSON object, or code 6."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CNIError(ERR_DECODING, f"error unmarshalling network config: {exc}") from None
    except RecursionError:  # json's C scanner recurses per nesting level: "[[[[..." exhausts the stack
        raise CNIError(ERR_DECODING, "error unmarshalling network config: nested too deeply") from None
    if not isinstance(raw, dict):
        raise CNIError(
            ERR_DECODING,
            f"error unmarshalling network config: want a JSON object, got {type(raw).__name__}",
        )
    return raw


def config_version(raw: dict) -> str | None:
    """The request's ``cniVersion`` if it is one podnet supports, else None (for error output)."""
    version = raw.get("cniVersion")
    return version if version in SUPPORTED_VERSIONS else None


def _invalid(key: str, why: str) -> CNIError:
    return CNIError(ERR_INVALID_CONFIG, f"invalid network config: {key}: {why}")


def _unsupported(key: str, value: object, why: str) -> CNIError:
    return CNIError(
        ERR_UNSUPPORTED_FIELD, f"unsupported network config field {key}={json.dumps(value)}: {why}"
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _absolute_path(raw: dict, key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _invalid(key, "must be a non-empty string")
    if not os.path.isabs(value):
        raise _unsupported(key, value, "must be an absolute path")
    return value


def _parse_podnet_keys(conf: NetConf, raw: dict) -> None:
    """podnet's own keys that only ADD/CHECK/STATUS depend on."""
    mtu = raw.get("mtu", 0)
    if not isinstance(mtu, int) or isinstance(mtu, bool):
        raise _invalid("mtu", "must be an integer (0: the agent decides)")
    if mtu != 0 and not 68 <= mtu <= 65535:
        raise _unsupported("mtu", mtu, "must be 0 or between 68 and 65535")
    conf.mtu = mtu

    ipam = raw.get("ipam")
    if ipam is not None:
        if not isinstance(ipam, dict):
            raise _invalid("ipam", "must be an object")
        ipam_type = ipam.get("type")
        if not isinstance(ipam_type, str) or not ipam_type:
            raise _invalid("ipam.type", 'missing (podnet\'s IPAM is {"type": "podnet-ipam"})')
        if ipam_type != IPAM_TYPE:
            raise _unsupported(
                "ipam.type", ipam_type, f"podnet allocates through its agent: use {IPAM_TYPE!r} or omit ipam"
            )
        pools = ipam.get("ipv4_pools")
        if pools is not None:
            if not isinstance(pools, list) or not all(isinstance(p, str) for p in pools):
                raise _invalid("ipam.ipv4_pools", "must be a list of strings (pool names or CIDRs)")
            for pool in pools:
                if not pool.strip():
                    raise _unsupported("ipam.ipv4_pools", pool, "pool names must not be empty")
        conf.ipam = ipam

    level = raw.get("log_level")
    if level is not None:
        if not isinstance(level, str):
            raise _invalid("log_level", "must be a string")
        normalized = "warning" if level.lower() == "warn" else level.lower()
        if normalized not in LOG_LEVELS:
            raise _unsupported("log_level", level, f"must be one of {', '.join(LOG_LEVELS)}")
        conf.log_level = normalized
    conf.log_file = _absolute_path(raw, "log_file")
    if "dns" in raw and not isinstance(raw["dns"], dict):
        raise _invalid("dns", "must be an object")


def _parse_essential_keys(conf: NetConf, raw: dict) -> None:
    """Keys every verb needs to reach the agent (always validated strictly)."""
    conf.agent_socket = _absolute_path(raw, "agent_socket")
    conf.delete_queue_dir = _absolute_path(raw, "delete_queue_dir")
    timeout = raw.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS)
    if not _is_number(timeout):
        raise _invalid("timeout_seconds", "must be a number")
    if not 0 < timeout <= MAX_TIMEOUT_SECONDS:
        raise _unsupported("timeout_seconds", timeout, f"must be > 0 and <= {MAX_TIMEOUT_SECONDS:g}")
    conf.timeout_seconds = float(timeout)
    for key in ("runtimeConfig", "args"):
        if key in raw and not isinstance(raw[key], dict):
            raise _invalid(key, "must be an object")


def parse_config(raw: dict, command: str) -> NetConf:
    """Validate the decoded stdin for ``command`` (not VERSION) and return the :class:`NetConf`.

    DEL and GC are clean-up: a bad value in a key only ADD uses (``mtu``, ``ipam``, ``log_*``) or a
    malformed ``prevResult`` is a warning there, not an error, so a config that made ADD fail
    cannot also block the DEL the runtime must run after it.
    """
    name = raw.get("name")
    if name is None or name == "":
        raise CNIError(ERR_INVALID_CONFIG, "invalid network config: missing network name")
    if not isinstance(name, str):
        raise _invalid("name", "must be a string")
    if not valid_name(name):
        raise CNIError(
            ERR_INVALID_CONFIG,
            "invalid characters found in network name",
            f"{name!r}: want ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$",
        )
    version = raw.get("cniVersion")
    if version is not None and not isinstance(version, str):
        raise _invalid("cniVersion", "must be a string")
    version = version or "0.1.0"
    if version not in SUPPORTED_VERSIONS:
        missing = " (cniVersion missing)" if not raw.get("cniVersion") else ""
        raise CNIError(
            ERR_INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f"config is {version!r}{missing}, plugin supports {list(SUPPORTED_VERSIONS)}",
        )
    gate = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}.get(command)
    if gate and not version_at_least(version, gate):
        raise CNIError(
            ERR_INCOMPATIBLE_VERSION,
            f"config version does not allow {command}",
            f"{command} needs cniVersion {gate} or later; config is {version!r}",
        )
    type_ = raw.get("type")
    if type_ is None or type_ == "":
        raise CNIError(ERR_INVALID_CONFIG, "invalid network config: missing plugin type")
    if not isinstance(type_, str):
        raise _invalid("type", "must be a string")

    conf = NetConf(raw, name, version, type_)
    _parse_essential_keys(conf, raw)
    cleanup = command in ("DEL", "GC")
    try:
        _parse_podnet_keys(conf, raw)
    except CNIError as exc:
        if not cleanup:
            raise
        conf.warnings.append(f"ignored on {command}: {exc.msg}")

    prev = raw.get("prevResult")
    if prev is not None and command in ("ADD", "CHECK", "DEL"):
        try:
            conf.prev_result = upgrade_result(prev, where="prevResult")
        except CNIError as exc:
            if command != "DEL":
                raise
            conf.warnings.append(f"ignored on DEL: {exc.msg}")
    if command == "CHECK" and conf.prev_result is None:
        raise _invalid("prevResult", "CHECK needs the cached ADD result as prevResult")
    if command == "GC":
        raw[GC_KEY] = gc_attachments(raw)
    return conf


def gc_attachments(raw: dict) -> list[dict]:
    """The valid attachments of a GC request, from ``cni.dev/valid-attachments`` or the old
    ``cni.dev/attachments``; JSON ``null`` (Go's nil slice) is an empty list. A request with
    neither key is refused: treating "no list" as "nothing is valid" would release every pod."""
    key = GC_KEY if GC_KEY in raw else GC_KEY_OLD if GC_KEY_OLD in raw else None
    if key is None:
        raise _invalid(GC_KEY, "missing (GC needs the list of still-valid attachments)")
    value = raw[key]
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid(key, "must be a list of {containerID, ifname}")
    out = []
    for i, item in enumerate(value):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("containerID"), str)
            or not isinstance(item.get("ifname"), str)
        ):
            raise _invalid(f"{key}[{i}]", "must be an object with string containerID and ifname")
        out.append({"containerID": item["containerID"], "ifname": item["ifname"]})
    return out


# ------------------------------------------------------------------------------------------ results

_INTERFACE_KEYS = {"1.1.0": ("name", "mac", "mtu", "sandbox", "socketPath", "pciID")}
_ROUTE_KEYS = {"1.1.0": ("dst", "gw", "mtu", "advmss", "priority", "table", "scope")}
_OLD_INTERFACE_KEYS = ("name", "mac", "sandbox")
_OLD_ROUTE_KEYS = ("dst", "gw")
_DNS_KEYS = ("nameservers", "domain", "search", "options")


def _list_of_objects(result: dict, key: str, where: str) -> list[dict]:
    value = result.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _invalid(f"{where}.{key}", "must be a list of objects")
    return value


def upgrade_result(result: object, where: str = "result") -> dict:
    """Read a result of any supported version into the 1.1.0 shape, checking its structure.

    Every supported version reads the same way: keys are kept (a chained plugin passes on what it
    was given) and only 0.3/0.4's ``ips[].version`` goes. Errors (code 7) name the path, e.g.
    ``prevResult.ips[0].address``.
    """
    if not isinstance(result, dict):
        raise _invalid(where, "must be an object")
    interfaces = [dict(i) for i in _list_of_objects(result, "interfaces", where)]
    for n, intf in enumerate(interfaces):
        if not isinstance(intf.get("name"), str) or not intf["name"]:
            raise _invalid(f"{where}.interfaces[{n}].name", "must be a non-empty string")
    ips = []
    for n, ip in enumerate(_list_of_objects(result, "ips", where)):
        address = ip.get("address")
        if not isinstance(address, str) or "/" not in address:
            raise _invalid(f"{where}.ips[{n}].address", "must be an address in CIDR notation")
        index = ip.get("interface")
        if index is not None and (
            not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(interfaces)
        ):
            raise _invalid(f"{where}.ips[{n}].interface", f"{index!r} is not an index into interfaces")
        ips.append({k: v for k, v in ip.items() if k != "version"})
    routes = [dict(r) for r in _list_of_objects(result, "routes", where)]
    for n, route in enumerate(routes):
        if not isinstance(route.get("dst"), str):
            raise _invalid(f"{where}.routes[{n}].dst", "must be a CIDR string")
    dns = result.get("dns") or {}
    if not isinstance(dns, dict):
        raise _invalid(f"{where}.dns", "must be an object")
    return {
        "cniVersion": NEWEST_VERSION,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": dict(dns),
    }


def merge_results(prev: dict, own: dict) -> dict:
    """A chained plugin's output: ``prev`` (1.1.0 shape) plus this plugin's own result.

    Own interfaces are appended, so own ``ips[].interface`` indexes shift by the number of
    interfaces already in ``prev``. Own DNS fields fill in or replace ``prev``'s where set.
    """
    shift = len(prev["interfaces"])
    ips = [dict(ip) for ip in prev["ips"]]
    for ip in own["ips"]:
        ip = dict(ip)
        if isinstance(ip.get("interface"), int):
            ip["interface"] += shift
        ips.append(ip)
    dns = dict(prev["dns"])
    dns.update({k: v for k, v in own["dns"].items() if v})
    return {
        "cniVersion": NEWEST_VERSION,
        "interfaces": prev["interfaces"] + own["interfaces"],
        "ips": ips,
        "routes": prev["routes"] + own["routes"],
        "dns": dns,
    }


def ip_version(address: str) -> str:
    """``"4"`` or ``"6"`` as the Go library decides it (``IP.To4() != nil``: v4-mapped v6 is 4)."""
    host = address.split("/", 1)[0]
    if ":" not in host:
        return "4"
    import socket  # only needed here; the agent path has loaded it already

    try:
        packed = socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        return "6"
    return "4" if packed[:12] == b"\0" * 10 + b"\xff\xff" else "6"


def _pick(item: dict, keys: tuple[str, ...]) -> dict:
    return {k: item[k] for k in keys if k in item and item[k] is not None}


def downgrade_result(result: dict, version: str) -> dict:
    """Write a 1.1.0-shaped result as ``version``, with exactly the keys that version defines."""
    new = version == "1.1.0"
    legacy = not version_at_least(version, "1.0.0")
    intf_keys = _INTERFACE_KEYS["1.1.0"] if new else _OLD_INTERFACE_KEYS
    route_keys = _ROUTE_KEYS["1.1.0"] if new else _OLD_ROUTE_KEYS
    ips = []
    for ip in result["ips"]:
        out = {"version": ip_version(ip["address"])} if legacy else {}
        out.update(_pick(ip, ("address", "gateway", "interface")))
        ips.append(out)
    return {
        "cniVersion": version,
        "interfaces": [_pick(i, intf_keys) for i in result["interfaces"]],
        "ips": ips,
        "routes": [_pick(r, route_keys) for r in result["routes"]],
        "dns": _pick(result["dns"], _DNS_KEYS),
    }


def convert_result(result: dict, to_version: str) -> dict:
    """A result of any supported version as ``to_version`` (through the 1.1.0 shape)."""
    return downgrade_result(upgrade_result(result), to_version)
