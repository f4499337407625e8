"""memtrace: off unless asked for; asked for, SIGUSR2 writes RSS and the top allocation sites."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from podnet.agent import memtrace


def test_off_unless_asked(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv(memtrace.ENV, raising=False)
    assert memtrace.install(None) is None


def test_sigusr2_writes_the_snapshot(tmp_path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "trace-{pid}.json"
    code = (
        "import sys, time\n"
        "from podnet.agent import memtrace\n"
        "print(memtrace.install(sys.argv[1]), flush=True)\n"
        "kept = [bytearray(1000) for _ in range(3000)]  # ~3 MB from one line\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        path = proc.stdout.readline().strip()  # type: ignore[union-attr]
        assert path == str(target).replace("{pid}", str(proc.pid))
        assert proc.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        os.kill(proc.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 20
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        with open(path) as f:
            report = json.load(f)
    finally:
        proc.kill()
        proc.wait()
    assert report["rss_mib"] > 0 and report["traced_mib"] >= 2.5
    top = report["top"][0]
    assert top["site"] == "<string>:4" and top["kib"] > 2500 and top["blocks"] >= 3000
