"""Publishes this node's :class:`~podnet.calc.policy_status.PolicyReport` to the datastore.

The apply thread calls :meth:`PolicyStatusWriter.report` after every policy sync (cheap: it only
records the newest report); a writer thread puts it at ``<root>status/policy/<node>`` when it
differs from what was last written, at most every ``interval`` seconds, so a burst of syncs is one
write. A datastore outage delays the report (retried on the next tick) and never the dataplane.
Agents do not take these keys as input (the syncer skips ``<root>status/``).
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from podnet.agent.log import kv
from podnet.calc.policy_status import PolicyReport, policy_ref
from podnet.datastore.base import Datastore
from podnet.datastore.keys import KeyLayout

log = logging.getLogger("podnet.agent.status")


def invalid_policies(errors: dict[str, str], layout: KeyLayout) -> dict[str, str]:
    """From the cache's refused keys: ``{policy_ref: why}`` for the policy kinds' ones."""
    out = {}
    for key, why in errors.items():
        if not key.startswith(layout.resources_prefix()):
            continue
        try:
            type_key, namespace, name = layout.parse_resource(key)
        except ValueError:
            continue
        ref = policy_ref(type_key, namespace, name)
        if ref is not None:
            out[ref] = why
    return dict(sorted(out.items()))


class PolicyStatusWriter:
    def __init__(self, store: Datastore, layout: KeyLayout, node: str, interval: float = 0.2) -> None:
        self.store = store
        self.key = layout.policy_status(node)
        self.node = node
        self.interval = interval
        self.applied_revision = 0
        self._pending: PolicyReport | None = None
        self._written: PolicyReport | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def report(
        self,
        revision: int,
        error: str | None,
        compile_errors: dict[str, str],
        invalid: dict[str, str],
        endpoint_conflicts: dict[str, str] | None = None,
        policy_map_full: tuple[str, ...] = (),
        l7_proxy: bool = False,
        l7_error: str | None = None,
        fqdn_without_dns: dict[str, list[str]] | None = None,
    ) -> None:
        """Record one policy sync's outcome (``error`` None: the kernel accepted it;
        ``policy_map_full``: Cilium endpoints whose new policy did not fit and kept the old)."""
        if error is None:
            self.applied_revision = revision
        self._pending = PolicyReport(
            node=self.node,
            time=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            revision=revision,
            applied_revision=self.applied_revision,
            error=error,
            compile_errors=dict(compile_errors),
            invalid=dict(invalid),
            endpoint_conflicts=dict(endpoint_conflicts or {}),
            policy_map_full=tuple(policy_map_full),
            l7_proxy=l7_proxy,
            l7_error=l7_error,
            fqdn_without_dns=dict(fqdn_without_dns or {}),
        )
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="policy-status", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _same(self, a: PolicyReport | None, b: PolicyReport | None) -> bool:
        """Equal apart from the time stamp (a sync that changed nothing is not written again)."""
        if a is None or b is None:
            return a is b
        fields = ("revision", "applied_revision", "error", "compile_errors", "invalid", "endpoint_conflicts")
        return all(getattr(a, f) == getattr(b, f) for f in fields)

    def flush(self) -> bool:
        """Write the newest report if it is new; False when the datastore refused (retry later)."""
        report = self._pending
        if report is None or self._same(report, self._written):
            return True
        try:
            self.store.put(self.key, report.to_json())
        except Exception as exc:  # the datastore is down: keep it for the next tick
            kv(log, logging.DEBUG, "policy status not written", error=str(exc))
            return False
        self._written = report
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.is_set():
                return
            self._wake.clear()
            if self.flush():
                self._stop.wait(self.interval)
            else:
                self._wake.set()  # retry, without a busy loop while the datastore is away
                self._stop.wait(max(self.interval, 2.0))
