"""What the DNS proxy learnt for ``toFQDNs``: name -> address -> until when (a small calculator).

Each allowed answer the proxy forwards teaches the cache its A records, kept for the record's TTL
but at least ``min_ttl`` seconds (Cilium's ``--tofqdns-min-ttl``): a pod that connects a little
after its lookup, or caches the answer itself, is not refused. A ``toFQDNs`` selector allows the
addresses of every name it matches (:func:`podnet.calc.l7_dns.matches`) that have not expired.
Times are wall-clock seconds, so the cache survives an agent restart (:meth:`to_json` /
:meth:`from_json`); an address learnt again gets the later of its two expiries.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from podnet.calc.l7_dns import matches, normalize


@dataclass
class FqdnCache:
    min_ttl: int = 3600
    #: normalised name -> address -> expiry (wall-clock seconds)
    names: dict[str, dict[str, float]] = field(default_factory=dict)

    def learn(self, name: str, addresses: Iterable[str], ttl: int, now: float) -> bool:
        """Remember ``addresses`` of ``name`` from an answer with ``ttl``; True if anything new."""
        until = now + max(int(ttl), self.min_ttl)
        known = self.names.setdefault(normalize(name), {})
        changed = False
        for address in addresses:
            if known.get(address, -1.0) < until:
                changed |= address not in known
                known[address] = until
        return changed

    def expire(self, now: float) -> list[tuple[str, str]]:
        """Forget what expired by ``now``; the (name, address) pairs forgotten."""
        gone = []
        for name in list(self.names):
            for address, until in list(self.names[name].items()):
                if until <= now:
                    del self.names[name][address]
                    gone.append((name, address))
            if not self.names[name]:
                del self.names[name]
        return gone

    def addresses(self, selectors: Iterable[Any], now: float) -> set[str]:
        """Every unexpired address of every name one of ``selectors`` matches."""
        chosen = list(selectors)
        return {
            address
            for name, known in self.names.items()
            if any(matches(selector, name) for selector in chosen)
            for address, until in known.items()
            if until > now
        }

    def to_json(self) -> str:
        return json.dumps({"minTTL": self.min_ttl, "names": self.names}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FqdnCache:
        """A cache written by :meth:`to_json`; a value of another shape raises ValueError."""
        doc = json.loads(text)
        if not isinstance(doc, dict) or not isinstance(doc.get("names"), dict):
            raise ValueError("an FQDN cache is a JSON object with a names object")
        names = {
            str(name): {str(address): float(until) for address, until in known.items()}
            for name, known in doc["names"].items()
        }
        return cls(int(doc.get("minTTL", 3600)), names)

    def view(self, now: float) -> dict[str, tuple[str, ...]]:
        """Name -> its unexpired addresses (sorted): what ``toFQDNs`` compiles against."""
        out = {}
        for name, known in self.names.items():
            alive = tuple(sorted(a for a, until in known.items() if until > now))
            if alive:
                out[name] = alive
        return out
