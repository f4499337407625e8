"""Hypothesis profiles of the fuzz suite: a quick one for every test run, a long one on demand.

    PODNET_FUZZ unset or "quick"   a few hundred examples per property (the normal test run)
    PODNET_FUZZ=long               each property scaled up; at least 100,000 examples in total

The long command (run it niced: the machines are shared)::

    PODNET_FUZZ=long nice -n 19 .venv/bin/pytest tests/unit/fuzz -p no:cacheprovider -q \
        --hypothesis-show-statistics

Each test asks :func:`fuzz_common.fuzz_settings` for its count in both modes; the profiles below
hold what the modes share. ``deadline=None``: a slow example on a loaded machine is not a failure;
``print_blob``: a failure prints the ``@reproduce_failure`` line that replays it.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

_SHARED = {
    "deadline": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}

settings.register_profile("podnet-fuzz-quick", **_SHARED)
# The long run explores more and shrinks less patiently: hours of shrinking help nobody.
settings.register_profile("podnet-fuzz-long", database=None, **_SHARED)
