"""The rtnetlink messages that put eBPF programs on a clsact hook, field by field, with the values
``tc qdisc add dev D clsact`` and ``tc filter replace dev D ingress pref 1 handle 0x1 bpf
direct-action object-pinned F`` send (iproute2's tc_filter.c / tc_qdisc.c)."""

from __future__ import annotations

import struct

from podnet.dataplane import rtnl_codec as codec


def attrs(data: bytes) -> dict[int, bytes]:
    out, offset = {}, 0
    while offset < len(data):
        length, kind = codec.RTA.unpack_from(data, offset)
        out[kind & ~codec.NLA_F_NESTED] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return out


def test_clsact_qdisc() -> None:
    body = codec.clsact_body(7)
    family, index, handle, parent, info = codec.TCMSG.unpack_from(body)
    assert (family, index, handle, parent, info) == (0, 7, 0xFFFF0000, 0xFFFFFFF1, 0)
    assert attrs(body[codec.TCMSG.size :]) == {codec.TCA_KIND: b"clsact\0"}


def test_bpf_filter_on_each_hook() -> None:
    for direction, minor in (("ingress", 0xFFF2), ("egress", 0xFFF3)):
        body = codec.bpf_filter_body(9, direction, 42, "prog:[*fsobj]", pref=1, handle=1)
        family, index, handle, parent, info = codec.TCMSG.unpack_from(body)
        # parent ffff:fff2 / ffff:fff3; info = pref << 16 | htons(ETH_P_ALL)
        assert (family, index, handle, parent, info) == (0, 9, 1, 0xFFFF0000 | minor, 0x00010300)
        top = attrs(body[codec.TCMSG.size :])
        assert top[codec.TCA_KIND] == b"bpf\0"
        options = attrs(top[codec.TCA_OPTIONS])
        assert struct.unpack("=I", options[codec.TCA_BPF_FD]) == (42,)
        assert options[codec.TCA_BPF_NAME] == b"prog:[*fsobj]\0"
        assert struct.unpack("=I", options[codec.TCA_BPF_FLAGS]) == (codec.TCA_BPF_FLAG_ACT_DIRECT,)
