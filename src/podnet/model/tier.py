"""``projectcalico.org/v3`` Tier: an ordered group of policies with an action for what none decides.

Read from Calico's source at projectcalico/calico 87c15906 (2026-08-22):
``api/pkg/apis/projectcalico/v3/tier.go`` and ``libcalico-go/lib/validator/v3/validator.go``.

- ``spec.order``: optional finite float; tiers with a lower order apply first, no order is "infinite"
  (last), equal orders go by name. ``spec.defaultAction``: ``Deny`` (default) or ``Pass``: what
  happens to traffic a policy of the tier selected but no rule of it matched.
- The name is a DNS-1123 label (no dots: tier names are parts of policy names).
- The built-in tiers (:data:`BUILTIN_TIERS`) always exist, stored or not; Calico's CEL rules fix
  their order and action, with the messages used here:

      kube-admin     order 1000       Pass   AdminNetworkPolicy, ClusterNetworkPolicy tier Admin
      default        order 1000000    Deny   Calico policies without a tier, Kubernetes NetworkPolicy
      kube-baseline  order 10000000   Pass   BaselineAdminNetworkPolicy, ClusterNetworkPolicy Baseline

:func:`tier_table` merges the stored tiers over the built-in ones; :attr:`TierInfo.sort_key` is the
order in which tiers apply.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from podnet.model.base import ApiModel
from podnet.model.fields import Order
from podnet.model.names import NameRule
from podnet.model.problems import Problems
from podnet.model.resource import Resource

TierAction = Literal["Deny", "Pass"]

KUBE_ADMIN_TIER = "kube-admin"
DEFAULT_TIER = "default"
KUBE_BASELINE_TIER = "kube-baseline"
KUBE_ADMIN_TIER_ORDER = 1_000.0
DEFAULT_TIER_ORDER = 1_000_000.0
KUBE_BASELINE_TIER_ORDER = 10_000_000.0


@dataclass(frozen=True)
class TierInfo:
    """What calculation needs of a tier: its name, order (None: after every ordered tier) and
    default action."""

    name: str
    order: float | None
    default_action: TierAction

    @property
    def sort_key(self) -> tuple[float, str]:
        """Tiers apply in this order: by ``order`` (none = infinite), then by name."""
        return (math.inf if self.order is None else self.order, self.name)

    @classmethod
    def of(cls, tier: Tier) -> TierInfo:
        return cls(tier.name, tier.spec.order, tier.spec.default_action)


BUILTIN_TIERS: dict[str, TierInfo] = {
    t.name: t
    for t in (
        TierInfo(KUBE_ADMIN_TIER, KUBE_ADMIN_TIER_ORDER, "Pass"),
        TierInfo(DEFAULT_TIER, DEFAULT_TIER_ORDER, "Deny"),
        TierInfo(KUBE_BASELINE_TIER, KUBE_BASELINE_TIER_ORDER, "Pass"),
    )
}
"""The tiers Calico creates and protects from deletion, by name (in the order they apply)."""


def tier_table(stored: Iterable[Tier]) -> dict[str, TierInfo]:
    """Every tier that exists: the built-in ones and the stored ones (a stored built-in tier has
    the built-in order and action: validation allows no other), by name."""
    table = dict(BUILTIN_TIERS)
    for tier in stored:
        table[tier.name] = TierInfo.of(tier)
    return table


class TierSpec(ApiModel):
    order: Order | None = None
    default_action: TierAction = "Deny"


class TierStatus(ApiModel):
    """Written by Calico's tier controller (a ``Ready`` condition); kept as given."""

    conditions: Any = None


class Tier(Resource):
    """A Calico policy tier (cluster-scoped)."""

    KIND: ClassVar[str] = "Tier"
    API_VERSIONS: ClassVar[tuple[str, ...]] = ("projectcalico.org/v3",)
    NAMESPACED: ClassVar[bool] = False
    NAME_RULE: ClassVar[NameRule] = "label"

    spec: TierSpec = Field(default_factory=TierSpec)
    status: TierStatus | None = None

    @model_validator(mode="after")
    def _builtin_tiers_keep_their_order_and_action(self) -> Tier:
        builtin = BUILTIN_TIERS.get(self.name)
        if builtin is None:
            return self
        problems = Problems()
        if self.spec.default_action != builtin.default_action:
            problems.add(
                "spec.defaultAction",
                f"The '{builtin.name}' tier must have default action '{builtin.default_action}' "
                f"(a tier with the name {builtin.name} is built in)",
            )
        if self.spec.order != builtin.order:
            problems.add(
                "spec.order",
                f"{builtin.name} tier order must be {int(builtin.order or 0)} "
                f"(a tier with the name {builtin.name} is built in)",
            )
        problems.raise_if_any()
        return self
