"""Ostium: a sidecar-less, identity-aware service mesh."""

__version__ = "0.1.0"
