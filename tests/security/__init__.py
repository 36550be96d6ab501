"""Attacks on the node's trust, one test per attack, named after what it tries."""
