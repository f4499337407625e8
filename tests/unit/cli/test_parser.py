"""The command line parser: options and names may mix, as with kubectl."""

from __future__ import annotations

from podnet.cli.main import build_parser


def test_options_between_names() -> None:
    args = build_parser().parse_args(["get", "netpol", "-n", "np", "a", "-o", "yaml", "b"])
    assert (args.kind, args.names, args.namespace, args.output) == ("netpol", ["a", "b"], "np", "yaml")


def test_remainder_and_sub_commands_keep_their_meaning() -> None:
    args = build_parser().parse_args(["lab", "exec", "np/a", "--", "ip", "-o", "addr"])
    assert args.pod == "np/a" and args.cmd[-3:] == ["ip", "-o", "addr"]
    argv = ["policy", "explain", "--from", "a/b", "--to", "c/d", "--port", "80/TCP"]
    args = build_parser().parse_args(argv)
    assert (args.src, args.dst, args.port) == ("a/b", "c/d", "80/TCP")
