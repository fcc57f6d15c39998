"""The request head usher sends a backend: the target made origin-form and routed on, the
headers forwarded with what usher adds, sets and removes (and which of them a client's trailer
may not set behind its back)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from usher.http.headers import forward_request_headers, header_key
from usher.http.target import authority, request_target, with_host
from usher.http.upgrades import offers_h2c, with_h2c_settings

if TYPE_CHECKING:
    from usher.http.codec import Headers, Request
    from usher.http.downstream import ClientConnection
    from usher.http.listener import HttpListener
    from usher.http.screening import EdgeState
    from usher.routing import Route


def normalise_target(request: Request, client: ClientConnection) -> None:
    """Make the request's target origin-form with a normalised path, and its Host the one it
    is routed on, before anything reads them; raises ClientError (400) when it cannot be."""
    target, host = request_target(
        request.method,
        request.target,
        request.version,
        request.host,
        client.listener.encoded_slashes,
    )
    request.target = target
    if not host:  # HTTP/1.0 without Host: the address the client connected to
        host = authority(client.local or client.transport.get_extra_info("sockname"))
    if host != request.host:
        request.host = host
        request.headers = with_host(request.headers, host)


def upstream_headers(
    request: Request,
    client: ClientConnection,
    route: Route,
    edge: EdgeState | None,
    *,
    upgrade: bytes | None,
    real_ip: bytes,
    drop_expect: bool,
) -> Headers:
    """The request's headers as the backend gets them: hop-by-hop gone, X-Forwarded-*, the
    client certificate's subject, the route's rules and the edge's own headers."""
    listener = client.listener
    headers = forward_request_headers(
        request.headers,
        version=request.version,
        host=request.host,
        client_ip=client.client_ip,
        scheme=listener.scheme,
        chunked=request.chunked,
        upgrade=upgrade,
        content_length=request.content_length,
        real_ip=real_ip,
    )
    if offers_h2c(upgrade):
        headers = with_h2c_settings(headers, request.headers)
    cert_strip = listener.cert_strip
    if cert_strip is not None:
        # Only usher says who the client certificate names: a client's own copy goes,
        # under any spelling a backend would read as the same name.
        n = len(cert_strip)
        headers = [h for h in headers if len(h[0]) != n or header_key(h[0]) != cert_strip]
        cert_header = listener.cert_header
        if cert_header is not None and client.cert_subject is not None:
            headers.append((cert_header, client.cert_subject))
    if route.request_rules is not None:
        headers = route.request_rules.apply(headers)
    if edge is not None and edge.request_headers:
        headers += edge.request_headers
    if drop_expect:
        # The body rules read the body before a backend is chosen, so no backend can say
        # 100 Continue: usher says it, and the backend gets the body without the Expect.
        headers = [h for h in headers if len(h[0]) != 6 or h[0].lower() != b"expect"]
    return headers


def controlled_names(
    listener: HttpListener, edge: EdgeState | None, route: Route | None
) -> frozenset[bytes]:
    """The header names usher sets or removes on this request (besides the ones it always
    does): a client's trailer must not set them behind its back."""
    names = [listener.cert_strip] if listener.cert_strip is not None else []
    if edge is not None:
        names.extend(name for name, _ in edge.request_headers)
    if route is not None and route.request_rules is not None:
        names.extend(route.request_rules.drop)
    return frozenset(header_key(name) for name in names)
