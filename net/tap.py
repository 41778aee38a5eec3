"""The sleeve's port on the `weave` bridge: a tap device this process owns.

Frames the bridge floods (broadcast, multicast, unknown unicast) or has learnt
behind the tap come up to the sleeve; frames the sleeve writes go into the
bridge as if they arrived on a cable.

Opened with IFF_VNET_HDR and TSO/checksum offloads (dataplane-performance.md):
the kernel then hands up TCP super-frames of up to 64 KiB with a 10-byte
virtio_net_hdr in front, and takes them back the same way, so a bulk transfer
costs a syscall per 64 KiB rather than per 1.4 KB frame.  Without a vnet
header the offloads must be off, or the kernel hands up frames whose TCP
checksum is still to be filled in: ping works, TCP silently breaks.  Offload
flags are device state and outlive the fd on a persistent tap, so they are
set to exactly this mode's every time the device is opened.

The device is not persistent: it goes when the router's fd closes, and its
bridge entries with it.  ioctl numbers: linux/if_tun.h.
"""
from __future__ import annotations

import fcntl
import os
import struct

from pyroute2 import IPRoute

from .bridge import link_index

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
VNET_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
VNET_HDR_LEN = 10          # struct virtio_net_hdr, without num_buffers (not mergeable rx buffers)
IFNAMSIZ = 16


class TapError(Exception):
    pass


def device_name(router_port: int) -> str:
    return f"sleeve-{router_port}"


def open_tap(name: str, vnet: bool = True) -> int:
    """A non-blocking fd for tap `name` (made if missing), its offloads set for this mode."""
    if len(name.encode()) >= IFNAMSIZ:
        raise TapError(f"interface name {name!r} is too long")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise TapError(f"cannot open /dev/net/tun: {exc.strerror}") from None
    try:
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet else 0)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
        if vnet:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
        # Always, and to exactly this mode's flags: see the module docstring.
        fcntl.ioctl(fd, TUNSETOFFLOAD, VNET_OFFLOADS if vnet else 0)
    except OSError as exc:
        os.close(fd)
        raise TapError(f"cannot set up tap {name}: {exc.strerror}") from None
    return fd


def attach(name: str, bridge: str, mtu: int) -> None:
    """Put the tap on the bridge, up, with the bridge's MTU.

    `isolated`: the kernel never moves a frame between two isolated ports, and the fast path's
    VXLAN port is isolated too, so a frame crosses from one data path to the other only when
    the sleeve decides it (the one place that keeps a frame from being carried twice).
    Multicast always reaches the tap, whatever IGMP snooping has seen (mcast_router 2).
    """
    with IPRoute() as ipr:
        idx, br = link_index(ipr, name), link_index(ipr, bridge)
        if idx is None or br is None:
            raise TapError(f"cannot attach {name} to {bridge}: {'tap' if idx is None else 'bridge'} missing")
        ipr.link("set", index=idx, mtu=mtu, master=br)
        set_port_flags(ipr, idx)
        ipr.link("set", index=idx, state="up")


def set_port_flags(ipr: IPRoute, index: int) -> None:
    ipr.brport("set", index=index, IFLA_BRPORT_ISOLATED=1, IFLA_BRPORT_LEARNING=1,
               IFLA_BRPORT_UNICAST_FLOOD=1, IFLA_BRPORT_MCAST_FLOOD=1, IFLA_BRPORT_MULTICAST_ROUTER=2)


def port_flags(name: str) -> dict:
    """The bridge-port settings of `name` that the sleeve relies on (for tests and diagnostics)."""
    with IPRoute() as ipr:
        idx = link_index(ipr, name)
        if idx is None:
            return {}
        for msg in ipr.brport("dump"):
            if msg["index"] == idx:
                info = msg.get_attr("IFLA_PROTINFO")
                if info is None:
                    return {}
                return {k: info.get_attr(f"IFLA_BRPORT_{k.upper()}")
                        for k in ("isolated", "learning", "unicast_flood", "mcast_flood", "multicast_router")}
    return {}


def forget_macs(name: str, macs: list[str]) -> int:
    """The bridge forgets what it learnt behind the tap for these MACs (their peer is now reached by
    the kernel fast path: the next frame floods and is learnt on the VXLAN port)."""
    from .vxlan import forget_bridge_macs
    with IPRoute() as ipr:
        idx = link_index(ipr, name)
        return 0 if idx is None else forget_bridge_macs(ipr, idx, macs)
