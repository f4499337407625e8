"""Fixtures of the integration tests: the ``podnet`` CLI run in-process against the test etcd."""

from __future__ import annotations

import io
import uuid

import pytest

from podnet.cli.main import main


@pytest.fixture
def podnet(etcd_server, monkeypatch, capsys):
    """Run ``podnet ARGS`` in-process against the test etcd, in a key prefix of its own."""
    monkeypatch.setenv("PODNET_ETCD_ENDPOINTS", etcd_server.endpoint)
    monkeypatch.setenv("PODNET_ETCD_PREFIX", f"/test-{uuid.uuid4().hex[:8]}/")

    def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
        if stdin is not None:
            monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run
