"""podnet: a Kubernetes pod network with a Calico personality and a Cilium personality.

Layers (imports point down only; checked by import-linter in the test run):

    cli → bench → lab → agent | cni → dataplane → ipam | calc → datastore → model → errors
"""

__version__ = "0.1.0"
