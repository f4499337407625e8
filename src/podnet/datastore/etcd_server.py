"""Run a private etcd server: for tests, the demo and the lab.

``EtcdServer`` starts Debian's ``etcd`` on a fresh data directory and free loopback ports (or on a
given address, e.g. inside the lab's fabric namespace), waits until it answers, and on ``stop()``
kills it and removes the directory. It is a context manager, so a failing test still cleans up.

A member of a cluster gets ``initial_cluster`` (``NAME=PEER_URL,...``, every member) and a
``cluster_token`` (etcd's ``--initial-cluster-token``: members of another cluster bootstrapped
with the same peers cannot join it by mistake); without them it is a cluster of one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from podnet.errors import DatastoreUnavailable, PodnetError

ETCD_BINARY = "etcd"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EtcdServer:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        client_port: int | None = None,
        peer_port: int | None = None,
        data_dir: str | None = None,
        netns: str | None = None,
        name: str = "podnet-etcd",
        log_path: str | None = None,
        initial_cluster: str | None = None,
        cluster_token: str | None = None,
    ) -> None:
        self.host = host
        self.client_port = client_port or free_port(host if netns is None else "127.0.0.1")
        self.peer_port = peer_port or free_port(host if netns is None else "127.0.0.1")
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="podnet-etcd-")
        self.netns = netns
        self.name = name
        self.log_path = log_path or os.path.join(self.data_dir, "etcd.log")
        self.initial_cluster = initial_cluster or f"{name}=http://{host}:{self.peer_port}"
        self.cluster_token = cluster_token
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    def command(self) -> list[str]:
        if shutil.which(ETCD_BINARY) is None:
            raise PodnetError(
                "etcd is not installed", hint="apt-get install etcd-server (the README's setup does it)"
            )
        cmd = [
            ETCD_BINARY,
            "--name",
            self.name,
            "--data-dir",
            os.path.join(self.data_dir, "data"),
            "--listen-client-urls",
            self.endpoint,
            "--advertise-client-urls",
            self.endpoint,
            "--listen-peer-urls",
            f"http://{self.host}:{self.peer_port}",
            "--initial-advertise-peer-urls",
            f"http://{self.host}:{self.peer_port}",
            "--initial-cluster",
            self.initial_cluster,
            "--initial-cluster-state",
            "new",
            *(["--initial-cluster-token", self.cluster_token] if self.cluster_token else []),
            "--log-level",
            "warn",
            "--logger",
            "zap",
        ]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        return cmd

    def start(self, timeout: float = 20.0, *, wait: bool = True) -> EtcdServer:
        """Start the server; with ``wait`` (only possible when its address is reachable from
        here, i.e. not inside a lab namespace) block until it answers."""
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        env = dict(os.environ, ETCD_UNSUPPORTED_ARCH=os.environ.get("ETCD_UNSUPPORTED_ARCH", ""))
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=log, env=env, start_new_session=True
        )
        log.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float, endpoint: str | None = None) -> None:
        """Wait until etcd answers at ``endpoint`` (default: its own; a lab passes its proxy)."""
        from podnet.datastore.etcd import EtcdDatastore

        client = EtcdDatastore([endpoint or self.endpoint], timeout=1.0, retry_deadline=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise PodnetError(
                        f"etcd exited with code {self.process.returncode}",
                        hint=f"see {self.log_path}: {self.tail_log()}",
                    )
                try:
                    client.revision()
                    return
                except DatastoreUnavailable:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise
                    time.sleep(0.1)
        finally:
            client.close()

    def tail_log(self, lines: int = 5) -> str:
        try:
            return " | ".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections hang, as with a black-holed etcd."""
        if self.process:
            os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process:
            os.killpg(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """Stop the server process but keep its data, so :meth:`start` brings it back."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        """Kill the server and remove the data directory if this object made it."""
        if self.process and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGCONT)
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(5)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.process = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
