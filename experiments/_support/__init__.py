"""Shared pieces of the experiments that have no ``main`` (not runnable on their own)."""
