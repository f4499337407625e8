"""Netns targets, sysctl keys, error mapping and the netlink codec (no root needed)."""

from __future__ import annotations

import errno
import struct
import subprocess
import threading

import pytest

from podnet.dataplane import rtnl_codec as codec
from podnet.dataplane import sysctl
from podnet.dataplane.errors import KernelError, KernelExists, KernelNotFound, NetnsNotFound, kernel_error
from podnet.dataplane.netlink import Netlink
from podnet.dataplane.netns import netns_path, run_in_netns
from podnet.errors import AlreadyExistsError, NotFoundError


def test_netns_targets():
    assert netns_path(None) is None
    assert netns_path("pod-a") == "/run/netns/pod-a"
    assert netns_path("/proc/42/ns/net") == "/proc/42/ns/net"
    with pytest.raises(ValueError):
        netns_path("")


def test_run_in_own_netns_runs_inline_and_reraises():
    assert run_in_netns(None, threading.get_ident) == threading.get_ident()
    with pytest.raises(ZeroDivisionError):
        run_in_netns(None, lambda: 1 / 0)


def test_run_in_netns_runs_a_command_capturing_text_by_default():
    proc = run_in_netns(None, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out\n", "err\n")
    passed = run_in_netns(None, ["cat"], input=b"raw", text=False)
    assert passed.stdout == b"raw"
    with pytest.raises(subprocess.CalledProcessError):
        run_in_netns(None, ["false"], check=True)
    with pytest.raises(subprocess.TimeoutExpired):
        run_in_netns(None, ["sleep", "5"], timeout=0.05)


def test_run_in_netns_refuses_ambiguous_calls_and_missing_namespaces():
    with pytest.raises(TypeError):
        run_in_netns(None, "ip route")  # a string is not an argument list
    with pytest.raises(TypeError):
        run_in_netns(None, threading.get_ident, timeout=1)  # options are for commands
    with pytest.raises(NetnsNotFound):
        run_in_netns("pn-no-such-netns-for-sure", ["true"])
    with pytest.raises(NetnsNotFound):
        run_in_netns("/run/netns/pn-no-such-netns-for-sure", lambda: None)


def test_sysctl_keys():
    assert sysctl.iface_key("vxlan.calico", "forwarding") == "net/ipv4/conf/vxlan.calico/forwarding"
    assert sysctl._path("net.ipv4.ip_forward") == "/proc/sys/net/ipv4/ip_forward"
    assert (
        sysctl._path("net/ipv4/conf/vxlan.calico/rp_filter")
        == "/proc/sys/net/ipv4/conf/vxlan.calico/rp_filter"
    )
    for bad in ("a/b", "..", ""):
        with pytest.raises(ValueError):
            sysctl.iface_key(bad, "proxy_arp")
    with pytest.raises(ValueError):
        sysctl._path("net/../../etc/passwd")


def test_kernel_errors_keep_errno_and_context():
    exists = kernel_error("add route 10.0.0.0/24", errno.EEXIST, netns="/run/netns/x")
    assert isinstance(exists, KernelExists) and isinstance(exists, AlreadyExistsError)
    assert str(exists) == "add route 10.0.0.0/24 in netns /run/netns/x: File exists (EEXIST)"
    for err in (errno.ENOENT, errno.ENODEV, errno.ESRCH, errno.EADDRNOTAVAIL):
        assert isinstance(kernel_error("x", err), KernelNotFound)
        assert isinstance(kernel_error("x", err), NotFoundError)
    perm = kernel_error("add link", errno.EPERM)
    assert type(perm) is KernelError and perm.errno == errno.EPERM and "root" in perm.hint
    assert (
        str(kernel_error("x", errno.EINVAL, detail="Invalid argument: bad"))
        == "x: Invalid argument: bad (EINVAL)"
    )


def test_codec_veth_request_layout():
    body = codec.veth_body(
        "cali1", "eth0", peer_netns_fd=7, mtu=1450, mac_address="ee:ee:ee:ee:ee:ee", peer_mac=None, up=True
    )
    _family, _type, index, flags, change = codec.IFINFO.unpack_from(body)
    assert (index, flags, change) == (0, codec.IFF_UP, codec.IFF_UP)
    top = dict(codec.attrs(body[codec.IFINFO.size :]))
    assert top[codec.IFLA_IFNAME] == b"cali1\0"
    assert struct.unpack("=I", top[codec.IFLA_MTU]) == (1450,)
    assert top[codec.IFLA_ADDRESS] == b"\xee" * 6
    info = dict(codec.attrs(top[codec.IFLA_LINKINFO]))
    assert info[codec.IFLA_INFO_KIND] == b"veth\0"
    peer = dict(codec.attrs(info[codec.IFLA_INFO_DATA]))[codec.VETH_INFO_PEER]
    peer_attrs = dict(codec.attrs(peer[codec.IFINFO.size :]))
    assert peer_attrs[codec.IFLA_IFNAME] == b"eth0\0"
    assert struct.unpack("=I", peer_attrs[codec.IFLA_NET_NS_FD]) == (7,)


def test_codec_route_and_message_framing():
    body = codec.route_body(
        family=2, dst="10.1.0.0", dst_len=16, gateway="10.0.0.1", oif=3, table=1000, protocol=112
    )
    msg = codec.message(codec.RTM_NEWROUTE, codec.NLM_F_CREATE, 9, body)
    [(kind, flags, seq, got)] = codec.split(msg + b"\0" * 8)  # trailing padding is ignored
    assert (kind, flags, seq, got) == (codec.RTM_NEWROUTE, codec.NLM_F_CREATE | codec.NLM_F_REQUEST, 9, body)
    family, dst_len, _, _, table, proto, _, _, _ = codec.RTMSG.unpack_from(body)
    assert (family, dst_len, table, proto) == (2, 16, 252, 112)  # table >= 256: RT_TABLE_COMPAT + RTA_TABLE
    attrs = dict(codec.attrs(body[codec.RTMSG.size :]))
    assert attrs[codec.RTA_DST] == bytes([10, 1, 0, 0]) and struct.unpack("=I", attrs[codec.RTA_TABLE]) == (
        1000,
    )


def test_codec_parses_errors_with_extended_ack():
    request = codec.message(codec.RTM_NEWROUTE, 0, 5, b"x" * 12)
    tlv = codec.attr(codec.NLMSGERR_ATTR_MSG, b"Nexthop has invalid gateway\0")
    body = struct.pack("=i", -errno.ENETUNREACH) + request + tlv
    assert codec.parse_error(codec.NLM_F_ACK_TLVS, body) == (errno.ENETUNREACH, "Nexthop has invalid gateway")
    ack = struct.pack("=i", 0) + request[: codec.HDR.size]
    assert codec.parse_error(0, ack) == (0, None)


def test_codec_parses_links():
    body = codec.IFINFO.pack(0, 1, 7, codec.IFF_UP, 0) + codec.string(codec.IFLA_IFNAME, "cali1")
    body += codec.u32(codec.IFLA_MTU, 1450) + codec.mac(codec.IFLA_ADDRESS, "ee:ee:ee:ee:ee:ee")
    body += codec.attr(codec.IFLA_LINK, struct.pack("=i", 2))
    info = codec.parse_link(body)
    assert (info.index, info.name, info.mtu, info.mac, info.up, info.link_index) == (
        7,
        "cali1",
        1450,
        "ee:ee:ee:ee:ee:ee",
        True,
        2,
    )


def test_handle_in_own_netns_reads_without_root_and_is_thread_bound():
    with Netlink.open() as nl:
        assert any(link.name == "lo" for link in nl.links())
        errors = []
        thread = threading.Thread(target=lambda: errors.append(_catch(nl.links)))
        thread.start()
        thread.join()
        assert isinstance(errors[0], RuntimeError) and "another thread" in str(errors[0])


def _catch(fn):
    try:
        fn()
    except Exception as exc:
        return exc
    return None


def test_codec_route_dump_request_and_parse():
    req = codec.route_dump_body(family=2, table=1000, protocol=112, kind=None)
    family, dst_len, _, _, table, proto, scope, kind, _ = codec.RTMSG.unpack_from(req)
    assert (family, dst_len, table, proto, scope, kind) == (2, 0, 252, 112, 0, 0)
    assert dict(codec.attrs(req[codec.RTMSG.size :]))[codec.RTA_TABLE] == struct.pack("=I", 1000)
    body = codec.route_body(
        family=10, dst="fd00::", dst_len=64, gateway="fe80::1", oif=2, protocol=112, metric=1024, onlink=True
    )
    info = codec.parse_route(body)
    assert (info.dst, info.gateway, info.oif, info.table, info.protocol, info.metric) == (
        "fd00::/64",
        "fe80::1",
        2,
        254,
        112,
        1024,
    )
    assert info.flags & codec.RTNH_F_ONLINK
    default = codec.parse_route(codec.route_body(family=2, dst=None, dst_len=0, kind=6))
    assert (default.dst, default.gateway, default.kind) == ("0.0.0.0/0", None, 6)
