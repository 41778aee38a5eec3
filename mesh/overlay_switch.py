"""Per connection, the kernel fast path when it works and the sleeve when it does not (Weave's
router/overlay_switch.go).

The switch is one overlay to the router, named after its preferred member
("fastdp"), so a peer offering both gets it and a peer offering only the sleeve
gets the plain sleeve.  On each connection it runs both members: fastdp proves
its path with full-MTU heartbeats; the sleeve heartbeats beside it, ready to
take over and carrying relays meanwhile.  The active member is fastdp while
fastdp is established and healthy, else the sleeve once it is established.

At first the switch gives fastdp a few seconds (its own heartbeats' give-up
time) before settling for the sleeve, so a connection whose fastdp works never
starts on the sleeve only because the sleeve's first heartbeat came back first.

A change of member is made before it is broken: the new one is given the
peer's traffic first (fastdp: its flood entry is in the kernel; the sleeve:
the bridge has forgotten the peer's MACs behind the tap), and only then is it
taken from the old one, so no frame meets a path that is not ready.  Frames
sent while the old path was failing are lost, as on any path that fails.

Control messages of the two members share the connection's overlay channel:
each carries its member's index in front (fastdp 0, sleeve 1).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Callable

from .overlay import ConnectionParams
from .wire import ProtocolError

log = logging.getLogger("weavepy.overlay")

MEMBERS = ("fastdp", "sleeve")      # in order of preference; the index is the control prefix
FASTDP_GRACE = 5.0                  # seconds fastdp is waited for at first (its heartbeats' give_up)


class OverlaySwitch:
    name = "fastdp"

    def __init__(self, fastdp, sleeve, grace: float = FASTDP_GRACE,
                 call_later: Callable[[float, Callable[[], None]], object] | None = None):
        self.fastdp, self.sleeve, self.grace = fastdp, sleeve, grace
        self.call_later = call_later or (lambda delay, fn: asyncio.get_running_loop().call_later(delay, fn))

    def features(self) -> dict[str, str]:
        return {}

    def prepare(self, params: ConnectionParams) -> "SwitchConnection":
        return SwitchConnection(self, params)

    def peer_gone(self, name: str) -> None:
        self.fastdp.peer_gone(name)          # the sleeve, an overlay of its own too, hears it itself

    def diagnostics(self) -> dict:
        return self.fastdp.diagnostics()

    def close(self) -> None:
        self.fastdp.close()                  # the sleeve is closed as an overlay of its own


class SwitchConnection:
    def __init__(self, switch: OverlaySwitch, params: ConnectionParams):
        self.params = params
        self.switch = switch
        self.active: str | None = None
        self._waited = False             # fastdp had its grace at the start
        self._timer = None
        self._reported = False
        self._switching = False
        self._stopped = False
        self.members = {}
        for index, (name, overlay) in enumerate(zip(MEMBERS, (switch.fastdp, switch.sleeve))):
            self.members[name] = overlay.prepare(replace(
                params,
                send_control=lambda data, i=index: params.send_control(bytes([i]) + data),
                on_established=lambda: self._choose(),
                on_error=lambda reason, n=name: log.info("%s to %s: %s", n, params.remote_name, reason),
                on_health=lambda healthy: self._choose()))
        # the sleeve stands by until chosen: it carries relays only
        self.members["sleeve"].active = False

    # -- OverlayConnection ---------------------------------------------------------------------------

    def confirm(self) -> None:
        for member in self.members.values():
            member.confirm()
        self._timer = self.switch.call_later(self.switch.grace, self._grace_over)

    def _grace_over(self) -> None:
        self._waited = True
        self._choose()

    def control_message(self, data: bytes) -> None:
        if not data or data[0] >= len(MEMBERS):
            raise ProtocolError(f"overlay switch: control message for member {data[:1].hex() or 'none'}")
        self.members[MEMBERS[data[0]]].control_message(data[1:])

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        for member in self.members.values():
            member.stop()

    def attrs(self) -> dict:
        name = self.active or "fastdp"
        out = dict(self.members[name].attrs())
        if name != "fastdp":
            fast = self.members["fastdp"].attrs()
            out["fastdp"] = fast.get("error") or ("unhealthy" if fast.get("established") else "not established")
        return out

    # -- choosing --------------------------------------------------------------------------------------

    def _wanted(self) -> str | None:
        fast, slow = self.members["fastdp"].attrs(), self.members["sleeve"].attrs()
        if fast.get("established") and fast.get("healthy"):
            return "fastdp"
        if slow.get("established") and (self._waited or fast.get("error") or self.active is not None):
            return "sleeve"
        return "fastdp" if fast.get("established") else None

    def _choose(self) -> None:
        if self._stopped or self._switching:
            return
        wanted = self._wanted()
        if wanted is None or wanted == self.active:
            return
        old, self._switching = self.active, True
        log.info("%s(%s): %s%s", self.params.remote_name, self.params.remote_nickname,
                 f"{old} -> " if old else "", wanted)

        def made():                          # the new path carries: now take it from the old one
            self.active = wanted
            if old is not None:
                self.members[old].set_carrying(False, broken)
            else:
                broken()

        def broken():
            self._switching = False
            if not self._reported:
                self._reported = True
                self.params.on_established()
            else:
                self.params.on_health(True)
            self._choose()                   # it may have changed again meanwhile

        if wanted == "fastdp" and old is None:
            made()           # fastdp's first establishment already put its flood entry in the kernel
        else:
            self.members[wanted].set_carrying(True, made)
