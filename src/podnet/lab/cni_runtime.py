"""The container runtime's side of CNI, done the way containerd and CRI-O do it through libcni.

The lab's kubelet uses this to wire pods exactly as a real node would, so podnet-cni is exercised
through the real mechanism (exec, environment, stdin, stdout) and can be chained with Debian's
reference plugins. Sources: ``containernetworking/cni`` ``libcni/api.go`` and ``conf.go``,
``pkg/invoke``; the spec, SPEC.md §3
(https://github.com/containernetworking/cni/blob/main/SPEC.md, labelled 1.1.0 but later than the
spec-v1.1.0 tag: ``disableGC``, ``cni.dev/valid-attachments``, drop-in directories).

Loading (:func:`load_conflist`)
    ``*.conflist`` files first, then ``*.conf``/``*.json`` (a single plugin config, wrapped into a
    list), each group in lexical order; the first (or the one named ``network``) wins. Plugins from
    the drop-in directory ``<conf_dir>/<name>/*.conf`` are appended unless
    ``loadOnlyInlinedPlugins``. Version negotiation: the highest of ``cniVersion`` and ``cniVersions``
    not newer than :data:`LIBCNI_VERSION` (1.1.0).

Per plugin (:meth:`CNIRuntime.request_config`)
    The plugin's object with ``name`` and ``cniVersion`` injected; for ADD/DEL/CHECK ``runtimeConfig``
    = declared ``capabilities`` ∩ the caller's capability args (only when non-empty, as libcni) and
    ``prevResult`` (ADD: the previous plugin's result, absent for the first; DEL/CHECK: the cached
    final ADD result); ``capabilities`` and any ``cni.dev/*`` key are removed (SPEC §3 "must not be
    set"; libcni leaves ``capabilities`` in). GC gets ``cni.dev/valid-attachments`` and the old
    ``cni.dev/attachments``. Environment: the caller's environment plus the six ``CNI_*`` variables,
    always all set (empty when unused), like ``invoke.Args.AsEnv``.

Lifecycle
    ADD runs the list in order and stops at the first error (the caller, like the kubelet, then
    runs DEL); the final result is cached as libcni does (``<cache_dir>/results/<net>-<id>-<ifname>``,
    ``cniCacheV1`` JSON) and removed after a successful DEL. DEL runs in reverse. CHECK needs
    ≥ 0.4.0 and honours ``disableCheck``. GC (honouring ``disableGC``) first DELs cached attachments
    missing from the valid set, then sends GC when the list is ≥ 1.1.0, continuing past errors.
    GC and STATUS skip a plugin whose VERSION lacks 1.1.0 (Debian's 1.1.1 plugins would answer
    "unknown CNI_COMMAND"); STATUS stops at the first error.

Plugins run as the kubelet runs them: optionally inside the node's network namespace
(``netns_exec="node-1"`` → ``ip netns exec node-1 <plugin>``, or any prefix list). Every exec is
timed: :class:`CNIResult` (a dict) and :class:`CNIError` carry the :class:`PluginCall` list.
"""

from __future__ import annotations

import base64
import compileall
import contextlib
import errno
import json
import logging
import os
import py_compile
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence

import podnet
from podnet.cni.spec import SUPPORTED_VERSIONS, convert_result, interface_name_problem, valid_name

LIBCNI_VERSION = "1.1.0"
ALL_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
DEFAULT_CACHE_DIR = "/var/lib/cni"
CACHE_KIND = "cniCacheV1"
log = logging.getLogger("podnet.lab.cni")


class ConfListError(ValueError):
    """A network configuration file that libcni would refuse."""


class PluginCall:
    """One exec of one plugin: what ran, how long it took, how it ended."""

    __slots__ = ("code", "command", "exit_status", "plugin", "seconds", "stderr")

    def __init__(
        self, plugin: str, command: str, seconds: float, exit_status: int, code: int | None, stderr: str
    ) -> None:
        self.plugin = plugin
        self.command = command
        self.seconds = seconds
        self.exit_status = exit_status
        self.code = code  # the CNI error code when it failed
        self.stderr = stderr

    def __repr__(self) -> str:
        return f"PluginCall({self.plugin} {self.command} {self.seconds * 1000:.1f}ms exit={self.exit_status})"


class CNIResult(dict):
    """The final ADD result (in the list's version), with ``calls``: the timed plugin execs."""

    def __init__(self, result: dict, calls: list[PluginCall]) -> None:
        super().__init__(result)
        self.calls = calls


class CNIError(Exception):
    """A plugin's error result (``code``, ``msg``, ``details``), or a runtime-side failure with code 0
    (libcni's zero value: plugin not found, no parsable output). ``plugin`` names the failing plugin,
    ``calls`` the execs so far; GC's combined error lists every failure in ``errors``."""

    def __init__(
        self,
        code: int,
        msg: str,
        details: str = "",
        plugin: str | None = None,
        command: str | None = None,
        calls: list[PluginCall] | None = None,
        errors: list[CNIError] | None = None,
    ) -> None:
        self.code = code
        self.msg = msg
        self.details = details
        self.plugin = plugin
        self.command = command
        self.calls = calls if calls is not None else []
        self.errors = errors if errors is not None else []
        where = f"plugin type={plugin!r} failed ({command}): " if plugin else ""
        super().__init__(f"{where}code {code}: {msg}{'; ' + details if details else ''}")


# ------------------------------------------------------------------------------------- versions


def _version_key(version: str) -> tuple[int, int, int]:
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ConfListError(f"invalid version {version!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def version_at_least(version: str, minimum: str) -> bool:
    try:
        return _version_key(version or "0.1.0") >= _version_key(minimum)
    except ConfListError:
        return False


# ------------------------------------------------------------------------------------ loading


def _read_bool(raw: dict, key: str, source: str) -> bool:
    value = raw.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfListError(f"{source}: invalid value {value!r} for {key}")


def conflist_from_bytes(data: bytes, source: str = "<bytes>") -> dict:
    """Parse and normalise a ``.conflist`` (libcni ``NetworkConfFromBytes``)."""
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise ConfListError(f"{source}: error parsing configuration list: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfListError(f"{source}: error parsing configuration list: not an object")
    if "name" not in raw:
        raise ConfListError(f"{source}: error parsing configuration list: no name")
    if not isinstance(raw["name"], str):
        raise ConfListError(f"{source}: error parsing configuration list: invalid name type")
    version = raw.get("cniVersion", "")
    if not isinstance(version, str):
        raise ConfListError(f"{source}: error parsing configuration list: invalid cniVersion type")
    if "cniVersions" in raw:
        versions = raw["cniVersions"]
        if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
            raise ConfListError(f"{source}: error parsing configuration list: invalid cniVersions")
        candidates = [v for v in versions if _version_key(v) <= _version_key(LIBCNI_VERSION)]
        if version and _version_key(version) <= _version_key(LIBCNI_VERSION):
            candidates.append(version)
        if candidates:
            version = max(candidates, key=_version_key)
    out = dict(raw)
    out["cniVersion"] = version
    for key in ("disableCheck", "disableGC", "loadOnlyInlinedPlugins"):
        out[key] = _read_bool(raw, key, source)
    plugins = raw.get("plugins")
    if plugins is None:
        if out["loadOnlyInlinedPlugins"]:
            raise ConfListError(f"{source}: `loadOnlyInlinedPlugins` is true, and no 'plugins' key")
        plugins = []
    elif not isinstance(plugins, list) or not plugins:
        raise ConfListError(f"{source}: error parsing configuration list: no plugins in list")
    for i, plugin in enumerate(plugins):
        if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str) or not plugin["type"]:
            raise ConfListError(f"{source}: failed to parse plugin config {i}: missing 'type'")
    out["plugins"] = [dict(p) for p in plugins]
    return out


def _conf_files(directory: str, extensions: tuple[str, ...]) -> list[str]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(
        os.path.join(directory, n)
        for n in names
        if os.path.splitext(n)[1] in extensions and not os.path.isdir(os.path.join(directory, n))
    )


def _load_file(path: str, conf_dir: str) -> dict:
    with open(path, "rb") as handle:
        data = handle.read()
    if path.endswith(".conflist"):
        conflist = conflist_from_bytes(data, path)
        if not conflist["loadOnlyInlinedPlugins"]:
            for drop_in in _conf_files(os.path.join(conf_dir, conflist["name"]), (".conf",)):
                with open(drop_in, "rb") as handle:
                    plugin = json.loads(handle.read())
                if not isinstance(plugin, dict) or not plugin.get("type"):
                    raise ConfListError(f"{drop_in}: error parsing configuration: missing 'type'")
                conflist["plugins"].append(plugin)
        if not conflist["plugins"]:
            raise ConfListError(f"{path}: no plugin configs found")
        return conflist
    try:
        single = json.loads(data)
    except ValueError as exc:
        raise ConfListError(f"{path}: error parsing configuration: {exc}") from None
    if not isinstance(single, dict) or not single.get("type"):
        raise ConfListError(f"{path}: error parsing configuration: missing 'type'")
    wrapped = {
        "name": single.get("name", ""),
        "cniVersion": single.get("cniVersion", ""),
        "plugins": [single],
    }
    return conflist_from_bytes(json.dumps(wrapped).encode(), path)


def load_conflist(conf_dir: str, network: str | None = None) -> dict:
    """The network configuration list a runtime would use from ``conf_dir``.

    Returns the normalised list: ``name``, negotiated ``cniVersion``, ``plugins``, the three booleans
    and any other top-level keys. Raises :class:`ConfListError` (``FileNotFoundError`` when none).
    """
    files = _conf_files(conf_dir, (".conflist",)) + _conf_files(conf_dir, (".conf", ".json"))
    if not files:
        raise FileNotFoundError(f"no net configurations found in {conf_dir}")
    for path in files:
        conflist = _load_file(path, conf_dir)
        if network is None or conflist["name"] == network:
            return conflist
    raise FileNotFoundError(f'no net configuration with name "{network}" in {conf_dir}')


def kubernetes_args(namespace: str, name: str, sandbox_id: str, uid: str) -> dict[str, str]:
    """The CNI_ARGS containerd's CRI plugin sends for a pod sandbox (``toCNILabels``)."""
    return {
        "IgnoreUnknown": "1",
        "K8S_POD_NAMESPACE": namespace,
        "K8S_POD_NAME": name,
        "K8S_POD_INFRA_CONTAINER_ID": sandbox_id,
        "K8S_POD_UID": uid,
    }


def install_podnet_plugin(bin_dir: str, name: str = "podnet", python: str = sys.executable) -> str:
    """Write the podnet plugin named ``name`` into a CNI bin directory; return its path.

    The binary is ``podnet/cni/forward.c`` compiled (cached by source digest): it forwards the
    invocation to the agent without starting Python, and execs the Python plugin for the rest,
    through a launcher written beside it (``.<name>-python``). Without a C compiler, the launcher
    itself is the plugin. The launcher beats a symlink to the ``podnet-cni`` console script:
    ``python -S`` skips ``site`` and its ``.pth`` hooks, and it does not import ``re`` as pip's
    script does. The plugin's modules are byte-compiled here: with ``PYTHONDONTWRITEBYTECODE`` in
    the runtime's environment (an editable install writes no ``.pyc`` of its own) every call
    would compile them.
    """
    package = os.path.dirname(os.path.abspath(podnet.__file__))
    py_compile.compile(os.path.join(package, "__init__.py"), quiet=1)
    compileall.compile_dir(os.path.join(package, "cni"), quiet=1)
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, name)
    launcher = os.path.join(bin_dir, f".{name}-python")
    source = (
        f"#!{python} -S\n"
        "# podnet-cni launcher written by podnet.lab.cni_runtime.install_podnet_plugin\n"
        "import sys\n"
        f"sys.path.insert(0, {os.path.dirname(package)!r})\n"
        "from podnet.cni.main import main\n"
        "sys.exit(main())\n"
    )
    _write_executable(launcher, source.encode())
    if not _compile_front(python, launcher, path):
        _write_executable(path, source.encode())
    return path


def _write_executable(path: str, content: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as handle:
        handle.write(content)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)  # a runtime exec'ing it meanwhile gets the old file or the new, never half


def _compile_front(python: str, launcher: str, path: str) -> bool:
    """Build ``forward.c`` for this interpreter and launcher at ``path``; False without a compiler
    (or if it fails: the launcher then serves, logged)."""
    import shutil

    source = os.path.join(os.path.dirname(os.path.abspath(podnet.__file__)), "cni", "forward.c")
    compiler = shutil.which("cc") or shutil.which("clang") or shutil.which("gcc")
    if compiler is None:
        return False
    tmp = f"{path}.{os.getpid()}.tmp"
    cmd = [compiler, "-O2", "-Wall", f"-DPODNET_PYTHON={_c_string(python)}"]
    cmd += [f"-DPODNET_LAUNCHER={_c_string(launcher)}", "-o", tmp, source]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        log.warning("compiling %s failed, the Python plugin serves: %s", source, proc.stderr[-500:])
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return False
    os.replace(tmp, path)
    return True


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def find_in_path(plugin: str, paths: Sequence[str]) -> str:
    """libcni ``invoke.FindInPath``: the first regular file named ``plugin`` in ``paths``."""
    if not plugin:
        raise CNIError(0, "no plugin name provided")
    if os.sep in plugin:
        raise CNIError(0, f"invalid plugin name: {plugin}")
    if not paths:
        raise CNIError(0, "no paths provided")
    for directory in paths:
        candidate = os.path.join(directory, plugin)
        if os.path.isfile(candidate):
            return candidate
    raise CNIError(0, f'failed to find plugin "{plugin}" in path {list(paths)}', plugin=plugin)


def _plugin_error(stdout: bytes, stderr: bytes, status: int) -> tuple[int, str, str]:
    """libcni ``RawExec.pluginErr``: the error JSON on stdout, else stderr's text, with code 0."""
    if not stdout.strip():
        if not stderr.strip():
            return 0, f"netplugin failed with no error message: exit status {status}", ""
        return 0, f"netplugin failed: {stderr.decode(errors='replace').strip()!r}: exit status {status}", ""
    try:
        err = json.loads(stdout)
        if not isinstance(err, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        text = stdout.decode(errors="replace")
        return 0, f"netplugin failed but error parsing its diagnostic message {text!r}: {exc}", ""
    code = err.get("code", 0)
    return (
        code if isinstance(code, int) and not isinstance(code, bool) else 0,
        str(err.get("msg", "")),
        str(err.get("details", "")),
    )


class CNIRuntime:
    """Run a network configuration list against containers, as libcni's ``CNIConfig`` does."""

    def __init__(
        self,
        conf_dir: str | None,
        cni_path: Sequence[str],
        cache_dir: str = DEFAULT_CACHE_DIR,
        netns_exec: str | Sequence[str] | None = None,
        *,
        network: str | None = None,
        conflist: dict | None = None,
        timeout: float = 120.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if conflist is None and conf_dir is None:
            raise ValueError("give conf_dir or conflist")
        self.conf_dir = conf_dir
        self.network = network
        self.conflist = conflist if conflist is not None else load_conflist(conf_dir, network)  # type: ignore[arg-type]
        self.cni_path = list(cni_path)
        self.cache_dir = cache_dir
        if netns_exec is None:
            self.prefix: list[str] = []
        elif isinstance(netns_exec, str):
            self.prefix = ["ip", "netns", "exec", netns_exec]
        else:
            self.prefix = list(netns_exec)
        self.timeout = timeout
        self.env = dict(env or {})
        self._versions: dict[str, dict] = {}

    def reload(self) -> dict:
        """Re-read the configuration directory (what the runtime does when the files change)."""
        if self.conf_dir is not None:
            self.conflist = load_conflist(self.conf_dir, self.network)
        return self.conflist

    @property
    def name(self) -> str:
        return self.conflist["name"]

    @property
    def cni_version(self) -> str:
        return self.conflist["cniVersion"]

    # ------------------------------------------------------------------------- building requests

    def request_config(
        self,
        plugin: dict,
        *,
        prev_result: dict | None = None,
        capability_args: Mapping[str, object] | None = None,
        attachment: bool = True,
    ) -> dict:
        """The stdin of one plugin exec (SPEC §3 "Deriving request configuration")."""
        config = {k: v for k, v in plugin.items() if k != "capabilities" and not k.startswith("cni.dev/")}
        config["name"] = self.name
        config["cniVersion"] = self.cni_version
        if attachment:
            if prev_result is not None:
                config["prevResult"] = prev_result
            capabilities = plugin.get("capabilities") or {}
            runtime_config = {
                cap: capability_args[cap]
                for cap, enabled in capabilities.items()
                if enabled is True and capability_args and cap in capability_args
            }
            if runtime_config:
                config["runtimeConfig"] = runtime_config
        return config

    @staticmethod
    def cni_args(args: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> str:
        pairs = args.items() if isinstance(args, Mapping) else (args or [])
        return ";".join(f"{k}={v}" for k, v in pairs)

    def _exec(
        self,
        plugin: str,
        command: str,
        stdin: bytes,
        calls: list[PluginCall],
        *,
        container_id: str = "",
        netns: str = "",
        ifname: str = "",
        args: str = "",
        path: str | None = None,
    ) -> bytes:
        """Run one plugin; return its stdout, or raise :class:`CNIError` with the plugin's error."""
        binary = find_in_path(plugin, self.cni_path)
        env = dict(os.environ)
        env.update(self.env)
        env.update(
            CNI_COMMAND=command,
            CNI_CONTAINERID=container_id,
            CNI_NETNS=netns,
            CNI_ARGS=args,
            CNI_IFNAME=ifname,
            CNI_PATH=":".join(self.cni_path) if path is None else path,
        )
        started = time.perf_counter()
        for attempt in range(6):
            try:
                proc = subprocess.run(
                    [*self.prefix, binary], input=stdin, capture_output=True, env=env, timeout=self.timeout
                )
                break
            except OSError as exc:
                if exc.errno == errno.ETXTBSY and attempt < 5:  # the binary is being written: libcni waits
                    time.sleep(1.0)
                    continue
                calls.append(PluginCall(plugin, command, time.perf_counter() - started, -1, 0, str(exc)))
                raise CNIError(
                    0, f"failed to run {binary}: {exc}", plugin=plugin, command=command, calls=calls
                ) from None
            except subprocess.TimeoutExpired:
                calls.append(PluginCall(plugin, command, time.perf_counter() - started, -1, 0, ""))
                raise CNIError(
                    0,
                    f"{binary} did not finish within {self.timeout:g}s",
                    plugin=plugin,
                    command=command,
                    calls=calls,
                ) from None
        seconds = time.perf_counter() - started
        stderr = proc.stderr.decode(errors="replace")
        if proc.returncode != 0:
            code, msg, details = _plugin_error(proc.stdout, proc.stderr, proc.returncode)
            calls.append(PluginCall(plugin, command, seconds, proc.returncode, code, stderr))
            raise CNIError(code, msg, details, plugin=plugin, command=command, calls=calls)
        calls.append(PluginCall(plugin, command, seconds, 0, None, stderr))
        return proc.stdout

    def _attachment_exec(
        self,
        plugin: dict,
        command: str,
        calls: list[PluginCall],
        container_id: str,
        netns: str,
        ifname: str,
        args: str,
        prev_result: dict | None,
        capability_args: Mapping[str, object] | None,
    ) -> bytes:
        config = self.request_config(plugin, prev_result=prev_result, capability_args=capability_args)
        return self._exec(
            plugin["type"],
            command,
            json.dumps(config).encode(),
            calls,
            container_id=container_id,
            netns=netns,
            ifname=ifname,
            args=args,
        )

    def _parse_result(self, stdout: bytes, plugin: str, calls: list[PluginCall]) -> dict:
        """libcni ``fixupResultVersion`` + ``create.Create``: a result object of a known version."""
        try:
            result = json.loads(stdout)
        except ValueError as exc:
            raise CNIError(
                0, f"failed to unmarshal raw result: {exc}", plugin=plugin, command="ADD", calls=calls
            ) from None
        if result is None:
            result = {}
        if not isinstance(result, dict):
            raise CNIError(
                0, "failed to unmarshal raw result: not an object", plugin=plugin, command="ADD", calls=calls
            )
        if not isinstance(result.get("cniVersion"), str) or not result["cniVersion"]:
            result["cniVersion"] = self.cni_version  # cni#895: an unversioned result is the config's
        if result["cniVersion"] not in ALL_VERSIONS:
            raise CNIError(
                0,
                f"unsupported CNI result version {result['cniVersion']!r}",
                plugin=plugin,
                command="ADD",
                calls=calls,
            )
        return result

    # ------------------------------------------------------------------------------------ cache

    def cache_path(self, container_id: str, ifname: str, network: str | None = None) -> str:
        return os.path.join(self.cache_dir, "results", f"{network or self.name}-{container_id}-{ifname}")

    def _cache_add(
        self,
        result: dict,
        container_id: str,
        netns: str,
        ifname: str,
        args: list[list[str]],
        caps: Mapping | None,
    ) -> None:
        path = self.cache_path(container_id, ifname)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        cached = {
            "kind": CACHE_KIND,
            "containerId": container_id,
            "config": base64.b64encode(json.dumps(self.conflist).encode()).decode(),  # Go []byte
            "ifName": ifname,
            "networkName": self.name,
            "netns": netns,
            "cniArgs": args or None,
            "capabilityArgs": dict(caps) if caps else None,
            "result": result,
        }
        cached = {k: v for k, v in cached.items() if v is not None and v != ""}
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(cached, handle)
        os.replace(tmp, path)

    def _cache_read(self, container_id: str, ifname: str) -> dict | None:
        try:
            with open(self.cache_path(container_id, ifname), "rb") as handle:
                return json.loads(handle.read())
        except FileNotFoundError:
            return None

    def cached_result(self, container_id: str, ifname: str) -> dict | None:
        """The cached final ADD result, converted to the list's version (libcni ``getCachedResult``)."""
        try:
            cached = self._cache_read(container_id, ifname)
        except ValueError as exc:
            raise CNIError(0, f"failed to read cached result of network {self.name!r}: {exc}") from None
        if cached is None:
            return None
        result = cached.get("result") if cached.get("kind") == CACHE_KIND else cached  # legacy: a bare result
        if not isinstance(result, dict):
            return None
        have = result.get("cniVersion") or self.cni_version
        if have == self.cni_version:
            return result
        if have in SUPPORTED_VERSIONS and self.cni_version in SUPPORTED_VERSIONS:
            return convert_result(result, self.cni_version)
        raise CNIError(0, f"failed to convert cached result {have!r} to config version {self.cni_version!r}")

    def cached_attachments(self, container_id: str | None = None) -> list[dict]:
        """Every cached attachment (libcni ``GetCachedAttachments``), optionally of one container."""
        directory = os.path.join(self.cache_dir, "results")
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if name.endswith(".tmp"):
                continue
            try:
                with open(os.path.join(directory, name), "rb") as handle:
                    cached = json.loads(handle.read())
            except (OSError, ValueError):
                continue
            if not isinstance(cached, dict) or cached.get("kind") != CACHE_KIND:
                continue
            if container_id and cached.get("containerId") != container_id:
                continue
            if not cached.get("ifName") or not cached.get("networkName"):
                continue
            out.append(cached)
        return out

    # ------------------------------------------------------------------------------------- verbs

    def _validate_attachment(self, container_id: str, ifname: str) -> None:
        if not container_id:
            raise CNIError(3, "missing containerID")
        if not valid_name(container_id):
            raise CNIError(4, "invalid characters in containerID", container_id)
        if not valid_name(self.name):
            raise CNIError(7, "invalid characters found in network name", self.name)
        problem = interface_name_problem(ifname)
        if problem:
            raise CNIError(4, problem)

    def add(
        self,
        container_id: str,
        netns: str,
        ifname: str,
        args: Mapping[str, str] | None = None,
        capability_args: Mapping[str, object] | None = None,
    ) -> CNIResult:
        """ADD through the list; cache and return the final result. On error nothing is cached and
        the caller must still DEL (the spec's rule; the kubelet does)."""
        self._validate_attachment(container_id, ifname)
        calls: list[PluginCall] = []
        arg_string = self.cni_args(args)
        result: dict | None = None
        for plugin in self.conflist["plugins"]:
            stdout = self._attachment_exec(
                plugin, "ADD", calls, container_id, netns, ifname, arg_string, result, capability_args
            )
            result = self._parse_result(stdout, plugin["type"], calls)
        assert result is not None  # a list has at least one plugin
        pairs = [[k, v] for k, v in (args or {}).items()]
        self._cache_add(result, container_id, netns, ifname, pairs, capability_args)
        return CNIResult(result, calls)

    def delete(
        self,
        container_id: str,
        netns: str,
        ifname: str,
        args: Mapping[str, str] | None = None,
        capability_args: Mapping[str, object] | None = None,
    ) -> list[PluginCall]:
        """DEL through the list in reverse, ``prevResult`` = the cached ADD result (≥ 0.4.0); the
        cache entry goes once every plugin succeeded. ``args``/``capability_args`` left as None
        default to those cached at ADD."""
        calls: list[PluginCall] = []
        prev: dict | None = None
        try:
            cached = self._cache_read(container_id, ifname)
        except ValueError:
            cached = None
        if args is None and cached and cached.get("cniArgs"):
            args = dict(cached["cniArgs"])
        if capability_args is None and cached:
            capability_args = cached.get("capabilityArgs")
        if version_at_least(self.cni_version, "0.4.0"):
            try:
                prev = self.cached_result(container_id, ifname)
            except CNIError:
                self._cache_remove(container_id, ifname)  # libcni drops an unreadable cache entry
                prev = None
        arg_string = self.cni_args(args)
        for plugin in reversed(self.conflist["plugins"]):
            self._attachment_exec(
                plugin, "DEL", calls, container_id, netns, ifname, arg_string, prev, capability_args
            )
        self._cache_remove(container_id, ifname)
        return calls

    def _cache_remove(self, container_id: str, ifname: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.cache_path(container_id, ifname))

    def check(
        self,
        container_id: str,
        netns: str,
        ifname: str,
        args: Mapping[str, str] | None = None,
        capability_args: Mapping[str, object] | None = None,
    ) -> list[PluginCall]:
        """CHECK through the list with the cached ADD result (needs ≥ 0.4.0; ``disableCheck`` → no-op)."""
        if not version_at_least(self.cni_version, "0.4.0"):
            raise CNIError(
                1, f"configuration version {self.cni_version!r} does not support the CHECK command"
            )
        if self.conflist.get("disableCheck"):
            return []
        prev = self.cached_result(container_id, ifname)
        calls: list[PluginCall] = []
        arg_string = self.cni_args(args)
        for plugin in self.conflist["plugins"]:
            self._attachment_exec(
                plugin, "CHECK", calls, container_id, netns, ifname, arg_string, prev, capability_args
            )
        return calls

    def version(self, plugin_type: str) -> dict:
        """The plugin's VERSION answer (libcni ``GetVersionInfo``), parsed."""
        return self._version(plugin_type, [])

    def _version(self, plugin_type: str, calls: list[PluginCall]) -> dict:
        stdin = json.dumps({"cniVersion": LIBCNI_VERSION}).encode()
        try:
            # dummy values for plugins built against an older skel, exactly as libcni sets them
            stdout = self._exec(
                plugin_type, "VERSION", stdin, calls, netns="dummy", ifname="dummy", path="dummy"
            )
        except CNIError as exc:
            if exc.msg == "unknown CNI_COMMAND: VERSION":
                return {"cniVersion": "0.1.0", "supportedVersions": ["0.1.0"]}
            raise
        try:
            info = json.loads(stdout)
        except ValueError as exc:
            raise CNIError(
                0, f"decoding version info: {exc}", plugin=plugin_type, command="VERSION"
            ) from None
        if not isinstance(info, dict) or not info.get("cniVersion"):
            raise CNIError(
                0, "decoding version info: missing field cniVersion", plugin=plugin_type, command="VERSION"
            )
        if not info.get("supportedVersions"):
            if info["cniVersion"] == "0.2.0":
                return {"cniVersion": "0.2.0", "supportedVersions": ["0.1.0", "0.2.0"]}
            raise CNIError(0, "decoding version info: missing field supportedVersions", plugin=plugin_type)
        return info

    def _supports(self, plugin_type: str, version: str, calls: list[PluginCall]) -> bool:
        if plugin_type not in self._versions:
            self._versions[plugin_type] = self._version(plugin_type, calls)
        return version in self._versions[plugin_type].get("supportedVersions", [])

    def gc(self, valid_attachments: Iterable[Mapping[str, str] | tuple[str, str]]) -> list[PluginCall]:
        """GC the network: DEL stale cached attachments, then GC each plugin (≥ 1.1.0).

        ``valid_attachments``: ``{"containerID", "ifname"}`` objects or ``(containerID, ifname)``.
        Errors do not stop it; they are raised together at the end (:attr:`CNIError.errors`).
        """
        if self.conflist.get("disableGC"):
            return []
        valid = [
            {"containerID": a[0], "ifname": a[1]}
            if isinstance(a, tuple)
            else {"containerID": a["containerID"], "ifname": a["ifname"]}
            for a in valid_attachments
        ]
        keep = {(a["containerID"], a["ifname"]) for a in valid}
        calls: list[PluginCall] = []
        errors: list[CNIError] = []
        for cached in self.cached_attachments():
            if cached["networkName"] != self.name or (cached.get("containerId"), cached["ifName"]) in keep:
                continue
            try:
                calls += self.delete(
                    cached["containerId"],
                    cached.get("netns", ""),
                    cached["ifName"],
                    dict(cached.get("cniArgs") or []),
                    cached.get("capabilityArgs"),
                )
            except CNIError as exc:
                calls += exc.calls
                errors.append(exc)
        if version_at_least(self.cni_version, "1.1.0"):
            for plugin in self.conflist["plugins"]:
                try:
                    if not self._supports(plugin["type"], "1.1.0", calls):
                        continue
                    config = self.request_config(plugin, attachment=False)
                    config["cni.dev/valid-attachments"] = valid
                    config["cni.dev/attachments"] = valid  # cni#1101: the spec's earlier name
                    self._exec(plugin["type"], "GC", json.dumps(config).encode(), calls)
                except CNIError as exc:
                    errors.append(exc)
        if errors:
            first = errors[0]
            raise CNIError(
                first.code,
                "; ".join(str(e) for e in errors),
                plugin=first.plugin,
                command="GC",
                calls=calls,
                errors=errors,
            )
        return calls

    def status(self) -> list[PluginCall]:
        """STATUS of each plugin (≥ 1.1.0, else nothing to ask); raises the first error (code 50/51...)."""
        calls: list[PluginCall] = []
        if not version_at_least(self.cni_version, "1.1.0"):
            return calls
        for plugin in self.conflist["plugins"]:
            if not self._supports(plugin["type"], "1.1.0", calls):
                continue
            config = self.request_config(plugin, attachment=False)
            self._exec(plugin["type"], "STATUS", json.dumps(config).encode(), calls)
        return calls
