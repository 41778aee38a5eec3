"""The sleeve's tap on the bridge (root only; a throwaway host namespace, no dockerd): frames
the bridge floods come up with their vnet header, and the offloads match the mode the tap is
opened in even on a persistent tap that had others (with offloads left on, a reader without
a vnet header gets frames whose TCP checksum is still to be filled in)."""
import subprocess
import sys

import pytest

from two_hosts import TwoHosts, sh

pytestmark = pytest.mark.integration

OPEN_AND_READ_ARP = r"""
import os, select, sys
from weavepy.net import tap
fd = tap.open_tap("sleeve-6783", vnet=True)
tap.attach("sleeve-6783", "weave", 1376)
print(sorted(tap.port_flags("sleeve-6783").items()), flush=True)
deadline = 50
while deadline:
    r, _, _ = select.select([fd], [], [], 0.2)
    deadline -= 1
    if not r:
        continue
    frame = os.read(fd, 65600)
    if frame[10 + 12:10 + 14] == b"\x08\x06":        # after the vnet header: an ARP who-has
        print(frame[:10].hex(), len(frame) - 10, frame[10:16].hex(), flush=True)
        break
"""


@pytest.fixture(scope="module")
def host():
    with TwoHosts() as hosts:
        yield hosts.a


def in_host(host, script, **kw):
    return sh("nsenter", f"--net=/run/netns/{host.netns}", sys.executable, "-P", "-c", script, **kw)


def test_a_flooded_frame_comes_up_the_tap_with_its_vnet_header(host):
    reader = subprocess.Popen(["nsenter", f"--net=/run/netns/{host.netns}", sys.executable, "-P", "-c", OPEN_AND_READ_ARP],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    flags = reader.stdout.readline()
    assert flags.strip() == str(sorted({"isolated": 1, "learning": 1, "unicast_flood": 1, "mcast_flood": 1,
                                        "multicast_router": 2}.items())), reader.stderr.read()
    host.ping("10.2.1.99", timeout=1)             # nobody there: the container asks by ARP broadcast
    out, err = reader.communicate(timeout=20)
    vnet, length, dst = out.split()
    assert vnet == "00" * 10 and int(length) in (42, 60) and dst == "ff" * 6, err
    assert "sleeve-6783" not in host.run("ip", "-o", "link").stdout     # not persistent: gone with its fd


def test_opening_without_a_vnet_header_turns_a_persistent_taps_offloads_off(host):
    host.run("ip", "tuntap", "add", "dev", "tp-trap", "mode", "tap", "vnet_hdr")
    try:
        def offloads():
            out = host.run("ethtool", "-k", "tp-trap").stdout
            return {k: v.split()[0] for k, v in (line.strip().split(": ", 1) for line in out.splitlines()[1:]
                                                 if ": " in line) if k in ("tx-checksumming", "tcp-segmentation-offload")}
        in_host(host, "from weavepy.net import tap; tap.open_tap('tp-trap', vnet=True)")
        assert offloads() == {"tx-checksumming": "on", "tcp-segmentation-offload": "on"}
        in_host(host, "from weavepy.net import tap; tap.open_tap('tp-trap', vnet=False)")
        assert offloads() == {"tx-checksumming": "off", "tcp-segmentation-offload": "off"}
    finally:
        host.run("ip", "link", "del", "tp-trap", check=False)
