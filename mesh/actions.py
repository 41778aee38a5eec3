"""What the mesh core asks its driver to do (drained with MeshCore.drain()).

Kept apart from mesh/core.py so the gossip router can queue them too; core.py
re-exports them, and `from weavepy.mesh.core import Send` is how drivers name them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable


@dataclass(frozen=True)
class Send:
    conn_id: Hashable
    tag: int
    payload: bytes


@dataclass(frozen=True)
class Close:
    """Send `reason` as a Goodbye, then close the connection."""
    conn_id: Hashable
    reason: str


@dataclass(frozen=True)
class PeerGone:
    """A peer was garbage-collected from the topology: overlays drop its kernel state."""
    name: str


@dataclass(frozen=True)
class TopologyChanged:
    """Peers, connections or routes changed (at most one per drain): refresh targets, overlays, status."""
