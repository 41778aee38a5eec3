"""Agreeing on the peers that first divide the IPAM ring: single-decree Paxos over gossip (sans-IO).

As Weave's ipam/paxos: every elector is proposer, acceptor and learner; the state
of every node it has heard of travels whole in each message, and merging two
copies keeps, per node, the later promise and the later acceptance.  A node is
(peer name, peer UID): the UID is new on every start, so a restarted peer is a
new acceptor and no promise needs persisting.  The agreed value is a list of
peer names, which `Ring.claim_for_peers` turns into the same ring everywhere.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

NodeID = tuple[str, int]                 # (peer name, UID)
ProposalID = tuple[int, str, int]        # (round, proposer name, proposer UID): compared in that order
NO_PROPOSAL: ProposalID = (0, "", 0)


@dataclass(frozen=True)
class Claims:
    """What one node has promised and accepted."""
    promise: ProposalID = NO_PROPOSAL
    accepted: ProposalID = NO_PROPOSAL
    value: tuple[str, ...] | None = None     # the value accepted with `accepted`


class Paxos:
    def __init__(self, me: NodeID, quorum: int = 0):
        self.me = me
        self.quorum = quorum           # 0: not standing (never detects consensus; learns the ring by gossip)
        self.knows: dict[NodeID, Claims] = {me: Claims()}

    def update(self, incoming: dict[NodeID, Claims]) -> bool:
        """Merge another node's view; whether anything was new."""
        changed = False
        for node, theirs in incoming.items():
            ours = self.knows.get(node)
            if ours is None:
                self.knows[node] = theirs
                changed = True
                continue
            merged = ours
            if theirs.promise > merged.promise:
                merged = replace(merged, promise=theirs.promise)
            if theirs.accepted > merged.accepted:
                merged = replace(merged, accepted=theirs.accepted, value=theirs.value)
            if merged != ours:
                self.knows[node] = merged
                changed = True
        return changed

    def propose(self) -> None:
        top = max(c.promise[0] for c in self.knows.values())
        self.knows[self.me] = replace(self.knows[self.me], promise=(top + 1, *self.me))
        self.think()

    def think(self) -> bool:
        """Take the steps the known state allows; whether our own claims changed."""
        before = mine = self.knows[self.me]
        highest = max(c.promise for c in self.knows.values())
        if highest > mine.promise:                               # promise the highest proposal seen
            mine = self.knows[self.me] = replace(mine, promise=highest)
        if self.quorum and mine.promise[1:] == self.me and mine.accepted != mine.promise:
            promised = [c for c in self.knows.values() if c.promise == mine.promise]
            if len(promised) >= self.quorum:                     # our proposal has a quorum: accept it
                prior = max((c for c in promised if c.value is not None), key=lambda c: c.accepted, default=None)
                value = prior.value if prior is not None else self.pick_value()
                mine = self.knows[self.me] = replace(mine, accepted=mine.promise, value=value)
        if mine.accepted != mine.promise:                        # someone accepted what we promised
            for node, c in self.knows.items():
                if node != self.me and c.accepted == mine.promise and c.value is not None:
                    mine = self.knows[self.me] = replace(mine, accepted=c.accepted, value=c.value)
                    break
        return mine != before

    def pick_value(self) -> tuple[str, ...]:
        """A fresh value: every peer we know of that takes part (Weave's pickValue)."""
        return tuple(sorted({name for name, _ in self.knows}))

    def consensus(self) -> tuple[str, ...] | None:
        """The agreed peer list, once a quorum accepted one proposal; None before (or if not standing)."""
        if not self.quorum:
            return None
        counts = Counter(c.accepted for c in self.knows.values() if c.value is not None)
        for proposal, n in counts.items():
            if n >= self.quorum:
                return next(c.value for c in self.knows.values() if c.accepted == proposal)
        return None

    # -- wire form (JSON-able) ------------------------------------------------

    def to_list(self) -> list:
        return [[name, uid, list(c.promise), list(c.accepted), list(c.value) if c.value is not None else None]
                for (name, uid), c in sorted(self.knows.items())]

    @staticmethod
    def from_list(rows) -> dict[NodeID, Claims]:
        """Raises ValueError on anything malformed."""
        if not isinstance(rows, list) or len(rows) > 4096:
            raise ValueError("paxos state is not a list of at most 4096 nodes")
        out: dict[NodeID, Claims] = {}
        for row in rows:
            if not (isinstance(row, list) and len(row) == 5 and isinstance(row[0], str) and type(row[1]) is int):
                raise ValueError("malformed paxos node")
            promise, accepted = _proposal(row[2]), _proposal(row[3])
            value = row[4]
            if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)
                                          and len(value) <= 4096):
                raise ValueError("malformed paxos value")
            out[(row[0], row[1])] = Claims(promise, accepted, tuple(value) if value is not None else None)
        return out


def _proposal(raw) -> ProposalID:
    if not (isinstance(raw, list) and len(raw) == 3 and type(raw[0]) is int and isinstance(raw[1], str)
            and type(raw[2]) is int and raw[0] >= 0):
        raise ValueError("malformed paxos proposal")
    return (raw[0], raw[1], raw[2])
