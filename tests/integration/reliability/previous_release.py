"""The previous release's agent for the downgrade tests, or a skip that says why there is none."""

from __future__ import annotations

import os
import subprocess

import pytest

import podnet
from podnet.lab.chaos import PREVIOUS_VERSION, agent_source
from podnet.lab.naming import LabError


def previous_release_or_skip(state_dir: str) -> str:
    """Export the previous release under ``state_dir`` (``agent_source``; later calls reuse it).
    Only a shallow clone whose origin cannot give that commit skips: any other failure fails."""
    try:
        return agent_source(state_dir, PREVIOUS_VERSION)
    except LabError as exc:
        shallow = subprocess.run(
            ["git", "-C", os.path.dirname(podnet.__file__), "rev-parse", "--is-shallow-repository"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        if shallow != "true":
            raise
        pytest.skip(
            f"a shallow clone whose origin cannot give the previous release {PREVIOUS_VERSION}: {exc}"
        )
