"""weavepy: Weave Net's Docker multi-host networking, in Python."""
__version__ = "0.1.0"
