"""podnet's CNI plugin (``podnet-cni``): thin, spec-exact, hands every request to the node agent.

``main`` (entry point, lazy imports) → ``plugin`` (the verbs) → ``spec`` (versions, environment,
configuration, errors, result conversion); ``delete_queue`` (DEL while the agent is down); ``log``.
Keep this ``__init__`` free of imports: the plugin's start-up time is every pod's latency floor.
"""
