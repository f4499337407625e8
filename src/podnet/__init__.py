"""podnet: a Kubernetes pod network with a Calico personality and a Cilium personality.

Layers (imports point down only; a layer may import any layer below it, ``a | b`` are independent
siblings that import neither each other; checked by import-linter in the test run, and this line is
compared with the contract in pyproject.toml by tests/unit/test_package_docs.py):

    cli → bench → lab → agent → cni → dataplane → calc → ipam → datastore → model → errors | stats
"""

__version__ = "0.1.0"
