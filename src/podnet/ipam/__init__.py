"""Calico-style IP address management: pools split into node-affine blocks, handles, CAS, GC.

Modules: :mod:`~podnet.ipam.block` (a block's JSON and pure operations), :mod:`~podnet.ipam.records`
(handle, affinity, config records), :mod:`~podnet.ipam.pools` (pool specs and selection),
:mod:`~podnet.ipam.allocator` (:class:`IPAM`, the datastore loop), :mod:`~podnet.ipam.check`
(consistency check and GC decisions), :mod:`~podnet.ipam.errors`.
"""

from podnet.ipam.allocator import IPAM, BlockUsage, NodeRelease, PoolUsage
from podnet.ipam.block import Allocation, Block, Release
from podnet.ipam.check import CheckIssue, CheckReport, GcResult
from podnet.ipam.errors import (
    AddressInUse,
    AddressNotInPool,
    BlockLimitReached,
    ContentionError,
    CorruptRecord,
    HandleInUse,
    PoolExhausted,
    SequenceMismatch,
)
from podnet.ipam.pools import (
    IP_ADDRS_ANNOTATION,
    IPV4_POOLS_ANNOTATION,
    PoolSpec,
    pool_from_resource,
    requested_addresses,
    requested_pools,
    select_pools,
)
from podnet.ipam.records import AffinityRecord, HandleRecord, IPAMConfig, handle_id

__all__ = [
    "IPAM",
    "IPV4_POOLS_ANNOTATION",
    "IP_ADDRS_ANNOTATION",
    "AddressInUse",
    "AddressNotInPool",
    "AffinityRecord",
    "Allocation",
    "Block",
    "BlockLimitReached",
    "BlockUsage",
    "CheckIssue",
    "CheckReport",
    "ContentionError",
    "CorruptRecord",
    "GcResult",
    "HandleInUse",
    "HandleRecord",
    "IPAMConfig",
    "NodeRelease",
    "PoolExhausted",
    "PoolSpec",
    "PoolUsage",
    "Release",
    "SequenceMismatch",
    "handle_id",
    "pool_from_resource",
    "requested_addresses",
    "requested_pools",
    "select_pools",
]
