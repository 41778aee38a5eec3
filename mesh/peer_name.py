"""Peer names: 48-bit values written as MAC addresses (aa:bb:cc:dd:ee:ff).

The default name is derived from the machine's identity so that it is stable
across restarts and different on every machine, as Weave Net derives it.
"""
from __future__ import annotations

import hashlib
import os
import re

MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
PRODUCT_UUID_FILES = ("/sys/class/dmi/id/product_uuid", "/sys/hypervisor/uuid")
_SALT = b"9oBJ0Jmip-"


class PeerNameError(ValueError):
    pass


def parse(text: str) -> str:
    """Normalise a user-given name: full MAC form or with '::' for a run of zero octets."""
    raw = text.strip().lower()
    if "::" in raw:
        head, _, tail = raw.partition("::")
        left = [p for p in head.split(":") if p]
        right = [p for p in tail.split(":") if p]
        if len(left) + len(right) > 5:
            raise PeerNameError(f"invalid peer name '{text}'")
        octets = left + ["0"] * (6 - len(left) - len(right)) + right
    else:
        octets = raw.split(":")
    if len(octets) != 6 or not all(re.fullmatch(r"[0-9a-f]{1,2}", o) for o in octets):
        raise PeerNameError(f"invalid peer name '{text}': expected a MAC-style name such as 12:34:56:78:9a:bc")
    return ":".join(f"{int(o, 16):02x}" for o in octets)


def from_bytes(b: bytes) -> str:
    b = bytearray(b[:6])
    b[0] = (b[0] & 0xFE) | 0x02  # unicast, locally administered
    return ":".join(f"{x:02x}" for x in b)


def _read_first(paths, root: str) -> bytes:
    for p in paths:
        try:
            with open(os.path.join(root, p.lstrip("/")), "rb") as f:
                data = f.read()
            if data.strip():
                return data
        except OSError:
            continue
    return b""


def derive(root: str = "/") -> str:
    """SHA-256 of machine-id and product UUID (raw bytes); random when the machine has neither."""
    machine_id = _read_first(MACHINE_ID_FILES, root)
    product_uuid = _read_first(PRODUCT_UUID_FILES, root)
    if not machine_id and not product_uuid:
        return from_bytes(os.urandom(6))
    return from_bytes(hashlib.sha256(_SALT + machine_id + product_uuid).digest())
