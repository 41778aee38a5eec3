"""Name clashes: two live routers with one peer name, usually VMs cloned with one /etc/machine-id.

The core finds them three ways (mesh/core.py):
- a handshake from our own name with another UID: the clone dialled us, or we it;
- at a third peer already connected to one clone when the other arrives: the
  old connection still answers a probe, so it is no restart; both clones are
  told in a CLASH message (a `Clash` as JSON);
- far apart, in gossip: our name with a foreign UID keeps overtaking the
  version we took beyond it (`CloneWatch`).  Weave never notices this case and
  the two race their versions up forever.
Every message is one line that names the peer, both nicknames, and the fix.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .wire import ProtocolError

CLASH_PREFIX = "peer name collision"
_REGENERATE = ("the hosts were probably cloned with the same /etc/machine-id. On one of them run: "
               "rm -f /etc/machine-id /var/lib/dbus/machine-id && systemd-machine-id-setup "
               "&& weavepy reset && weavepy launch <its usual arguments>")
REPORT_SIZE = 4096   # a CLASH message is one short JSON object
# A dead run of us can overtake our version only with updates still in flight,
# which settle well within CLONE_SPAN; a live clone answers every bump, indefinitely.
CLONE_OVERTAKES = 10
CLONE_SPAN = 10.0
WATCHED_UIDS = 16    # foreign UIDs followed at once (gossip can name any number)


@dataclass(frozen=True)
class Clash:
    """Two live routers share one peer name."""
    name: str
    nicknames: tuple[str, str]
    address: str          # where the other clone was seen (ip:port), as far as we know
    message: str          # the full text users see; names machine-id and how to regenerate it


def who(name: str, nickname: str, address: str = "", label: str = "") -> str:
    """'local "aa:..(host1)" at 10.0.0.1:6783', as Weave's Peer.String with a label and a place."""
    where = f" at {address}" if address else ""
    return f'{label}"{name}({nickname})"{where}'


def clash_message(first: str, second: str, context: str = "") -> str:
    return f"{CLASH_PREFIX}: {first} and {second}{context} have the same peer name; {_REGENERATE}"


def is_clash(reason: str) -> bool:
    """A Goodbye reason or refusal that means "never retry this target"."""
    return reason.startswith(CLASH_PREFIX)


def encode_report(clash: Clash) -> bytes:
    return json.dumps(asdict(clash)).encode()


def decode_report(payload: bytes, our_name: str) -> Clash:
    """A CLASH message about us; ProtocolError if it is anything else."""
    if len(payload) > REPORT_SIZE:
        raise ProtocolError("clash report too long")
    try:
        report = json.loads(payload)
    except (ValueError, RecursionError):
        raise ProtocolError("clash report is not JSON") from None
    if not isinstance(report, dict):
        raise ProtocolError("clash report is not an object")
    nicknames, address, message = report.get("nicknames"), report.get("address"), report.get("message")
    if (report.get("name") != our_name or not isinstance(nicknames, list) or len(nicknames) != 2
            or not all(isinstance(n, str) for n in nicknames) or not isinstance(address, str)
            or not isinstance(message, str) or not is_clash(message)):
        raise ProtocolError("clash report without our name, two nicknames, an address and a message")
    return Clash(our_name, (nicknames[0], nicknames[1]), address, message)


class CloneWatch:
    """Counts, per foreign UID, how often gossip about us with that UID overtook our version."""

    def __init__(self):
        self._overtaken: dict[int, tuple[float, int]] = {}   # uid -> (first overtake, count)

    def overtaken(self, uid: int, now: float) -> bool:
        """Record one overtake; True once it is clear that `uid` is a live clone."""
        first, count = self._overtaken.pop(uid, (now, 0))
        self._overtaken[uid] = (first, count + 1)
        while len(self._overtaken) > WATCHED_UIDS:
            del self._overtaken[next(iter(self._overtaken))]
        # The core then stops racing `uid` (Topology.clone_uids), so no more overtakes come for it.
        return count + 1 >= CLONE_OVERTAKES and now - first >= CLONE_SPAN
