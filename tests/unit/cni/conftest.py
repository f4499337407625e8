"""Fixtures of the CNI unit tests (helpers live in ``cni_harness``, shared with the integration tests)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from cni_harness import ACTIVE, PLUGIN, Outcome, base_env, exec_plugin, plugin_variants


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


@pytest.fixture(scope="session")
def _plugins(tmp_path_factory) -> dict[str, str]:
    return plugin_variants(str(tmp_path_factory.mktemp("cni-bin")))


@pytest.fixture(autouse=True, params=["python", "compiled"])
def plugin_variant(request, _plugins) -> Iterator[str]:
    """Every test here runs against the Python plugin and against the compiled front."""
    if request.param not in _plugins:
        pytest.skip("no C compiler: the compiled front is not built")
    ACTIVE["plugin"] = _plugins[request.param]
    yield request.param
    ACTIVE["plugin"] = PLUGIN
