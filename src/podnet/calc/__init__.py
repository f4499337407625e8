"""Pure calculation: from the datastore's view of the cluster to one node's desired state.

No I/O here; everything is testable without root. :mod:`.cluster` decodes datastore keys,
:mod:`.routes` computes routes, :mod:`.endpoints` is the endpoint record agents share.
"""
