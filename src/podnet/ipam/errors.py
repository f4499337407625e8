"""IPAM-specific errors, all below :class:`podnet.errors.IPAMError` (``PoolExhausted`` lives there too).

IPAMError
├── PoolExhausted       no free address in the pools that apply (names pools and node)
├── AddressInUse        a specific address was requested but another handle holds it
├── AddressNotInPool    a specific address lies in no configured IP pool
├── SequenceMismatch    ABA guard: the address was released and reassigned meanwhile
├── ContentionError     compare-and-swap lost too many times in a row
└── CorruptRecord       a block/handle/affinity value in the datastore cannot be parsed
"""

from __future__ import annotations

from podnet.errors import IPAMError, PoolExhausted

__all__ = [
    "AddressInUse",
    "AddressNotInPool",
    "BlockLimitReached",
    "ContentionError",
    "CorruptRecord",
    "HandleInUse",
    "IPAMError",
    "PoolExhausted",
    "SequenceMismatch",
]


class AddressInUse(IPAMError):
    code = "address-in-use"


class BlockLimitReached(PoolExhausted):
    """Calico's ErrBlockLimit: no borrowing happens in this case, even without strictAffinity."""

    code = "block-limit-reached"


class AddressNotInPool(IPAMError):
    code = "address-not-in-pool"


class SequenceMismatch(IPAMError):
    """A release named an allocation (handle and/or sequence number) that no longer holds the address."""

    code = "sequence-mismatch"


class ContentionError(IPAMError):
    code = "ipam-contention"


class CorruptRecord(IPAMError):
    code = "ipam-corrupt-record"


class HandleInUse(IPAMError):
    """``auto_assign(new_handle=True)`` for a handle that already holds addresses (a retried CNI
    ADD): nothing was allocated; ``addresses`` are the ones it holds."""

    code = "handle-in-use"

    def __init__(self, handle: str, addresses: list[str]) -> None:
        super().__init__(f"handle {handle!r} already holds {', '.join(addresses) or 'no address'}")
        self.handle = handle
        self.addresses = addresses
