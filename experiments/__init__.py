"""Runnable scenarios: ``python -m experiments.NAME --help``."""
