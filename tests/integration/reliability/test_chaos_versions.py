"""Where ``agent-downgrade-upgrade`` gets the previous release from: this checkout's git history
or, a shallow clone (CI may clone with ``--depth 1``), its origin — fetched by full commit id into
a repository of its own, the clone left as it was. No root."""

from __future__ import annotations

import os
import subprocess

import pytest
from previous_release import previous_release_or_skip

import podnet
from podnet.lab.chaos import PREVIOUS_VERSION, agent_source
from podnet.lab.naming import LabError

CHECKOUT = os.path.dirname(podnet.__file__)


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, text=True)


def test_the_previous_release_is_exported_from_this_checkout_or_its_origin(tmp_path) -> None:
    src = previous_release_or_skip(str(tmp_path))
    assert src == str(tmp_path / "versions" / PREVIOUS_VERSION[:12] / "src")
    assert os.path.isfile(os.path.join(src, "podnet", "agent", "main.py"))


def test_a_shallow_clone_fetches_the_previous_release_from_its_origin(tmp_path) -> None:
    top = git("-C", CHECKOUT, "rev-parse", "--show-toplevel").stdout.strip()
    if git("-C", top, "cat-file", "-e", f"{PREVIOUS_VERSION}^{{commit}}").returncode != 0:
        pytest.skip("this checkout is shallow itself: the test above fetched from its origin")
    clone = tmp_path / "clone"
    assert git("clone", "-q", "--depth", "1", f"file://{top}", str(clone)).returncode == 0
    assert git("-C", str(clone), "cat-file", "-e", f"{PREVIOUS_VERSION}^{{commit}}").returncode != 0
    src = agent_source(str(tmp_path / "state"), PREVIOUS_VERSION, checkout=str(clone / "src" / "podnet"))
    assert os.path.isfile(os.path.join(src, "podnet", "agent", "main.py"))
    assert (
        git("-C", str(clone), "cat-file", "-e", f"{PREVIOUS_VERSION}^{{commit}}").returncode != 0
    )  # untouched
    with pytest.raises(LabError, match="not a commit of this checkout"):
        agent_source(str(tmp_path / "state"), PREVIOUS_VERSION[:7], checkout=str(clone))
