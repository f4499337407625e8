"""What podnet's nftables managers share: running one ``nft -f`` transaction, and adopting a table
that is already in the kernel.

**Adoption.** A restarted agent must not flush and rebuild a table that already says what it
wants (traffic must not notice a restart, and nothing should even be rewritten). So the first
sync of a manager asks :func:`kernel_matches`: the full script is loaded into a throw-away network
namespace (``unshare --net``), both tables are listed statelessly as JSON (``nft -j -s``: no
counters), put in a canonical form (no handles; sets, maps and chains by name; each chain's rules
in order; set elements sorted; elements of dynamic sets — affinity timeouts — left out, they are
traffic state) and compared. Equal: the manager takes the kernel's table as applied and goes on
with partial syncs; different or absent: one full transaction, as before.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from podnet.dataplane.errors import DataplaneError
from podnet.dataplane.netns import run_in_netns

NFT_TIMEOUT = 60.0
R = TypeVar("R")


def run_nft(script: str, netns: str | None, what: str, hint: str | None = None) -> None:
    """Apply ``script`` as one atomic ``nft -f`` transaction; DataplaneError with nft's message."""
    proc = run_in_netns(netns, ["nft", "-f", "-"], input=script, timeout=NFT_TIMEOUT)
    if proc.returncode != 0:
        raise DataplaneError(f"nft rejected the {what} transaction: {proc.stderr.strip()}", hint=hint)


def canonical(doc: dict[str, Any]) -> dict[str, Any]:
    """A listing (``nft -j -s list table``) in a form that does not depend on creation order."""
    out: dict[str, Any] = {"table": None, "set": {}, "map": {}, "chain": {}, "rule": {}}
    for item in doc.get("nftables", []):
        kind, body = next(iter(item.items()))
        if kind == "metainfo":
            continue
        body = {k: v for k, v in body.items() if k != "handle"}
        if kind == "table":
            out["table"] = body
        elif kind in ("set", "map"):
            flags = body.get("flags") or []
            if "dynamic" in flags or "timeout" in flags:
                body.pop("elem", None)  # traffic state (affinity), not configuration
            elif "elem" in body:
                body["elem"] = sorted(body["elem"], key=lambda e: json.dumps(e, sort_keys=True))
            out[kind][body["name"]] = body
        elif kind == "chain":
            out["chain"][body["name"]] = body
        elif kind == "rule":
            out["rule"].setdefault(body["chain"], []).append(body)
    return out


def list_table(family: str, table: str, netns: str | None) -> dict[str, Any] | None:
    """The table as ``nft -j -s`` lists it, or None when it does not exist."""
    proc = run_in_netns(netns, ["nft", "-j", "-s", "list", "table", family, table], timeout=NFT_TIMEOUT)
    return json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else None


def scratch_listing(script: str, family: str, table: str) -> dict[str, Any]:
    """``script`` loaded into a throw-away network namespace, listed as :func:`list_table` does."""
    shell = f"nft -f - && nft -j -s list table {family} {table}"
    proc = subprocess.run(
        ["unshare", "--net", "sh", "-c", shell],
        input=script,
        capture_output=True,
        text=True,
        timeout=NFT_TIMEOUT,
    )
    if proc.returncode != 0:
        raise DataplaneError(f"nft rejected the {table} table in a scratch namespace: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def kernel_matches(script: str, family: str, table: str, netns: str | None) -> bool:
    """Does the kernel's ``family table`` already hold exactly what ``script`` (a full
    transaction) would make? False when the table is absent or anything fails."""
    try:
        current = list_table(family, table, netns)
        if current is None:
            return False
        return canonical(current) == canonical(scratch_listing(script, family, table))
    except (DataplaneError, OSError, ValueError, subprocess.TimeoutExpired):
        return False


class TableSync(Generic[R]):
    """Keeps one nftables table equal to a rendering (any value ``full`` turns into a transaction
    that replaces the whole table), what every podnet table manager does:

    - the first sync adopts the kernel's table when it already is what the full script makes
      (``matches``, by default :func:`kernel_matches`): a restarted agent writes nothing;
    - later syncs send ``diff(applied, new)``: ``""`` is a no-op, ``None`` asks for a full one;
    - each write is one ``nft -f`` transaction; while it runs, and after nft refuses one, nothing
      counts as applied, so the next sync is a full resync (the kernel kept the last good table).
    """

    def __init__(
        self,
        family: str,
        table: str,
        netns: str | None,
        *,
        full: Callable[[R], str],
        diff: Callable[[R, R], str | None] | None = None,
        matches: Callable[[str], bool] | None = None,
        what: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.family, self.table, self.netns = family, table, netns
        self.full = full
        self.diff = diff or (lambda old, new: "" if old == new else None)
        self.matches = matches or (lambda script: kernel_matches(script, family, table, netns))
        self.what, self.hint = what or table, hint
        self.applied: R | None = None  # None: the next sync is a full resync
        self._adopt = True  # only the first sync may adopt (an agent restart)
        self.last_script: str | None = None
        self.last_mode: str | None = None

    def run(self, script: str) -> None:
        run_nft(script, self.netns, self.what, hint=self.hint)

    def sync(self, rendering: R) -> tuple[str, int]:
        """``(mode, statements)``: mode ``full``, ``partial``, ``noop`` or ``adopted``. Raises
        :class:`DataplaneError` (nothing applied) when nft refuses."""
        script = None if self.applied is None else self.diff(self.applied, rendering)
        if script is None:
            mode, script = "full", self.full(rendering)
            adopt, self._adopt = self._adopt, False
            if adopt and self.matches(script):
                self.applied = rendering
                return "adopted", 0
        else:
            mode = "partial" if script else "noop"
        if script:
            self.last_script, self.last_mode = script, mode
            self.applied = None
            self.run(script)
        self.applied = rendering
        return mode, len(script.splitlines()) if script else 0

    def remove(self) -> None:
        """Delete the table (absent is fine: nothing is written, so a restarted agent that finds
        no table changes no kernel state); the next sync is a full one."""
        self.applied = None
        if list_table(self.family, self.table, self.netns) is None:
            return
        qualified = f"{self.family} {self.table}"
        self.run(f"add table {qualified}\ndelete table {qualified}\n")
