"""``podnet etcd``: run a private etcd on loopback in the foreground (Ctrl-C stops and cleans up).

For trying the CLI by hand: ``podnet etcd --port 2379 &`` then ``podnet apply -f examples/``.
A production cluster points ``--etcd-endpoints`` / ``PODNET_ETCD_ENDPOINTS`` at its own etcd.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=2379, help="client port on 127.0.0.1 (default 2379)")
    parser.add_argument("--data-dir", default=None, help="keep data here (default: a temporary directory)")


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from podnet.datastore.etcd_server import EtcdServer

    server = EtcdServer(client_port=args.port, data_dir=args.data_dir)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server:
        print(f"etcd listening on {server.endpoint} (data in {server.data_dir}); Ctrl-C stops it", flush=True)
        try:
            while not stop.wait(1.0):
                if server.process is None or server.process.poll() is not None:
                    print(f"etcd exited: {server.tail_log()}")
                    return 1
        except KeyboardInterrupt:
            pass
    return 0
