"""The HTTP/1.1 reverse proxy's import face: the listener (`http/listener.py`), the downstream
Protocol (`http/downstream.py`) and the exchange of one request (`http/exchange.py`) live in
their own modules; this keeps the names other code imports from `usher.http.proxy`."""

from __future__ import annotations

from usher.http.downstream import ClientConnection
from usher.http.exchange import Exchange
from usher.http.listener import HttpListener

__all__ = ["ClientConnection", "Exchange", "HttpListener"]
