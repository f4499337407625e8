"""Field types shared by the kinds: ports, protocols, IP addresses and networks, durations, AS numbers.

Each is an ``Annotated`` type whose validator raises ``ValueError`` with a plain message; the problem
translator puts the field path in front of it. The ``*_problem`` helpers are usable on their own.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, PlainValidator

from podnet.model.names import (
    check_annotation_map,
    check_label_map,
    check_string_map,
    iana_svc_name_problem,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# The three L4 protocols Kubernetes objects accept.
Protocol = Literal["TCP", "UDP", "SCTP"]
TrafficPolicy = Literal["Cluster", "Local"]
EncapMode = Literal["Always", "CrossSubnet", "Never"]


def between(low: int, high: int) -> Callable[[int], int]:
    """An after-validator that keeps an integer within ``[low, high]``."""

    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return check


PortNumber = Annotated[int, AfterValidator(between(1, 65535))]
"""A TCP/UDP/SCTP port, 1-65535."""


def _int_or_port_name(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be a port number or a port name")
    if isinstance(value, int):
        return between(1, 65535)(value)
    problem = iana_svc_name_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _as_written(value: Any) -> Any:
    return value


def int_or_string(check: Callable[[Any], int | str]) -> Any:
    """An ``int | str`` field (Kubernetes IntOrString) validated by ``check`` and written back as is.

    One plain validator instead of a pydantic union, so a bad value gets one message from ``check``
    rather than one per union member.
    """
    return Annotated[int | str, PlainValidator(check), PlainSerializer(_as_written, return_type=Any)]


PortNumberOrName = int_or_string(_int_or_port_name)
"""Kubernetes IntOrString for ports: a number 1-65535 or an IANA service name such as ``http``."""


def ip_address_problem(text: str) -> str | None:
    if "%" in text:
        return "must be an IP address without a zone"
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return f"must be an IP address (got {text!r})"
    return None


def parse_network(text: str) -> IPNetwork:
    """Parse ``a.b.c.d/n`` (host bits allowed); raise ValueError with a plain message."""
    if "/" not in text:
        raise ValueError(f"must be a CIDR such as 10.0.0.0/16 (got {text!r}; add a prefix length)")
    if not re.fullmatch(r"[^/%]+/\d{1,3}", text):
        raise ValueError(f"must be a CIDR such as 10.0.0.0/16 (got {text!r})")
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"must be a CIDR such as 10.0.0.0/16 (got {text!r})") from None


def cidr_problem(text: str, host_bits_ok: bool = True) -> str | None:
    try:
        network = parse_network(text)
    except ValueError as exc:
        return str(exc)
    if not host_bits_ok and network.network_address != ipaddress.ip_address(text.split("/")[0]):
        return f"host bits must be zero (did you mean {network}?)"
    return None


def checked_by(problem_fn: Callable[[str], str | None]) -> Callable[[str], str]:
    """An after-validator from a ``*_problem`` function (its message becomes the ValueError)."""

    def check(value: str) -> str:
        problem = problem_fn(value)
        if problem:
            raise ValueError(problem)
        return value

    return check


def ip_or_cidr_problem(text: str) -> str | None:
    if "/" in text:
        return cidr_problem(text)
    return ip_address_problem(text)


IPAddressStr = Annotated[str, AfterValidator(checked_by(ip_address_problem))]
"""An IPv4 or IPv6 address."""

CIDR = Annotated[str, AfterValidator(checked_by(cidr_problem))]
"""A network in CIDR notation; host bits may be set (``10.0.0.1/24``), as Kubernetes allows."""

NetworkCIDR = Annotated[str, AfterValidator(checked_by(lambda t: cidr_problem(t, host_bits_ok=False)))]
"""A network in CIDR notation whose host bits are zero (``10.0.0.0/24``)."""

IPOrCIDR = Annotated[str, AfterValidator(checked_by(ip_or_cidr_problem))]
"""An address or a network (Calico ``nets``, Cilium ``fromCIDR``)."""

_DURATION = re.compile(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+|0")


def duration_problem(text: str) -> str | None:
    if not _DURATION.fullmatch(text):
        return f"must be a duration such as 120s, 1m30s or 2h (got {text!r})"
    return None


Duration = Annotated[str, AfterValidator(checked_by(duration_problem))]
"""A Go duration string (``120s``, ``1m30s``)."""

MAX_AS_NUMBER = 4294967295


def _as_number(value: Any) -> int:
    if isinstance(value, str):
        match = re.fullmatch(r"(\d+)\.(\d+)", value) or re.fullmatch(r"(\d+)", value)
        if not match:
            raise ValueError("must be an AS number such as 64512 or 1.10 (asdot)")
        parts = [int(p) for p in match.groups()]
        if len(parts) == 2:
            if parts[0] > 65535 or parts[1] > 65535:
                raise ValueError("each half of an asdot AS number must be at most 65535")
            value = parts[0] * 65536 + parts[1]
        else:
            value = parts[0]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an AS number such as 64512")
    if not 1 <= value <= MAX_AS_NUMBER:
        raise ValueError(f"must be between 1 and {MAX_AS_NUMBER}")
    return value


ASNumber = Annotated[int, PlainValidator(_as_number), PlainSerializer(int, return_type=int)]
"""A BGP AS number 1-4294967295 (``"1.10"`` asdot is accepted and stored as a plain number)."""


def _number_as_written(value: float) -> float | int:
    """``order: 100`` stays ``100`` (not ``100.0``) in output."""
    return int(value) if value.is_integer() else value


Order = Annotated[
    float, Field(allow_inf_nan=False), PlainSerializer(_number_as_written, return_type=float | int)
]
"""Calico's ``order`` (policies, tiers): a finite float, written back as an integer when it is one.
Finite: inf/nan are not JSON (the datastore stores strict JSON) and nan != nan breaks round trips."""

LabelMap = Annotated[dict[str, str], BeforeValidator(check_label_map)]
"""A map of Kubernetes labels (key and value rules checked, bad entries reported as ``[key]``)."""

AnnotationMap = Annotated[dict[str, str], BeforeValidator(check_annotation_map)]
"""A map of annotations (keys are qualified names; values any string)."""

StringMap = Annotated[dict[str, str], BeforeValidator(check_string_map)]
"""A map of strings with no further rules."""
