"""The single source of cloudpool's version (read by setup.cfg and the version handshake)."""
__version__ = "0.1.0"
