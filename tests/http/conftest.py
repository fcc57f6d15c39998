"""Fixtures of these tests: TLS test servers."""

from tests.tls_helpers import tls_server

__all__ = ["tls_server"]
