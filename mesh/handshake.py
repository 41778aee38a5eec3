"""The control connection's handshake, sans-IO: version header, crypto flag, features.

As weaveworks/mesh does it (protocol.go, connection.go), both ends write at
once and read what the other wrote:

  1. the header: b"weave", our lowest and highest protocol version (a byte each);
     the version spoken is the highest both have;
  2. (version 2) one crypto flag byte: 0 = plaintext, 1 = NaCl session (later:
     it needs a password, spec section 4; the flag's place is kept so that an
     encrypting peer gets a clear refusal rather than garbage);
  3. the features message, length-prefixed like every message after it: a JSON
     object of strings (Weave uses Go gob; a pure-Python mesh keeps the fields).

Feed received bytes to `receive_data`; write what `data_to_send` returns.  When
`state` is DONE, `remote` says who is at the other end and `trailing` holds
bytes that already belong to the message stream (mesh/framing.py).  Bad input
raises HandshakeError and leaves the handshake FAILED.  The driver applies the
10 s deadline.
"""
from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from . import peer_name
from .framing import LENGTH, frame
from .wire import ProtocolError

MAGIC = b"weave"
HEADER_SIZE = len(MAGIC) + 2
# Version 1 is Weave's gob stream with the public key in the features; we
# never spoke it, so we only offer 2 (mesh's protocolMaxVersion).
MIN_VERSION = 2
MAX_VERSION = 2

CRYPTO_NONE = 0
CRYPTO_NACL = 1

# Features are a few hundred bytes.  A peer we know nothing about yet should not
# make us buffer the 10 MiB a message may otherwise have.
FEATURES_LIMIT = 64 * 1024
NICKNAME_LIMIT = 255              # a hostname is at most 253 characters (RFC 1035)
OVERLAY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
DECIMAL_U64 = re.compile(r"[0-9]{1,20}")
FLAVOUR = "mac"                   # mesh/peer_name_mac.go; the only flavour we have

# Features this handshake owns; an overlay may add others, never these.
ROUTER_FEATURES = ("PeerNameFlavour", "Name", "NickName", "UID", "ConnID", "Overlays", "Trusted")
REQUIRED_FEATURES = ("PeerNameFlavour", "Name", "NickName", "UID", "ConnID")


class HandshakeError(ProtocolError):
    """The handshake failed; the text is what `status connections` shows."""


class State(enum.Enum):
    AWAIT_HEADER = "awaiting the version header"
    AWAIT_CRYPTO_FLAG = "awaiting the crypto flag"
    AWAIT_FEATURES = "awaiting the features"
    DONE = "done"
    FAILED = "failed"


# What can arrive from the peer, in the order it must arrive.
@dataclass(frozen=True)
class Header:
    min_version: int
    max_version: int


@dataclass(frozen=True)
class CryptoFlag:
    flag: int


@dataclass(frozen=True)
class Features:
    features: dict


@dataclass(frozen=True)
class Failure:
    reason: str


# (state, event) -> next state.  Anything not here is a bug in this module.
TRANSITIONS: dict[tuple[State, type], State] = {
    (State.AWAIT_HEADER, Header): State.AWAIT_CRYPTO_FLAG,
    (State.AWAIT_CRYPTO_FLAG, CryptoFlag): State.AWAIT_FEATURES,
    (State.AWAIT_FEATURES, Features): State.DONE,
    (State.AWAIT_HEADER, Failure): State.FAILED,
    (State.AWAIT_CRYPTO_FLAG, Failure): State.FAILED,
    (State.AWAIT_FEATURES, Failure): State.FAILED,
}


@dataclass(frozen=True)
class Remote:
    """The peer at the other end, as its features describe it."""
    version: int
    name: str
    nickname: str
    uid: int
    conn_id: int
    conn_uid: int                   # our ConnID XOR theirs: the same on both ends
    overlays: tuple[str, ...]
    trusted: bool                   # the peer trusts us (its --trusted-subnets)
    features: Mapping[str, str] = field(default_factory=dict)


class Handshake:
    def __init__(self, name: str, nickname: str, uid: int, conn_id: int, *,
                 overlays: Sequence[str] = (), trusted: bool = False,
                 features: Mapping[str, str] | None = None,
                 versions: tuple[int, int] = (MIN_VERSION, MAX_VERSION)):
        extra = dict(features or {})
        clash = sorted(set(extra) & set(ROUTER_FEATURES))
        if clash:
            raise ValueError(f"features {clash} are the router's own")
        self.versions = versions
        self.conn_id = conn_id
        self.features = {**extra, "PeerNameFlavour": FLAVOUR, "Name": name, "NickName": nickname,
                         "UID": str(uid), "ConnID": str(conn_id), "Overlays": " ".join(overlays),
                         "Trusted": "true" if trusted else "false"}
        self.state = State.AWAIT_HEADER
        self.version: int | None = None
        self.remote: Remote | None = None
        self.error: str | None = None
        self.trailing = b""
        self._in = bytearray()
        self._out = bytearray(MAGIC + bytes(versions))

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> None:
        if self.state is State.DONE:
            self.trailing += data
            return
        if self.state is State.FAILED:
            raise HandshakeError(self.error)
        self._in += data
        try:
            while self.state in _READERS:
                event = _READERS[self.state](self)
                if event is None:
                    return
                _HANDLERS[type(event)](self, event)
                self._transition(event)
        except HandshakeError as exc:
            self.error = str(exc)
            self._in.clear()
            self._transition(Failure(self.error))
            raise
        self.trailing = bytes(self._in)
        self._in.clear()

    def _transition(self, event) -> None:
        self.state = TRANSITIONS[(self.state, type(event))]

    # Readers: the next event if the buffer holds all of it, else None.

    def _read_header(self) -> Header | None:
        if len(self._in) < HEADER_SIZE:
            return None
        head = bytes(self._in[:HEADER_SIZE])
        del self._in[:HEADER_SIZE]
        if head[:len(MAGIC)] != MAGIC:
            raise HandshakeError(f"remote protocol header not recognised: {head[:len(MAGIC)]!r}")
        return Header(head[len(MAGIC)], head[len(MAGIC) + 1])

    def _read_crypto_flag(self) -> CryptoFlag | None:
        if not self._in:
            return None
        flag = self._in[0]
        del self._in[:1]
        return CryptoFlag(flag)

    def _read_features(self) -> Features | None:
        if len(self._in) < LENGTH.size:
            return None
        (length,) = LENGTH.unpack_from(self._in)
        if length > FEATURES_LIMIT:
            raise HandshakeError(f"features message too long: {length} bytes (limit {FEATURES_LIMIT})")
        if len(self._in) < LENGTH.size + length:
            return None
        body = bytes(self._in[LENGTH.size:LENGTH.size + length])
        del self._in[:LENGTH.size + length]
        return Features(decode_features(body))

    # Handlers: check the event and queue what we send next.

    def _on_header(self, header: Header) -> None:
        ours_min, ours_max = self.versions
        version = min(ours_max, header.max_version)
        if max(ours_min, header.min_version) > version:
            raise HandshakeError(f"remote version range [{header.min_version},{header.max_version}] "
                                 f"is incompatible with ours [{ours_min},{ours_max}]")
        self.version = version
        self._out += bytes((CRYPTO_NONE,)) + frame(encode_features(self.features))

    def _on_crypto_flag(self, event: CryptoFlag) -> None:
        if event.flag == CRYPTO_NACL:
            raise HandshakeError("peer requested an encrypted connection, but no password was given")
        if event.flag != CRYPTO_NONE:
            raise HandshakeError(f"bad encryption flag {event.flag}")

    def _on_features(self, event: Features) -> None:
        self.remote = remote_from_features(event.features, self.version, self.conn_id)


_READERS = {
    State.AWAIT_HEADER: Handshake._read_header,
    State.AWAIT_CRYPTO_FLAG: Handshake._read_crypto_flag,
    State.AWAIT_FEATURES: Handshake._read_features,
}
_HANDLERS = {
    Header: Handshake._on_header,
    CryptoFlag: Handshake._on_crypto_flag,
    Features: Handshake._on_features,
}


def encode_features(features: Mapping[str, str]) -> bytes:
    return json.dumps(dict(features), sort_keys=True, separators=(",", ":")).encode()


def _no_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise HandshakeError(f"feature {key[:40]!r} given twice")
        seen[key] = value
    return seen


def decode_features(body: bytes) -> dict[str, str]:
    """A JSON object whose keys and values are all strings; anything else is refused."""
    try:
        features = json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, HandshakeError):
            raise
        raise HandshakeError(f"features are not a JSON object: {exc}") from None
    except RecursionError:
        raise HandshakeError("features are not a JSON object: nested too deeply") from None
    if not isinstance(features, dict):
        raise HandshakeError("features are not a JSON object")
    for key, value in features.items():
        if not isinstance(value, str):
            raise HandshakeError(f"feature {key[:40]!r} is not a string")
        # Features end up in logs and status: no control characters or lone surrogates.
        if not key or not key.isprintable() or not value.isprintable():
            raise HandshakeError(f"feature {key[:40]!r} has unprintable characters")
    return features


def _decimal_u64(features: Mapping[str, str], key: str) -> int:
    text = features[key]
    if not DECIMAL_U64.fullmatch(text) or int(text) >= 1 << 64:
        raise HandshakeError(f"feature {key} is not a 64-bit decimal number: {text!r}")
    return int(text)


def remote_from_features(features: Mapping[str, str], version: int, our_conn_id: int) -> Remote:
    for key in REQUIRED_FEATURES:
        if key not in features:
            raise HandshakeError(f"Field {key} is missing")   # mesh connection.go's words
    if features["PeerNameFlavour"] != FLAVOUR:
        raise HandshakeError(f"Peer name flavour mismatch (ours: '{FLAVOUR}', theirs: "
                             f"'{features['PeerNameFlavour']}')")
    try:
        name = peer_name.parse(features["Name"])
    except peer_name.PeerNameError as exc:
        raise HandshakeError(f"feature Name: {exc}") from None
    nickname = features["NickName"]
    if not 0 < len(nickname) <= NICKNAME_LIMIT or not nickname.isprintable():
        raise HandshakeError(f"feature NickName is not a printable name of 1 to {NICKNAME_LIMIT} "
                             f"characters: {nickname[:NICKNAME_LIMIT]!r}")
    uid = _decimal_u64(features, "UID")
    if uid == 0:
        raise HandshakeError("feature UID is 0 (reserved for peers known only by name)")
    conn_id = _decimal_u64(features, "ConnID")
    overlays = []
    for overlay in features.get("Overlays", "").split():
        if not OVERLAY_NAME.fullmatch(overlay):
            raise HandshakeError(f"feature Overlays names an invalid overlay: {overlay[:40]!r}")
        if overlay not in overlays:
            overlays.append(overlay)
    trusted = features.get("Trusted", "false")
    if trusted not in ("true", "false"):
        raise HandshakeError(f"feature Trusted is neither true nor false: {trusted[:40]!r}")
    return Remote(version=version, name=name, nickname=nickname, uid=uid, conn_id=conn_id,
                  conn_uid=our_conn_id ^ conn_id, overlays=tuple(overlays), trusted=trusted == "true",
                  features=dict(features))
