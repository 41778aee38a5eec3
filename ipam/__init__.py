"""IP address management: the cluster-wide ring, this peer's space, and the allocator (all sans-IO)."""
