"""The kernel VXLAN device fastdp drives, and its forwarding database (FDB).

One device, `vxlan-<port+1>`, a port of the `weave` bridge: the kernel
encapsulates and decapsulates every container frame; Python only programs it.
It learns remote MAC -> VTEP from the frames it receives (learning on), and
per remote peer one all-zeros entry makes broadcast and unknown unicast reach
that peer (head-end replication, as `bridge fdb append 00:00:00:00:00:00`).
Offloads stay as the kernel sets them: tx checksumming off cuts throughput 4x
(docs/dataplane figures), so nothing here touches ethtool.

All functions block (netlink round trips): call them from a worker thread.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ndmsg import NTF_MASTER, NTF_SELF, NUD_PERMANENT

from .bridge import delete_link, link_index

# One fixed VNI for the whole network (0x574E, "WN").  Weave's ODP fastdp puts
# the (src, dst) short IDs in each packet's VNI; a plain Linux device has one.
VNI = 0x574E
FLOOD_MAC = "00:00:00:00:00:00"


class VxlanError(Exception):
    pass


def device_name(router_port: int) -> str:
    """Weave names the vport after its UDP port, the router's TCP port + 1."""
    return f"vxlan-{router_port + 1}"


@dataclass(frozen=True)
class Device:
    name: str
    index: int
    vni: int
    udp_port: int
    mtu: int
    created: bool        # False: an existing device with the right settings was taken over


@dataclass(frozen=True)
class FdbEntry:
    mac: str
    dst: str
    permanent: bool      # ours (flood entries); learned ones age out in the kernel


def _vxlan_settings(link) -> dict | None:
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
        return None
    data = info.get_attr("IFLA_INFO_DATA")
    return {
        "vni": data.get_attr("IFLA_VXLAN_ID"),
        "udp_port": data.get_attr("IFLA_VXLAN_PORT"),
        "learning": data.get_attr("IFLA_VXLAN_LEARNING"),
        "group": data.get_attr("IFLA_VXLAN_GROUP"),
        "collect_metadata": data.get_attr("IFLA_VXLAN_COLLECT_METADATA"),
    }


def _takeable(link, vni: int, udp_port: int) -> bool:
    """Can a restarted router keep this device (and the traffic on it) as it is?"""
    s = _vxlan_settings(link)
    return (s is not None and s["vni"] == vni and s["udp_port"] == udp_port and s["learning"] == 1
            and s["group"] in (None, "0.0.0.0") and not s["collect_metadata"])


def ensure_device(name: str, vni: int, udp_port: int, mtu: int, bridge: str) -> Device:
    """The device, up, on the bridge with our MTU.  An existing one with the right
    VNI/port/learning is taken over untouched (its FDB keeps carrying traffic); one
    with other settings is replaced."""
    with IPRoute() as ipr:
        bridge_index = link_index(ipr, bridge)
        if bridge_index is None:
            raise VxlanError(f"bridge '{bridge}' does not exist")
        index = link_index(ipr, name)
        if index is not None and not _takeable(ipr.get_links(index)[0], vni, udp_port):
            ipr.link("del", index=index)
            index = None
        created = index is None
        if created:
            try:
                ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_port=udp_port,
                         vxlan_learning=1, mtu=mtu)
            except NetlinkError as exc:
                raise VxlanError(f"cannot create VXLAN device {name}: {exc.args[-1]} "
                                 f"(does the kernel have VXLAN?)") from exc
            index = link_index(ipr, name)
        try:
            ipr.link("set", index=index, mtu=mtu, master=bridge_index)
            # Isolated, as the sleeve's tap is: the bridge never moves a frame from one data path
            # to the other by itself, so none is carried twice (net/tap.py).
            ipr.brport("set", index=index, IFLA_BRPORT_ISOLATED=1)
            ipr.link("set", index=index, state="up")
        except NetlinkError as exc:
            if created:
                ipr.link("del", index=index)    # leave nothing behind
            if exc.code == errno.EADDRINUSE:
                raise VxlanError(f"cannot bring up {name}: UDP port {udp_port} is in use") from exc
            raise VxlanError(f"cannot set up {name}: {exc.args[-1]}") from exc
        return Device(name, index, vni, udp_port, mtu, created)


def _index(ipr: IPRoute, name: str) -> int:
    index = link_index(ipr, name)
    if index is None:
        raise VxlanError(f"VXLAN device {name} is gone")
    return index


def _entries(ipr: IPRoute, index: int) -> list[FdbEntry]:
    return [FdbEntry(m.get_attr("NDA_LLADDR"), m.get_attr("NDA_DST"), bool(m["state"] & NUD_PERMANENT))
            for m in ipr.fdb("dump", ifindex=index)
            if m["flags"] & NTF_SELF and m["ifindex"] == index and m.get_attr("NDA_DST")]


def fdb_entries(name: str) -> list[FdbEntry]:
    """The device's own FDB (not the bridge's entries for the port)."""
    with IPRoute() as ipr:
        return _entries(ipr, _index(ipr, name))


def add_flood(name: str, dst: str) -> None:
    """Broadcast and unknown unicast also go to `dst` (idempotent)."""
    with IPRoute() as ipr:
        ipr.fdb("append", ifindex=_index(ipr, name), lladdr=FLOOD_MAC, dst=dst)


def remove_vtep(name: str, dst: str) -> int:
    """Forget a remote VTEP: its flood entry and every MAC learned behind it, in the device and in
    the bridge (whose entry would keep sending those MACs' frames to this port).  Returns how
    many device entries went."""
    removed = 0
    with IPRoute() as ipr:
        index = _index(ipr, name)
        macs = []
        for entry in _entries(ipr, index):
            if entry.dst != dst:
                continue
            try:
                ipr.fdb("del", ifindex=index, lladdr=entry.mac, dst=dst)
                removed += 1
            except NetlinkError as exc:
                if exc.code != errno.ENOENT:  # aged out meanwhile
                    raise
            if entry.mac != FLOOD_MAC:
                macs.append(entry.mac)
        forget_bridge_macs(ipr, index, macs)
    return removed


def forget_bridge_macs(ipr: IPRoute, port: int, macs) -> int:
    """Delete the bridge's learnt entries for `macs` on port `port` (a data path no longer carries
    them: the next frame floods, and is learnt again where it now arrives)."""
    gone = 0
    for mac in macs:
        try:
            ipr.fdb("del", ifindex=port, lladdr=mac, flags=NTF_MASTER)
            gone += 1
        except NetlinkError as exc:
            if exc.code not in (errno.ENOENT, errno.EINVAL):
                raise
    return gone


def delete_device(name: str) -> bool:
    """Remove a fast-path device left by an earlier run (the router now runs without fastdp: its
    flood entries would carry every broadcast a second time, beside the sleeve).  Whether it was there."""
    return delete_link(name)
