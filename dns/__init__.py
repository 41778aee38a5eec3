"""weaveDNS: the embedded weave.local name server."""
