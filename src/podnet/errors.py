"""The podnet exception tree.

Every error carries a machine-readable ``code``, a one-line ``message`` and an optional ``hint``
telling the user what to do next. ``podnet.cli.main`` is the one place that maps them to exit codes.

    PodnetError
    ├── ValidationError          a resource or input is malformed (names the field path)
    ├── NotFoundError            a resource or key does not exist
    ├── AlreadyExistsError       create of something that exists
    ├── ConflictError            compare-and-swap lost (someone else wrote first)
    ├── DatastoreError
    │   ├── DatastoreUnavailable the datastore cannot be reached (names the endpoints)
    │   └── CompactedError       a watch asked for a revision that was compacted away
    └── IPAMError
        └── PoolExhausted        no address is free in the pools that apply
"""

from __future__ import annotations


class PodnetError(Exception):
    """Base of all podnet errors: ``code``, ``message`` and ``hint``."""

    code = "error"
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ValidationError(PodnetError):
    """Input is malformed. ``problems`` lists ``(field path, message)`` pairs."""

    code = "invalid"
    exit_code = 2

    def __init__(
        self, problems: list[tuple[str, str]], hint: str | None = None, subject: str | None = None
    ) -> None:
        self.problems = problems
        self.subject = subject
        text = "; ".join(f"{path}: {msg}" if path else msg for path, msg in problems)
        super().__init__(f"{subject}: {text}" if subject else text, hint)


class NotFoundError(PodnetError):
    code = "not-found"
    exit_code = 3


class AlreadyExistsError(PodnetError):
    code = "already-exists"
    exit_code = 4


class ConflictError(PodnetError):
    code = "conflict"
    exit_code = 5


class DatastoreError(PodnetError):
    code = "datastore"
    exit_code = 6


class DatastoreUnavailable(DatastoreError):
    code = "datastore-unavailable"


class CompactedError(DatastoreError):
    """The requested watch revision was compacted; resync by listing, then watch again."""

    code = "compacted"

    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(
            f"revision compacted (oldest available is {compact_revision})",
            hint="list again and watch from the list's revision",
        )


class IPAMError(PodnetError):
    code = "ipam"
    exit_code = 7


class PoolExhausted(IPAMError):
    code = "pool-exhausted"
