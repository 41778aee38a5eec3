"""The `weave` bridge in the host's network namespace."""
from __future__ import annotations

import ipaddress

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

BRIDGE = "weave"
DEFAULT_MTU = 1376


class BridgeError(Exception):
    pass


def link_index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def bridge_mac(name: str = BRIDGE) -> str | None:
    with IPRoute() as ipr:
        idx = link_index(ipr, name)
        if idx is None:
            return None
        return ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")


def ensure_bridge(mac: str, mtu: int, name: str = BRIDGE) -> None:
    """Create the bridge (MAC = peer name) if it is missing, and bring it up with our MTU."""
    with IPRoute() as ipr:
        idx = link_index(ipr, name)
        if idx is None:
            ipr.link("add", ifname=name, kind="bridge", address=mac, mtu=mtu)
            idx = link_index(ipr, name)
        else:
            kind = ipr.get_links(idx)[0].get_attr("IFLA_LINKINFO")
            kind = kind.get_attr("IFLA_INFO_KIND") if kind else None
            if kind != "bridge":
                raise BridgeError(f"an interface named '{name}' exists and is not a bridge ({kind}); "
                                  f"run 'weavepy reset' or remove it")
            ipr.link("set", index=idx, mtu=mtu)
        ipr.link("set", index=idx, state="up")


def delete_link(name: str) -> bool:
    """Remove an interface by name; whether it was there."""
    with IPRoute() as ipr:
        idx = link_index(ipr, name)
        if idx is None:
            return False
        ipr.link("del", index=idx)
        return True


def delete_bridge(name: str = BRIDGE) -> bool:
    return delete_link(name)


def addresses(name: str = BRIDGE) -> list[ipaddress.IPv4Interface]:
    with IPRoute() as ipr:
        idx = link_index(ipr, name)
        if idx is None:
            return []
        return [ipaddress.IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
                for a in ipr.get_addr(index=idx, family=2)]


def add_address(cidr: ipaddress.IPv4Interface, name: str = BRIDGE) -> bool:
    """Returns False when the address was already there (expose is idempotent)."""
    with IPRoute() as ipr:
        idx = link_index(ipr, name)
        if idx is None:
            raise BridgeError(f"bridge '{name}' does not exist; is weavepy launched?")
        try:
            ipr.addr("add", index=idx, address=str(cidr.ip), prefixlen=cidr.network.prefixlen)
        except NetlinkError as exc:
            if exc.code == 17:  # EEXIST
                return False
            raise
        return True


def del_address(cidr: ipaddress.IPv4Interface, name: str = BRIDGE) -> bool:
    with IPRoute() as ipr:
        idx = link_index(ipr, name)
        if idx is None:
            return False
        try:
            ipr.addr("del", index=idx, address=str(cidr.ip), prefixlen=cidr.network.prefixlen)
        except NetlinkError as exc:
            if exc.code in (99, 2):  # EADDRNOTAVAIL, ENOENT
                return False
            raise
        return True


def link_stats(name: str) -> dict:
    """The kernel's counters for a link (rx/tx packets and bytes); {} when it does not exist."""
    with IPRoute() as ipr:
        idx = link_index(ipr, name)
        if idx is None:
            return {}
        stats = ipr.get_links(idx)[0].get_attr("IFLA_STATS64") or {}
        return {key: stats.get(key, 0) for key in ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes")}
