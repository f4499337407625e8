"""Fixtures of the plugin ↔ agent tests: a real UNIX-socket server speaking ``podnet.cni.agent_api``."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator

import pytest

# The executable runner lives with the unit tests (one harness for both).
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "unit", "cni"))

from cni_harness import FakeAgent, Outcome, base_env, cni_plugins, exec_plugin, plugin_variant  # noqa: F401  (fixtures: every test on both plugins)


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
