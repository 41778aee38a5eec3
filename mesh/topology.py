"""The topology: every known peer and its connections, merged as Weave merges them (mesh/peers.go).

Entries about other peers are immutable values replaced whole when a newer
one arrives: newer means a higher (version, UID), so merging is a join --
commutative, associative, idempotent -- and every peer that has heard the
same entries holds the same table.  Our own entry changes only here, through
the local-connection methods, each bumping our version.

Names a winning entry mentions as connection endpoints but that never spoke
for themselves are *placeholders* (UID 0, version 0), as Weave's.  Peers no
longer reachable from us over any link are forgotten (the core decides when).

The wire form of an update (channel "topology"), all integers big-endian:

    u8 format (1)
    per peer:  name[6]  u8 len + nickname (UTF-8)  u64 uid  u64 version  u16 n
               n x (name[6]  u8 flags: 1 outbound, 2 established  u8 len + "ip:port")
"""
from __future__ import annotations

import functools
import ipaddress
import struct
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Mapping

from .codec import NAME_LEN, Reader, name_to_bytes, short_text
from .wire import ProtocolError

FORMAT = 1
# Weave's ShortID is 12 bits (mesh/peer.go), so fastdp cannot address more
# peers than this: a bound on how many entries any update can make us hold.
MAX_PEERS = 4096
# A peer cannot be connected to more peers than a mesh can hold.
MAX_PEER_CONNECTIONS = MAX_PEERS - 1
# Updates are split into messages of about this size: well under the 10 MiB
# frame limit (maxTCPMsgSize, mesh/protocol.go) even for the largest mesh.
MESSAGE_SIZE = 1 << 20
_FLAG_OUTBOUND, _FLAG_ESTABLISHED = 1, 2


@dataclass(frozen=True)
class ConnSummary:
    """One connection as its owner gossips it (connectionSummary)."""
    address: str          # the remote's TCP address "ip:port" as the owner sees it
    outbound: bool
    established: bool


@dataclass(frozen=True)
class PeerInfo:
    name: str
    nickname: str
    uid: int              # 0: a placeholder, heard of only as someone's connection
    version: int
    connections: Mapping[str, ConnSummary] = field(default_factory=dict)

    @property
    def placeholder(self) -> bool:
        return self.uid == 0


@functools.lru_cache(maxsize=4096)   # the same addresses come round in every gossip
def valid_address(address: str) -> bool:
    """'ip:port' or '[ipv6]:port'."""
    host, sep, port = address.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or len(port) > 5 or int(port) > 65535:
        return False
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _encode_peer(peer: PeerInfo) -> bytes:
    parts = [name_to_bytes(peer.name), short_text(peer.nickname, "nickname"),
             struct.pack(">QQH", peer.uid, peer.version, len(peer.connections))]
    for remote, conn in sorted(peer.connections.items()):
        flags = (_FLAG_OUTBOUND if conn.outbound else 0) | (_FLAG_ESTABLISHED if conn.established else 0)
        parts += [name_to_bytes(remote), bytes([flags]), short_text(conn.address, "address")]
    return b"".join(parts)


def encode_peers(peers: Iterable[PeerInfo], message_size: int = MESSAGE_SIZE,
                 encode: Callable[[PeerInfo], bytes] = _encode_peer) -> list[bytes]:
    """Whole peer entries packed into messages of about `message_size` bytes; none when `peers` is empty."""
    header = bytes([FORMAT])
    messages, current, size = [], [header], 1
    for peer in peers:
        record = encode(peer)
        if len(current) > 1 and size + len(record) > message_size:
            messages.append(b"".join(current))
            current, size = [header], 1
        current.append(record)
        size += len(record)
    if len(current) > 1:
        messages.append(b"".join(current))
    return messages


def decode_peers(data: bytes, stale: Callable[[str, int, int], bool] | None = None) -> list[PeerInfo]:
    """Parse and check one update; raises ProtocolError, and nothing else, on any malformed input.

    `stale(name, uid, version)` says an entry cannot win (we hold it or a newer one): its
    connections are stepped over, not decoded.  Gossip brings each entry many times over, by
    every path, so this is most of the work of a mesh that is forming.
    """
    reader = Reader(data)
    if (fmt := reader.u8("topology format")) != FORMAT:
        raise ProtocolError(f"unknown topology format {fmt}")
    peers: list[PeerInfo] = []
    seen: set[str] = set()
    while reader.remaining:
        if len(peers) == MAX_PEERS:
            raise ProtocolError(f"topology update with more than {MAX_PEERS} peers")
        name = reader.name()
        if name in seen:
            raise ProtocolError(f"peer {name} twice in one topology update")
        seen.add(name)
        nickname = reader.short_text("nickname")
        uid, version, count = reader.u64("uid"), reader.u64("version"), reader.u16("connection count")
        if uid == 0:
            raise ProtocolError(f"peer {name} with UID 0 (reserved for placeholders)")
        if count > MAX_PEER_CONNECTIONS:
            raise ProtocolError(f"peer {name} lists {count} connections, more than {MAX_PEER_CONNECTIONS}")
        if stale is not None and stale(name, uid, version):
            reader.skip_records(count, NAME_LEN + 1, "connection")   # name, flags, then the address
            continue
        connections: dict[str, ConnSummary] = {}
        for _ in range(count):
            remote = reader.name("connection's peer name")
            if remote == name or remote in connections:
                raise ProtocolError(f"peer {name} lists a connection to {remote} twice or to itself")
            flags = reader.u8("connection flags")
            if flags & ~(_FLAG_OUTBOUND | _FLAG_ESTABLISHED):
                raise ProtocolError(f"unknown connection flags {flags:#x}")
            address = reader.short_text("address")
            if not valid_address(address):
                raise ProtocolError(f"connection address {address!r} is not ip:port")
            connections[remote] = ConnSummary(address, bool(flags & _FLAG_OUTBOUND), bool(flags & _FLAG_ESTABLISHED))
        peers.append(PeerInfo(name, nickname, uid, version, connections))
    if not seen:
        raise ProtocolError("empty topology update")
    return peers


def _links(peer: PeerInfo) -> dict[str, bool]:
    """What routes are computed from (mesh/routes.go): the remote names and whether each is established."""
    return {remote: conn.established for remote, conn in peer.connections.items()}


@dataclass
class Merged:
    improved: set[str]                       # entries new or replaced: the only part worth passing on
    links_changed: bool = False              # a link appeared, went, or changed state: routes are stale
    ourself_bumped: bool = False             # we took a version beyond an entry about us: rebroadcast
    overtaken_by: list[PeerInfo] = field(default_factory=list)  # entries with our name, a foreign UID, ahead of us


class Topology:
    def __init__(self, name: str, nickname: str, uid: int):
        if uid == 0:
            raise ValueError("peer UID 0 is reserved for placeholders")
        self.name = name
        self.peers: dict[str, PeerInfo] = {name: PeerInfo(name, nickname, uid, 0)}
        self.clone_uids: set[int] = set()   # other live routers with our name: we stop racing their versions
        # Each entry is encoded once, not once per send: while a mesh forms, every entry goes
        # to every neighbour of every peer that hears of it.  Keyed by name, checked by identity
        # (entries are replaced, never changed in place).
        self._records: dict[str, tuple[PeerInfo, bytes]] = {}

    @property
    def ourself(self) -> PeerInfo:
        return self.peers[self.name]

    # -- our own entry ----------------------------------------------------

    def _set_ourself(self, connections: Mapping[str, ConnSummary]) -> None:
        me = self.ourself
        self.peers[self.name] = replace(me, version=me.version + 1, connections=connections)

    def add_local_connection(self, remote: str, nickname: str, uid: int, address: str, outbound: bool) -> None:
        known = self.peers.get(remote)
        if known is None or known.placeholder:
            # The handshake is the peer speaking for itself, at version 0 (Weave: fetchWithDefault).
            self.peers[remote] = PeerInfo(remote, nickname, uid, 0)
        self._set_ourself({**self.ourself.connections, remote: ConnSummary(address, outbound, False)})

    def set_local_established(self, remote: str) -> None:
        conn = self.ourself.connections[remote]
        if not conn.established:
            self._set_ourself({**self.ourself.connections, remote: replace(conn, established=True)})

    def remove_local_connection(self, remote: str) -> None:
        connections = dict(self.ourself.connections)
        if connections.pop(remote, None) is not None:
            self._set_ourself(connections)

    def set_version_beyond(self, version: int) -> bool:
        me = self.ourself
        if version < me.version:
            return False
        self.peers[self.name] = replace(me, version=version + 1)
        return True

    # -- merging -----------------------------------------------------------

    def apply_update(self, update: list[PeerInfo]) -> Merged:
        """Merge decoded entries.  Raises ProtocolError, changing nothing, if we would hold too many peers."""
        winners = [p for p in update if p.name != self.name and self._wins(p)]
        mentioned = {p.name for p in winners} | {r for p in winners for r in p.connections}
        unknown = sum(1 for n in mentioned if n not in self.peers)
        if len(self.peers) + unknown > MAX_PEERS:
            raise ProtocolError(f"topology update would take us past {MAX_PEERS} peers")
        merged = Merged(improved=set())
        for entry in update:
            if entry.name == self.name:
                self._about_ourselves(entry, merged)
        for entry in winners:
            known = self.peers.get(entry.name)
            merged.links_changed |= known is None or _links(known) != _links(entry)
            self.peers[entry.name] = entry
            merged.improved.add(entry.name)
        for name in mentioned:
            self.peers.setdefault(name, PeerInfo(name, "", 0, 0))
        return merged

    def _wins(self, entry: PeerInfo) -> bool:
        known = self.peers.get(entry.name)
        return known is None or (entry.version, entry.uid) > (known.version, known.uid)

    def is_stale(self, name: str, uid: int, version: int) -> bool:
        """An entry that would not win, and is not about us (those always need a look)."""
        known = self.peers.get(name)
        return name != self.name and known is not None and (version, uid) <= (known.version, known.uid)

    def _about_ourselves(self, entry: PeerInfo, merged: Merged) -> None:
        me = self.ourself
        if entry.uid in self.clone_uids or (entry.uid == me.uid and entry.version <= me.version):
            return
        # An old run of us (foreign UID), or somehow a newer copy of us: take a version beyond it
        # so our entry supersedes it everywhere (setVersionBeyond, mesh/peers.go).
        if entry.uid != me.uid and entry.version >= me.version:
            merged.overtaken_by.append(entry)
        merged.ourself_bumped |= self.set_version_beyond(entry.version)

    def unreachable(self, reached: Iterable[str]) -> set[str]:
        """The peers not in `reached` (the gossip routes' destinations and us)."""
        return set(self.peers) - set(reached) - {self.name}

    def forget(self, names: Iterable[str]) -> None:
        for name in names:
            if name != self.name:
                self.peers.pop(name, None)
                self._records.pop(name, None)

    def encode(self, names: Iterable[str]) -> list[bytes]:
        """The current entries of `names` (placeholders and forgotten names left out)."""
        entries = (self.peers.get(n) for n in sorted(set(names)))
        return encode_peers((p for p in entries if p is not None and not p.placeholder), encode=self._record)

    def _record(self, peer: PeerInfo) -> bytes:
        cached = self._records.get(peer.name)
        if cached is not None and cached[0] is peer:
            return cached[1]
        record = _encode_peer(peer)
        self._records[peer.name] = (peer, record)
        return record


class TopologyUpdate:
    """GossipData for channel "topology": a set of names, encoded from the table when sent.

    Encoding late means an update that waited in a connection's slot goes out
    with the newest entries, and merging two is a union (topologyGossipData).
    """

    def __init__(self, topology: Topology, names: Iterable[str]):
        self.topology = topology
        self.names = frozenset(names)

    def encode(self) -> list[bytes]:
        return self.topology.encode(self.names)

    def merge(self, other: "TopologyUpdate") -> "TopologyUpdate":
        return TopologyUpdate(self.topology, self.names | other.names)
