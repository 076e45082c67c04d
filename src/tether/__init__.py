"""Tether: an actor-based, in-memory session engine for remote-machine agents."""

__version__ = "0.1.0"
