"""Wiring a container onto the bridge: a veth pair whose container end is `ethwe`.

All functions block (netlink round trips) and are meant to run in a worker
thread; the container side is configured from inside its namespace.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import netns
from .arp import send_gratuitous_arp
from .bridge import BRIDGE, link_index

CONTAINER_IFNAME = "ethwe"
HOST_PREFIX = "vethwepl"
MULTICAST = ipaddress.IPv4Network("224.0.0.0/4")


class AttachError(Exception):
    pass


@dataclass
class ContainerIface:
    mac: str
    cidrs: list[ipaddress.IPv4Interface]


def host_ifname(pid: int) -> str:
    return f"{HOST_PREFIX}{pid}"


def _iface(ipr: IPRoute) -> tuple[int, str] | None:
    idx = link_index(ipr, CONTAINER_IFNAME)
    if idx is None:
        return None
    return idx, ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")


def _cidrs(ipr: IPRoute, idx: int) -> list[ipaddress.IPv4Interface]:
    return [ipaddress.IPv4Interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
            for a in ipr.get_addr(index=idx, family=2)]


def inspect(pid: int) -> ContainerIface | None:
    """The container's ethwe, if it has one."""
    with netns.entered(pid), IPRoute() as ipr:
        found = _iface(ipr)
        return ContainerIface(found[1], _cidrs(ipr, found[0])) if found else None


def attach(pid: int, cidrs: list[ipaddress.IPv4Interface], mtu: int, multicast_route: bool = True) -> tuple[bool, str]:
    """Give the container an ethwe on the bridge with these addresses.

    Returns (created, mac): created is False when ethwe already existed and only
    addresses were added.  On failure a veth created here is removed again.
    """
    if netns.same_netns(pid):
        raise AttachError("the container shares the host's network namespace (--net=host); "
                          "it cannot be attached to the weave network")
    with netns.entered(pid), IPRoute() as ipr:
        existing = _iface(ipr)
    created = existing is None
    host_name = host_ifname(pid)
    if created:
        _create_veth(pid, host_name, mtu)
    try:
        with netns.entered(pid), IPRoute() as ipr:
            idx, mac = _iface(ipr)
            have = {c.ip for c in _cidrs(ipr, idx)}
            for cidr in cidrs:
                if cidr.ip not in have:
                    ipr.addr("add", index=idx, address=str(cidr.ip), prefixlen=cidr.network.prefixlen)
            ipr.link("set", index=idx, state="up")
            if multicast_route and created:
                try:
                    ipr.route("add", dst=str(MULTICAST), oif=idx)
                except NetlinkError as exc:
                    if exc.code != 17:
                        raise
        return created, mac
    except Exception:
        if created:
            delete_host_end(host_name)
        raise


def announce(pid: int, mac: str, cidrs) -> None:
    """Gratuitous ARP from inside the container, so peers' caches learn a reused address at once.

    Kept off the attach path: a packet socket costs ~20 ms to close (RCU grace period).
    """
    with netns.entered(pid):
        send_gratuitous_arp(CONTAINER_IFNAME, mac, [c.ip for c in cidrs])


def _create_veth(pid: int, host_name: str, mtu: int):
    """One netlink request makes the pair, with the peer born inside the container as ethwe."""
    with IPRoute() as ipr:
        bridge = link_index(ipr, BRIDGE)
        if bridge is None:
            raise AttachError(f"bridge '{BRIDGE}' does not exist; is weavepy launched?")
        if link_index(ipr, host_name) is not None:
            ipr.link("del", ifname=host_name)  # left over from an earlier container with this pid
        ipr.link("add", ifname=host_name, kind="veth", mtu=mtu,
                 peer={"ifname": CONTAINER_IFNAME, "net_ns_pid": pid, "mtu": mtu})
        try:
            ipr.link("set", ifname=host_name, master=bridge, state="up")
        except Exception:
            ipr.link("del", ifname=host_name)
            raise


def delete_host_end(host_name: str) -> bool:
    with IPRoute() as ipr:
        if link_index(ipr, host_name) is None:
            return False
        ipr.link("del", ifname=host_name)
        return True


def remove_addresses(pid: int, cidrs: list[ipaddress.IPv4Interface]) -> bool:
    """Take addresses off ethwe; the interface goes when none is left.  Returns whether it went."""
    with netns.entered(pid), IPRoute() as ipr:
        found = _iface(ipr)
        if found is None:
            return True
        idx = found[0]
        for cidr in cidrs:
            try:
                ipr.addr("del", index=idx, address=str(cidr.ip), prefixlen=cidr.network.prefixlen)
            except NetlinkError as exc:
                if exc.code not in (99, 2):
                    raise
        if _cidrs(ipr, idx):
            return False
        ipr.link("del", index=idx)  # deleting one end of a veth removes both
        return True


def host_ends() -> list[str]:
    with IPRoute() as ipr:
        return [l.get_attr("IFLA_IFNAME") for l in ipr.get_links()
                if (l.get_attr("IFLA_IFNAME") or "").startswith(HOST_PREFIX)]
