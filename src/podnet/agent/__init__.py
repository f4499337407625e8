"""The per-node agent. Keep this package's ``__init__`` free of imports: the CNI plugin imports
:mod:`podnet.agent.api` and must start in milliseconds."""
