"""The per-node agent: the CNI service, the datastore→kernel syncer, the local API socket,
drops and flows, the L7 and DNS proxies."""
