"""Pool specs and pool selection: annotations, nodeSelector, disabled pools, allowed uses."""

from __future__ import annotations

import pytest

from podnet.errors import ValidationError
from podnet.ipam.pools import (
    IP_ADDRS_ANNOTATION,
    IPV4_POOLS_ANNOTATION,
    TUNNEL,
    WORKLOAD,
    PoolSpec,
    pool_for_address,
    pool_from_resource,
    requested_addresses,
    requested_pools,
    select_pools,
)

EAST = PoolSpec("east", "10.1.0.0/16", node_selector="zone == 'east'")
WEST = PoolSpec("west", "10.2.0.0/16", node_selector="zone == 'west'")
ANY = PoolSpec("any", "10.3.0.0/16")
OFF = PoolSpec("off", "10.4.0.0/16", disabled=True)
TUNNELS = PoolSpec("tunnels", "10.5.0.0/24", allowed_uses=(TUNNEL,))
MANUAL = PoolSpec("manual", "10.6.0.0/24", node_selector="!all()")
ALL = [EAST, WEST, ANY, OFF, TUNNELS, MANUAL]


def test_pool_spec_defaults_and_geometry() -> None:
    pool = PoolSpec("p", "10.0.0.0/24")
    assert pool.block_size == 26 and pool.block_count == 4
    assert pool.block_cidr(3) == "10.0.0.192/26"
    assert pool.block_for("10.0.0.77") == "10.0.0.64/26"
    assert pool.holds_block("10.0.0.64/26") and not pool.holds_block("10.0.1.0/26")
    assert PoolSpec("v6", "fd00::/64").block_size == 122
    big = PoolSpec("big", "10.0.0.0/8")
    assert big.block_count == 2**18 and big.block_cidr(2**18 - 1) == "10.255.255.192/26"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cidr": "10.0.0.1/24"}, "spec.cidr"),
        ({"cidr": "nonsense"}, "spec.cidr"),
        ({"cidr": "10.0.0.0/24", "block_size": 19}, "spec.blockSize"),
        ({"cidr": "10.0.0.0/28", "block_size": 26}, "spec.blockSize"),
    ],
)
def test_pool_spec_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        PoolSpec("bad", **kwargs)
    assert err.value.problems[0][0] == field and "IPPool bad" in str(err.value)


def test_node_selector_and_disabled_and_uses() -> None:
    assert select_pools(ALL, {"zone": "east"}) == [EAST, ANY]
    assert select_pools(ALL, {"zone": "west"}) == [WEST, ANY]
    assert select_pools(ALL, {}) == [ANY]
    assert select_pools(ALL, {"zone": "east"}, use=TUNNEL) == [EAST, ANY, TUNNELS]


def test_requested_pools_by_name_or_cidr_ignore_node_selector() -> None:
    assert select_pools(ALL, {"zone": "east"}, requested=["west", "10.6.0.0/24"]) == [WEST, MANUAL]
    assert select_pools(ALL, {}, requested=["any", "any"]) == [ANY]


@pytest.mark.parametrize(
    ("wanted", "message"),
    [("nope", "'nope' does not exist"), ("off", "'off' .* is disabled"), ("tunnels", "does not allow")],
)
def test_bad_requested_pool_is_named(wanted: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as err:
        select_pools(ALL, {}, requested=[wanted])
    assert err.value.problems[0][0] == IPV4_POOLS_ANNOTATION
    assert "known pools" in (err.value.hint or "")


def test_bad_node_selector_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match=r"spec\.nodeSelector"):
        select_pools([PoolSpec("x", "10.9.0.0/24", node_selector="zone ==")], {})


def test_requested_pools_pod_wins_over_namespace() -> None:
    pod = {IPV4_POOLS_ANNOTATION: '["east"]'}
    ns = {IPV4_POOLS_ANNOTATION: '["west", "10.3.0.0/16"]'}
    assert requested_pools(pod, ns) == ["east"]
    assert requested_pools({}, ns) == ["west", "10.3.0.0/16"]
    assert requested_pools(None, None) is None
    assert requested_pools({IPV4_POOLS_ANNOTATION: "[]"}, None) is None


@pytest.mark.parametrize("value", ["[east]", '{"a": 1}', '["ok", 3]'])
def test_requested_pools_bad_json(value: str) -> None:
    with pytest.raises(ValidationError) as err:
        requested_pools({}, {IPV4_POOLS_ANNOTATION: value})
    assert err.value.subject == "namespace"
    assert IPV4_POOLS_ANNOTATION in err.value.problems[0][0]


def test_requested_addresses() -> None:
    assert requested_addresses({IP_ADDRS_ANNOTATION: '["10.1.0.5"]'}) == ["10.1.0.5"]
    assert requested_addresses({}) is None
    with pytest.raises(ValidationError, match="not an IP address"):
        requested_addresses({IP_ADDRS_ANNOTATION: '["10.1.0.500"]'})


def test_pool_for_address() -> None:
    assert pool_for_address(ALL, "10.2.3.4") is WEST
    assert pool_for_address(ALL, "192.168.0.1") is None


def test_namespace_selector_and_manual_assignment() -> None:
    team = PoolSpec("team", "10.7.0.0/24", namespace_selector="team == 'x'")
    manual = PoolSpec("manual-only", "10.8.0.0/24", assignment_mode="Manual")
    assert select_pools([team, manual, ANY], {}, namespace_labels={"team": "x"}) == [team, ANY]
    assert select_pools([team, manual, ANY], {}, namespace_labels={"team": "y"}) == [ANY]
    assert select_pools([team, manual, ANY], {}) == [team, ANY]  # namespace labels unknown
    assert select_pools([team, manual, ANY], {}, requested=["manual-only"]) == [manual]


def test_disabled_pool_smaller_than_a_block_is_accepted() -> None:
    assert PoolSpec("old", "10.0.0.0/28", disabled=True).block_count == 0


def test_pool_from_resource() -> None:
    from podnet.model import IPPool

    resource = IPPool.from_dict(
        {
            "apiVersion": "projectcalico.org/v3",
            "kind": "IPPool",
            "metadata": {"name": "east-pool"},
            "spec": {
                "cidr": "10.1.0.0/16",
                "blockSize": 28,
                "nodeSelector": "zone == 'east'",
                "namespaceSelector": "team == 'x'",
                "allowedUses": ["Workload"],
            },
        }
    )
    pool = pool_from_resource(resource)
    assert pool == PoolSpec(
        "east-pool",
        "10.1.0.0/16",
        block_size=28,
        node_selector="zone == 'east'",
        allowed_uses=(WORKLOAD,),
        namespace_selector="team == 'x'",
    )
    defaults = pool_from_resource(
        IPPool.from_dict(
            {
                "apiVersion": "projectcalico.org/v3",
                "kind": "IPPool",
                "metadata": {"name": "d"},
                "spec": {"cidr": "192.168.0.0/16", "disabled": True},
            }
        )
    )
    assert (defaults.block_size, defaults.node_selector, defaults.disabled) == (26, "all()", True)
    assert defaults.allowed_uses == (WORKLOAD, TUNNEL)
    assert select_pools([pool, defaults], {"zone": "east"}) == [pool]
