"""Address requests as users write them: net:default, net:CIDR, ip:CIDR, CIDR.

Parsing is strict and every error names the token that was wrong, so a bad
request can be refused before anything is allocated or created.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Union

# A subnet needs at least two usable hosts once its network and broadcast
# addresses are left out; a /31 or /32 has none.
MAX_ALLOC_PREFIX = 30


class AddressError(ValueError):
    """A malformed or unusable address request; the message names the token."""


@dataclass(frozen=True)
class AllocateIn:
    """Any free address in this subnet (net:default is resolved to the default subnet)."""
    subnet: ipaddress.IPv4Network
    default: bool = False

    def __str__(self):
        return "net:default" if self.default else f"net:{self.subnet}"


@dataclass(frozen=True)
class Claim:
    """Exactly this address, with this prefix length."""
    cidr: ipaddress.IPv4Interface

    def __str__(self):
        return str(self.cidr)


Request = Union[AllocateIn, Claim]


def parse_subnet(text: str, what: str = "subnet") -> ipaddress.IPv4Network:
    """A CIDR with no host bits, e.g. 10.32.0.0/12."""
    if "/" not in text:
        raise AddressError(f"invalid {what} '{text}': a CIDR such as 10.32.0.0/12 is required")
    try:
        net = ipaddress.IPv4Network(text, strict=False)
    except ValueError as exc:
        raise AddressError(f"invalid {what} '{text}': {_reason(exc)}") from None
    if net.network_address != ipaddress.IPv4Interface(text).ip:
        raise AddressError(f"invalid {what} '{text}': bits after the network prefix are not all zero "
                           f"(did you mean {net}?)")
    return net


def parse_cidr(text: str, token: str | None = None) -> ipaddress.IPv4Interface:
    """An address with its prefix length, e.g. 10.2.1.1/24.  Errors name `token`, the word as typed."""
    typed = text if token is None else token
    if not text:
        raise AddressError(f"invalid address '{typed}': an address with its prefix length is required, "
                           f"e.g. ip:10.2.1.1/24")
    if "/" not in text:
        raise AddressError(f"invalid address '{typed}': a prefix length is required, e.g. {typed}/24")
    try:
        cidr = ipaddress.IPv4Interface(text)
    except ValueError as exc:
        raise AddressError(f"invalid address '{typed}': {_reason(exc)}") from None
    if cidr.network.prefixlen <= MAX_ALLOC_PREFIX and cidr.ip in (cidr.network.network_address,
                                                                 cidr.network.broadcast_address):
        kind = "network" if cidr.ip == cidr.network.network_address else "broadcast"
        raise AddressError(f"invalid address '{typed}': {cidr.ip} is the {kind} address of {cidr.network}")
    return cidr


def parse_request(token: str, default_subnet: ipaddress.IPv4Network | None) -> Request:
    """One ADDR argument: net:default | net:CIDR | ip:CIDR | CIDR."""
    if token == "net:default":
        if default_subnet is None:
            raise AddressError("IP address allocation must be enabled to use 'net:default'")
        return AllocateIn(default_subnet, default=True)
    if token.startswith("net:"):
        if default_subnet is None:
            raise AddressError(f"IP address allocation must be enabled to use '{token}'")
        subnet = parse_subnet(token[4:], what=f"subnet in '{token}'")
        check_allocatable(subnet, token)
        return AllocateIn(subnet)
    if token.startswith("ip:"):
        return Claim(parse_cidr(token[3:], token))
    if looks_like_cidr(token):
        return Claim(parse_cidr(token))
    raise AddressError(f"invalid address request '{token}': expected net:default, net:<subnet>, "
                       f"ip:<address/prefix> or <address/prefix>")


def check_allocatable(subnet: ipaddress.IPv4Network, token: str | None = None):
    if subnet.prefixlen > MAX_ALLOC_PREFIX:
        raise AddressError(f"subnet {token or subnet} is too small to allocate from "
                           f"(a /{subnet.prefixlen} has no usable host address; use /{MAX_ALLOC_PREFIX} or larger)")


def looks_like_cidr(token: str) -> bool:
    """Whether a word on the command line is meant as an address (so `run` can tell it from docker's args)."""
    if token.startswith(("net:", "ip:")):
        return True
    head = token.split("/", 1)[0]
    parts = head.split(".")
    return len(parts) == 4 and all(p.isdigit() for p in parts)


def parse_requests(tokens: list[str], default_subnet) -> list[Request]:
    if not tokens:
        tokens = ["net:default"]
    return [parse_request(t, default_subnet) for t in tokens]


def host_range(subnet: ipaddress.IPv4Network) -> tuple[int, int]:
    """[first, end) of the addresses in a subnet that may be handed out (RFC 1122: not network/broadcast)."""
    start, size = int(subnet.network_address), subnet.num_addresses
    if subnet.prefixlen > MAX_ALLOC_PREFIX:
        return start, start + size
    return start + 1, start + size - 1


def _reason(exc: Exception) -> str:
    text = str(exc)
    if "netmask" in text.lower() or "prefix" in text.lower():
        return "the prefix length must be between 0 and 32"
    return text
