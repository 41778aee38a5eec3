"""The mesh: peer identity, connections, topology and the gossip channel."""
