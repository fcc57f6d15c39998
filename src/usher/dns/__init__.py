"""Authoritative DNS for global load balancing: the `dns` listener."""
