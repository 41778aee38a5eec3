"""The overlay seam: one data path (fastdp, later sleeve) per peer connection.

Drawn as weaveworks/mesh's overlay.go draws it.  The router never knows how
frames travel: for each control connection it asks every overlay both peers
have to *prepare* a connection object, *confirms* it once the control
connection is registered, forwards the overlay's control messages (tag 7) to
it, and *stops* it when the control connection ends.  The overlay connection
calls back once with "established" (its data path was proven both ways) and
at most once with an error.  `attrs()` feeds `status connections` and metrics.

A `NullOverlay` proves nothing and establishes at once: what control-plane
tests and the 30-router convergence test want.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol


@dataclass
class ConnectionParams:
    """What an overlay is told about a new control connection."""
    local_name: str                 # our peer name (MAC form)
    remote_name: str
    remote_nickname: str
    local_ip: str                   # our end of the TCP connection
    remote_ip: str                  # the peer's end
    remote_port: int                # the peer's TCP port (its listening port when outbound)
    outbound: bool                  # we dialled
    conn_uid: int                   # our ConnID XOR theirs: the same number on both ends
    remote_features: dict[str, str] = field(default_factory=dict)
    # Send an overlay control message to this connection's counterpart (over TCP, tag 7).
    send_control: Callable[[bytes], None] = lambda data: None
    on_established: Callable[[], None] = lambda: None
    on_error: Callable[[str], None] = lambda reason: None
    # Called whenever health changes (heartbeats stopped or resumed), so the router can re-render.
    on_health: Callable[[bool], None] = lambda healthy: None


class OverlayConnection(Protocol):
    def confirm(self) -> None:
        """The control connection is registered: start heartbeating."""

    def control_message(self, data: bytes) -> None:
        """A tag-7 message from the counterpart's overlay connection."""

    def stop(self) -> None:
        """The control connection ended (idempotent)."""

    def attrs(self) -> dict:
        """At least {"name": "fastdp"}; also e.g. "mtu", "healthy", "error"."""


class Overlay(Protocol):
    name: str

    def features(self) -> dict[str, str]:
        """Handshake features this overlay adds (e.g. {"Overlays": "fastdp"})."""

    def prepare(self, params: ConnectionParams) -> OverlayConnection:
        ...

    def diagnostics(self) -> dict:
        """For `report` (OverlayDiagnostics)."""

    def close(self) -> None:
        """The router is stopping.  Kernel state stays: containers keep talking while we are away."""


class NullConnection:
    def __init__(self, params: ConnectionParams):
        self.params = params
        self.stopped = False

    def confirm(self) -> None:
        self.params.on_established()

    def control_message(self, data: bytes) -> None:
        pass

    def stop(self) -> None:
        self.stopped = True

    def attrs(self) -> dict:
        return {"name": "none"}


class NullOverlay:
    name = "none"

    def features(self) -> dict[str, str]:
        return {}

    def prepare(self, params: ConnectionParams) -> NullConnection:
        return NullConnection(params)

    def diagnostics(self) -> dict:
        return {}

    def close(self) -> None:
        pass
