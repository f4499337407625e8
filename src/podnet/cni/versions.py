"""The CNI versions podnet-cni speaks, and its timeouts. Import-free: VERSION is answered, and the
fast path (:mod:`podnet.cni.shim`) forwards a request, without loading ``json``.

0.3.0 to 1.1.0: every version whose result has the ``interfaces``/``ips``/``routes`` shape, so
results convert between them without loss of meaning (0.1.0/0.2.0 used ``ip4``/``ip6``).
"""

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
NEWEST_VERSION = SUPPORTED_VERSIONS[-1]

# The VERSION answer: skel reports its own newest version and ignores stdin.
VERSION_JSON = (
    f'{{"cniVersion": "{NEWEST_VERSION}", "supportedVersions": ['
    + ", ".join(f'"{v}"' for v in SUPPORTED_VERSIONS)
    + "]}"
)

# How long the plugin waits for the agent (the config's ``timeout_seconds``: default and limit).
DEFAULT_TIMEOUT_SECONDS = 30.0
MAX_TIMEOUT_SECONDS = 3600.0
