"""The connection maker, sans-IO: which peer addresses to dial, and when.

Ported from weaveworks/mesh connection_maker.go.  Targets are the addresses the
user gave (launch PEER arguments, `weavepy connect`) and, with discovery on,
the addresses of peers that other peers are connected to and we are not.  The
driver tells the maker what happened (an attempt connected or ended) and, on
`refresh`, what the world looks like now (our connections, the topology); the
maker answers with the addresses to dial.  Nothing here reads a clock.

Address names are resolved by the driver at each try rather than once when
added (as Weave does): a name that does not resolve yet (DNS not up at boot,
a host not yet created) is a target that retries, not a refused command.
"""
from __future__ import annotations

import enum
import functools
import ipaddress
import random
import re
import time
from dataclasses import dataclass
from typing import Iterable, Mapping

INITIAL_INTERVAL = 2.0     # mesh initialInterval
MAX_INTERVAL = 360.0       # mesh maxInterval: 6 minutes
GROWTH = 1.5               # mesh nextTryLater: i *= 3/2
RESET_AFTER = 60.0         # mesh resetAfter: a connection that lived a minute was good; retry at once
JITTER = (0.5, 1.5)        # mesh: the next try is uniform in [i/2, 3i/2]
# Weave's growth leaves a peer that was cut off for 30 s waiting up to 15 s more
# after the network heals, and one that restarted after a minute's downtime up
# to half a minute.  We promise reconnection within seconds, so for the first ten
# minutes of a failure streak the interval stays at its initial 2 s (tries 1-3 s
# apart, a SYN each: cheap); after that it grows as Weave's does, to 6 minutes.
FAST_PHASE = 600.0
# Two peers that learn of each other from the same gossip would both dial, and the
# tie-break then drops one of the two connections: twice the handshakes and
# topology churn while a mesh forms (Weave logs "Multiple connections to X added").
# Of a discovered pair, the peer with the lower name dials at once and the other
# waits this long, dialling only if no connection came in meanwhile (the lower one
# may run with --no-discovery).
DISCOVERY_DEFER = 1.0

HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class TargetState(enum.Enum):
    WAITING = "waiting"          # for its next try
    ATTEMPTING = "attempting"    # dialling, or in the handshake
    CONNECTED = "connected"
    SUSPENDED = "suspended"      # a direct target not needed now: we are connected to that peer otherwise


@dataclass
class Target:
    address: str                            # host:port
    state: TargetState = TargetState.WAITING
    last_error: str | None = None
    try_after: float | None = 0.0           # None: never again (name clash, ourselves)
    interval: float = INITIAL_INTERVAL
    failing_since: float | None = None      # start of the current failure streak
    attempt_started: float = 0.0
    peer: str | None = None                 # the name that answered here last

    def try_now(self, now: float) -> None:
        self.try_after = now
        self.interval = INITIAL_INTERVAL
        self.failing_since = None

    def try_later(self, now: float, rng: random.Random) -> None:
        if self.failing_since is None:
            self.failing_since = now
        self.try_after = now + self.interval * rng.uniform(*JITTER)
        cap = INITIAL_INTERVAL if now - self.failing_since < FAST_PHASE else MAX_INTERVAL
        self.interval = min(self.interval * GROWTH, cap)

    def try_never(self) -> None:
        self.try_after = None


@dataclass(frozen=True)
class Link:
    """A connection, ours or one a known peer reports in the topology."""
    peer: str          # the name at the far end
    address: str       # ip:port; for our outbound connections, the target we dialled
    outbound: bool


@dataclass(frozen=True)
class Dial:
    address: str
    direct: bool       # the user named it: any peer may answer.  Discovered: only a peer we know.


@functools.lru_cache(maxsize=4096)   # discovery parses every address in every topology refresh
def parse_address(peer: str) -> tuple[str, int | None]:
    """`host[:port]` -> (host, port or None).  IPv4 literals and DNS names, as Weave (tcp4)."""
    invalid = ValueError(f'invalid peer name "{peer}", should be host[:port]')
    host, sep, port_text = peer.rpartition(":")
    if not sep:
        host, port_text = peer, ""
    elif not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise invalid
    if re.fullmatch(r"[0-9.]+", host):
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError:
            raise invalid from None
    else:
        labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
        if len(host) > 253 or not all(HOSTNAME_LABEL.fullmatch(label) for label in labels):
            raise invalid
        host = host.lower()
    return host, int(port_text) if port_text else None


def _host_of(address: str) -> str:
    return address.rpartition(":")[0]


class ConnectionMaker:
    def __init__(self, name: str, port: int, *, discovery: bool = True, conn_limit: int = 200,
                 rng: random.Random | None = None):
        self.name = name
        self.port = port
        self.discovery = discovery
        self.conn_limit = conn_limit            # 0: no limit (weaver's --conn-limit)
        self.rng = rng or random.Random()
        self._direct: dict[str, tuple[str, bool]] = {}   # as the user wrote it -> (host:port, port given)
        self._targets: dict[str, Target] = {}

    def _complete(self, peer: str) -> tuple[str, bool]:
        host, port = parse_address(peer)
        return f"{host}:{port or self.port}", port is not None

    # What the user asks for.

    def initiate(self, peers: Iterable[str], now: float, replace: bool = False) -> None:
        """Add direct targets (all or none: ValueError names the first bad one)."""
        parsed = [(peer, self._complete(peer)) for peer in peers]
        if replace:
            self._direct.clear()
        for peer, completed in parsed:
            self._direct[peer] = completed
            target = self._targets.get(completed[0])
            if target is not None and target.state is not TargetState.ATTEMPTING:
                target.try_now(now)         # asked again: no more waiting

    def forget(self, peers: Iterable[str]) -> None:
        """Stop reconnecting to these; live connections stay up (as Weave's forget)."""
        for peer in peers:
            try:
                address = self._complete(peer)[0]
            except ValueError:
                address = None
            for given, (completed, _) in list(self._direct.items()):
                if given == peer or completed == address:
                    del self._direct[given]

    def targets(self, active_only: bool = False) -> list[str]:
        """The direct targets as the user wrote them; active_only leaves out never-retry ones."""
        out = []
        for given, (address, _) in self._direct.items():
            target = self._targets.get(address)
            if active_only and target is not None and target.try_after is None:
                continue
            out.append(given)
        return out

    # What the driver reports.

    def connected(self, address: str, peer: str) -> None:
        """Our attempt at `address` is a registered connection to `peer`."""
        target = self._targets.get(address)
        if target is not None:
            target.state = TargetState.CONNECTED
            target.last_error = None
            target.peer = peer

    def ended(self, address: str, error: str, now: float, *, retry: bool = True,
              peer: str | None = None) -> None:
        """Our attempt at `address` failed, or its connection ended; retry=False: never again."""
        target = self._targets.get(address)
        if target is None or target.state not in (TargetState.ATTEMPTING, TargetState.CONNECTED):
            return
        target.state = TargetState.WAITING
        target.last_error = error
        target.peer = peer or target.peer
        if not retry:
            target.try_never()
        elif now - target.attempt_started > RESET_AFTER:
            target.try_now(now)
        else:
            target.try_later(now, self.rng)

    def refresh(self, now: float, connections: Iterable[Link],
                topology: Mapping[str, Iterable[Link]]) -> list[Dial]:
        """The addresses to dial now.  `connections` are ours; `topology` maps each known
        peer's name to the connections it reports."""
        connections = list(connections)
        connected_peers = {link.peer for link in connections}
        connected_addresses = {link.address for link in connections}
        inbound_ips = {_host_of(link.address) for link in connections if not link.outbound}
        valid: set[str] = set()
        direct: set[str] = set()

        def add(address: str, delay: float = 0.0) -> None:
            if address in connected_addresses:
                return
            valid.add(address)
            self._targets.setdefault(address, Target(address, try_after=now + delay))

        for address, port_given in self._direct.values():
            direct.add(address)
            if not port_given and _host_of(address) in inbound_ips:
                continue        # Weave: a peer named without a port that has dialled us already
            known = self._targets.get(address)
            if known is not None and known.peer in connected_peers:
                continue        # connected to whoever answers there, the other way round
            add(address)
        if self.discovery:
            for name, links in topology.items():
                if name == self.name:
                    continue
                for link in links:
                    if link.peer == self.name or link.peer in connected_peers:
                        continue
                    try:    # gossip from a peer: an address that is no address is skipped
                        host, port = parse_address(link.address)
                    except ValueError:
                        continue
                    # An inbound connection's source port is ephemeral: try the mesh port there.
                    add(f"{host}:{port if link.outbound and port else self.port}",
                        DISCOVERY_DEFER if link.peer < self.name else 0.0)
        return self._dial(now, valid, direct, len(connections))

    def _dial(self, now: float, valid: set[str], direct: set[str], live: int) -> list[Dial]:
        busy = live + sum(t.state is TargetState.ATTEMPTING for t in self._targets.values())
        dials = []
        for address, target in list(self._targets.items()):
            if target.state not in (TargetState.WAITING, TargetState.SUSPENDED):
                continue
            if address not in valid:
                if address in direct:
                    target.state = TargetState.SUSPENDED
                else:
                    del self._targets[address]      # discovered, and no longer needed
                continue
            target.state = TargetState.WAITING
            if target.try_after is None or target.try_after > now:
                continue
            if self.conn_limit and busy >= self.conn_limit:
                target.last_error = f"Connection limit reached ({self.conn_limit})"
                target.try_later(now, self.rng)
                continue
            target.state = TargetState.ATTEMPTING
            target.attempt_started = now
            busy += 1
            dials.append(Dial(address, address in direct))
        return dials

    def next_deadline(self) -> float | None:
        """When refresh() next has a target to dial (without any news)."""
        times = [t.try_after for t in self._targets.values()
                 if t.state is TargetState.WAITING and t.try_after is not None]
        return min(times, default=None)

    def target(self, address: str) -> Target | None:
        return self._targets.get(address)

    # Status.

    def rows(self, now: float, wall_now: float | None = None) -> list[dict]:
        """Weave's LocalConnectionStatus for targets not connected (the live connections
        are the driver's); `wall_now` turns retry times into clock times."""
        wall_now = time.time() if wall_now is None else wall_now
        rows = []
        for address, target in sorted(self._targets.items()):
            if target.state is TargetState.WAITING:
                until = "never" if target.try_after is None else _clock(wall_now + target.try_after - now)
                if target.last_error is None:
                    state, info = "waiting", f"until: {until}"
                else:
                    state, info = "failed", f"{target.last_error}, retry: {until}"
            elif target.state is TargetState.ATTEMPTING:
                state, info = ("connecting", "") if target.last_error is None else ("retrying", target.last_error)
            else:
                continue
            rows.append({"Address": address, "Outbound": True, "State": state, "Info": info, "Attrs": None})
        return rows


def _clock(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def render_connection(row: dict) -> str:
    """One line of `status connections`, as the weave script prints it."""
    arrow = "->" if row["Outbound"] else "<-"
    attrs = " ".join(f"{key}={value}" for key, value in (row.get("Attrs") or {}).items() if key != "name")
    return f"{arrow} {row['Address']:<21} {row['State']:<11} {row['Info']} {attrs}".rstrip()
