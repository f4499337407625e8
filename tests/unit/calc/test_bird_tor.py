"""The lab ToR's pure parts (``podnet.lab.tor``): GoBGP's config and reading its RIB."""

from __future__ import annotations

from podnet.lab.tor import best_paths, gobgp_config

# ``gobgp -j global rib -a ipv4`` on a lab ToR (two nodes announcing their blocks, one local prefix)
RIB = (
    '{"10.244.1.0/26":[{"nlri":{"prefix":"10.244.1.0/26"},"best":true,"attrs":[{"type":1,"value":0},'
    '{"type":2,"as_paths":[{"segment_type":2,"num":1,"asns":[64512]}]},{"type":3,"nexthop":"10.115.0.11"}],'
    '"stale":false,"source-id":"10.115.0.11","neighbor-ip":"10.115.0.11"},'
    '{"nlri":{"prefix":"10.244.1.0/26"},"best":false,"attrs":[{"type":3,"nexthop":"10.115.0.12"}]}],'
    '"10.244.2.0/26":[{"nlri":{"prefix":"10.244.2.0/26"},"best":true,"attrs":[{"type":1,"value":0},'
    '{"type":3,"nexthop":"10.115.0.12"}],"stale":true,"neighbor-ip":"10.115.0.12"}],'
    '"198.51.100.0/24":[{"nlri":{"prefix":"198.51.100.0/24"},"best":true,"attrs":[{"type":1,"value":2},'
    '{"type":3,"nexthop":"0.0.0.0"}],"stale":false}]}'
)


def test_best_paths_are_learned_best_paths_only() -> None:
    # stale paths (a peer in graceful restart) stay: forwarding goes on while it restarts
    assert best_paths(RIB) == {"10.244.1.0/26": "10.115.0.11", "10.244.2.0/26": "10.115.0.12"}
    assert best_paths("") == {} and best_paths("{}") == {}


def test_gobgp_config() -> None:
    text = gobgp_config("10.77.0.250", 64567, [("10.77.0.12", 64512, 1179), ("10.77.0.11", 64512)])
    assert text == (
        "[global.config]\n"
        "  as = 64567\n"
        '  router-id = "10.77.0.250"\n'
        "  port = 179\n"
        '  local-address-list = ["10.77.0.250"]\n'
        "\n"
        "[[neighbors]]\n"
        "  [neighbors.config]\n"
        '    neighbor-address = "10.77.0.11"\n'
        "    peer-as = 64512\n"
        "  [neighbors.graceful-restart.config]\n"
        "    enabled = true\n"
        "    restart-time = 120\n"
        "  [[neighbors.afi-safis]]\n"
        "    [neighbors.afi-safis.config]\n"
        '      afi-safi-name = "ipv4-unicast"\n'
        "    [neighbors.afi-safis.mp-graceful-restart.config]\n"
        "      enabled = true\n"
        "\n"
        "[[neighbors]]\n"
        "  [neighbors.config]\n"
        '    neighbor-address = "10.77.0.12"\n'
        "    peer-as = 64512\n"
        "  [neighbors.transport.config]\n"
        "    remote-port = 1179\n"
        "  [neighbors.graceful-restart.config]\n"
        "    enabled = true\n"
        "    restart-time = 120\n"
        "  [[neighbors.afi-safis]]\n"
        "    [neighbors.afi-safis.config]\n"
        '      afi-safi-name = "ipv4-unicast"\n'
        "    [neighbors.afi-safis.mp-graceful-restart.config]\n"
        "      enabled = true\n"
    )
