"""Fixtures of the CNI unit tests (helpers live in ``cni_harness``, shared with the integration tests)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from cni_harness import Outcome, base_env, cni_plugins, exec_plugin, plugin_variant  # noqa: F401  (fixtures: every test on both plugins)


@pytest.fixture
def agent_socket(tmp_path) -> str:
    """A socket path nothing listens on (tests never touch the node's real /run/podnet)."""
    return str(tmp_path / "run" / "agent.sock")


@pytest.fixture
def run_plugin(agent_socket: str) -> Callable[..., Outcome]:
    def run(
        command: str | None,
        config: dict | None = None,
        *,
        stdin: bytes | None = None,
        env: dict[str, str | None] | None = None,
        version: str = "1.0.0",
    ) -> Outcome:
        if stdin is None:
            if config is None:
                config = {"cniVersion": version, "name": "k8s-pod-network", "type": "podnet"}
            config = {"agent_socket": agent_socket, **config}
            stdin = json.dumps(config).encode()
        return exec_plugin(base_env(command, env), stdin)

    return run
