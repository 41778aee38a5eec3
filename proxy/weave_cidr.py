"""Which containers the proxy networks, and with which addresses (WEAVE_CIDR, as Weave reads it)."""
from __future__ import annotations

from dataclasses import dataclass

from weavepy.ipam.request import AddressError, parse_request

ELIGIBLE_NETWORK_MODES = ("", "default", "bridge", "none")


@dataclass(frozen=True)
class Decision:
    attach: bool
    tokens: tuple[str, ...] = ()
    reason: str = ""


def weave_cidr(env) -> str | None:
    """The value of the first WEAVE_CIDR= entry, or None."""
    for item in env or ():
        if isinstance(item, str) and item.startswith("WEAVE_CIDR="):
            return item[len("WEAVE_CIDR="):]
    return None


def decide(network_mode: str | None, env, default_ipalloc: bool = True) -> Decision:
    mode = network_mode or ""
    if mode not in ELIGIBLE_NETWORK_MODES:
        return Decision(False, reason=f"the container has '--net={mode}'")
    value = weave_cidr(env)
    if value is None:
        if not default_ipalloc:
            return Decision(False, reason="no WEAVE_CIDR and --no-default-ipalloc")
        return Decision(True, ("net:default",))
    if value == "none":
        return Decision(False, reason="WEAVE_CIDR=none")
    tokens = tuple(value.split())
    return Decision(True, tokens or ("net:default",))


def validate(tokens, default_subnet) -> None:
    """Raise AddressError naming the first malformed token."""
    for token in tokens:
        try:
            parse_request(token, default_subnet)
        except AddressError as exc:
            raise AddressError(f"invalid WEAVE_CIDR '{token}': {exc}") from None
