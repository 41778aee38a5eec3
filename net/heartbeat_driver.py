"""A connection's HeartbeatLink (net/fastdp_heartbeat.py) driven on the event loop, for fastdp and
the sleeve alike: its actions carried out, its next deadline armed, and callbacks into the router
guarded, so a router bug never stops a connection's heartbeats."""
from __future__ import annotations

import logging

from .fastdp_heartbeat import ACK, Established, Health, SendControl, SendHeartbeat

log = logging.getLogger("weavepy.overlay")


class HeartbeatDriver:
    """Mixed into an overlay connection that has `_link`, `params`, `overlay` (with `metrics` and
    `_loop`), `_stopped` and `_timer`, and implements `_send_heartbeat() -> list` (more actions),
    `_established()` and `_health(healthy)`, `_halt()`; its overlay has `_released(conn)`."""

    def stop(self) -> None:
        """The control connection ended (idempotent)."""
        if not self._stopped:
            self._halt()
            self.overlay._released(self)

    def _now(self) -> float:
        return self.overlay._loop.time()

    def _run(self, actions: list) -> None:
        pending = list(actions)
        while pending and not self._stopped:
            action = pending.pop(0)
            if isinstance(action, SendHeartbeat):
                pending += self._send_heartbeat()
            elif isinstance(action, SendControl):
                self.overlay.metrics["acks_sent" if action.data == ACK else "holds_sent"] += 1
                self._callback(self.params.send_control, action.data)
            elif isinstance(action, Established):
                self._established()
            elif isinstance(action, Health):
                self._health(action.healthy)
        self._reschedule()

    def _callback(self, fn, *args) -> None:
        try:
            fn(*args)
        except Exception:   # the router's problem, but it must not stop our heartbeats
            log.exception("%s: callback %s failed", type(self).__name__, getattr(fn, "__name__", fn))

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self._link.next_deadline()
        if deadline is not None and not self._stopped:
            self._timer = self.overlay._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._run(self._link.tick(self._now()))
