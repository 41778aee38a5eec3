"""Gratuitous ARP: tell a segment which MAC now has an address (so reused addresses take effect at once)."""
from __future__ import annotations

import ipaddress
import socket
import struct

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def gratuitous_arp_frame(mac: str, ip: ipaddress.IPv4Address) -> bytes:
    """An Ethernet broadcast ARP request for our own address (sender = target = ip)."""
    hw = mac_bytes(mac)
    addr = ip.packed
    eth = BROADCAST + hw + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + hw + addr + b"\x00" * 6 + addr
    return eth + arp


def send_gratuitous_arp(ifname: str, mac: str, ips) -> None:
    """Send from the calling thread's network namespace."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((ifname, 0))
        for ip in ips:
            s.send(gratuitous_arp_frame(mac, ip))
