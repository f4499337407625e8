"""Fixtures of the plugin ↔ agent tests: a real UNIX-socket server speaking ``podnet.cni.agent_api``."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator

import pytest

# The executable runner lives with the unit tests (one harness for both).
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "unit", "cni"))

from cni_harness import ACTIVE, PLUGIN, FakeAgent, Outcome, base_env, exec_plugin, plugin_variants


@pytest.fixture
def agent(tmp_path) -> Iterator[FakeAgent]:
    server = FakeAgent(str(tmp_path / "run" / "agent.sock"))
    yield server
    server.close()


@pytest.fixture
def run_plugin(agent: FakeAgent) -> Callable[..., Outcome]:
    """Run podnet-cni with ``config`` (``agent_socket`` set to the fake agent) on stdin."""

    def run(command: str, config: dict, env: dict[str, str | None] | None = None) -> Outcome:
        config = {"agent_socket": agent.path, **config}
        return exec_plugin(base_env(command, env), json.dumps(config).encode())

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
