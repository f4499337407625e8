"""The addresses ``toFQDNs`` allows on this node, as its DNS proxy learns them (Cilium profile).

    DNS proxy: an allowed answer ──▶ learn() ──▶ cache (calc.fqdn_cache), saved to the state dir
        a name some toFQDNs selects got a new address ──▶ policy applied, *then* the answer goes
        to the pod (Cilium holds it the same way): its first connection already finds the address
    every second ──▶ expired addresses forgotten ──▶ policy applied without them

The cache survives an agent restart (a JSON file per node): a pod that connects to an address
it looked up before the restart keeps being allowed until the address expires.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from podnet.agent.log import kv
from podnet.calc.fqdn_cache import FqdnCache
from podnet.calc.l7_dns import matches

log = logging.getLogger("podnet.agent.fqdn")

HOLD_SECONDS = 2.0  # at most this long an answer waits for the policy that allows its addresses


class FqdnTracker:
    """The node's learnt names. ``policies()``: the Cilium policies now (their toFQDNs selectors);
    ``apply(wait)``: a policy apply, waited for (True: applied in time) or only asked for."""

    def __init__(
        self,
        path: str,
        min_ttl: Callable[[], int],
        policies: Callable[[], Iterable[Any]],
        apply: Callable[[bool], bool],
    ) -> None:
        self.path, self._min_ttl, self._policies, self._apply = path, min_ttl, policies, apply
        self.cache = FqdnCache(min_ttl())
        self._lock = threading.Lock()
        self._stop = threading.Event()
        with contextlib.suppress(FileNotFoundError):
            try:
                with open(path) as f:
                    self.cache = FqdnCache.from_json(f.read())
            except ValueError as exc:
                kv(log, logging.WARNING, "FQDN cache unreadable; starting empty", path=path, error=str(exc))
        self.held = self.late = 0

    def view(self) -> dict[str, tuple[str, ...]]:
        with self._lock:
            return self.cache.view(time.time())

    def selected(self, name: str) -> bool:
        """Whether some toFQDNs selector of the policies matches ``name``."""
        for policy in self._policies():
            for rule in policy.rules():
                for part in rule.egress or []:
                    if any(matches(s, name) for s in part.to_fqdns or []):
                        return True
        return False

    def learn(self, name: str, addresses: list[str], ttl: int) -> None:
        """An allowed answer: remember its addresses; if a toFQDNs rule selects the name and an
        address is new, apply policy before returning (the answer is held meanwhile)."""
        with self._lock:
            self.cache.min_ttl = self._min_ttl()
            changed = self.cache.learn(name, addresses, ttl, time.time())
            if changed:
                self._save()
        if changed and self.selected(name):
            self.held += 1
            if not self._apply(True):
                self.late += 1
                kv(log, logging.WARNING, "answer released before its policy applied", name=name)

    def start(self, interval: float = 1.0) -> None:
        threading.Thread(target=self._expire_loop, args=(interval,), name="fqdn-expiry", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _expire_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            with self._lock:
                gone = self.cache.expire(time.time())
                if gone:
                    self._save()
            if gone and any(self.selected(name) for name, _ in gone):
                self._apply(False)

    def _save(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        temporary = self.path + ".tmp"
        with open(temporary, "w") as f:
            f.write(self.cache.to_json())
        os.replace(temporary, self.path)
