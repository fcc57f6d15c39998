"""The configs `bench/proxies.py` gives each candidate and the backends (docs/performance.md):
nginx, HAProxy and usher doing the same thing in each scenario's mode and profile. Pure text;
`tests/test_bench.py` runs them through `nginx -t`, `haproxy -c` and `usher check`.
"""

from __future__ import annotations

import os
import pwd
import resource
from pathlib import Path

SMALL_BODY = "hello, world\n"
# The features scenario: the header each balancer sets on answers, its persistence cookie, and a
# rate limit per client address high enough never to refuse a request of the run.
FEATURE_HEADER = ("X-Bench", "features")
COOKIE = "SRV"
RATE_PER_SECOND = 1_000_000
HEALTH_PATH = "/health"
NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def _nofile(maxconn: int) -> int:
    return min(2 * maxconn, resource.getrlimit(resource.RLIMIT_NOFILE)[1])


def _user() -> str:
    # Started by root, nginx would run its worker as nobody, who cannot read our temp dir.
    return f"user {pwd.getpwuid(os.getuid()).pw_name};" if os.geteuid() == 0 else ""


def backend_nginx_config(ports: list[int], work: Path) -> str:
    listens = "\n".join(f"        listen 127.0.0.1:{p} reuseport;" for p in ports)
    return f"""
{_user()}
worker_processes 1;
worker_rlimit_nofile 20000;
pid {work}/backends.pid;
error_log {work}/backends.err;
events {{ worker_connections 10000; }}
http {{
    access_log off;
{_temp_paths(work, "backends")}
    keepalive_requests 1000000;
    client_max_body_size 0;
    server {{
{listens}
        root {work}/www;
        location = / {{ return 200 "{SMALL_BODY.strip()}\\n"; }}
        location = /1m {{ }}
        location = /upload {{ return 200 "ok\\n"; }}
        location = {HEALTH_PATH} {{ return 200 "ok\\n"; }}
    }}
}}
"""


def _temp_paths(work: Path, name: str) -> str:
    return "\n".join(
        f"    {kind}_temp_path {work}/{name}-{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


def nginx_config(
    mode: str,
    port: int,
    backends: list[int],
    work: Path,
    profile: str = "plain",
    admin_port: int = 0,
    maxconn: int = 11_000,
) -> str:
    servers = "\n".join(f"        server 127.0.0.1:{b};" for b in backends)
    head = f"""
{f"load_module {NGINX_STREAM_MODULE};" if mode == "tcp" else ""}
{_user()}
worker_processes 1;
worker_rlimit_nofile {_nofile(maxconn)};
pid {work}/nginx.pid;
error_log {work}/nginx.err;
events {{ worker_connections {2 * maxconn}; }}
"""
    if mode == "tcp":
        return (
            head
            + f"""
stream {{
    upstream backends {{
{servers}
    }}
    server {{ listen 127.0.0.1:{port}; proxy_pass backends; }}
}}
"""
        )
    tls = mode in ("https", "h2")
    # `listen ... http2` and not `http2 on;`: that directive is nginx 1.25.1's (Debian 12 has 1.22).
    ssl = {"https": " ssl", "h2": " ssl http2"}.get(mode, "")
    certs = f"ssl_certificate {work}/cert.pem; ssl_certificate_key {work}/key.pem;" if tls else ""
    # The default format (combined), one write per line (no buffer=), as a default install logs.
    access_log = f"access_log {work}/nginx-access.log;" if profile == "log" else "access_log off;"
    features = profile == "features"
    return (
        head
        + f"""
http {{
    {access_log}
{_temp_paths(work, "nginx")}
    keepalive_requests 1000000;
    client_max_body_size 0;
    # Stream bodies both ways as HAProxy and usher do, never through temp files.
    proxy_request_buffering off;
    proxy_max_temp_file_size 0;
    map $http_upgrade $connection_upgrade {{ default ""; websocket upgrade; }}
    upstream backends {{
        {"least_conn;" if features else ""}
{servers}
        keepalive 64;
        keepalive_requests 1000000;
    }}
{_nginx_features(backends, admin_port) if features else ""}
    server {{
        listen 127.0.0.1:{port}{ssl};
        {certs}
        location / {{
            {_NGINX_FEATURE_LOCATION if features else "proxy_pass http://backends;"}
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_read_timeout 1h;
        }}
    }}
}}
"""
    )


# OSS nginx has no sticky cookie: the closest is a cookie naming the backend, set by hand on
# answers to clients that sent none (from the address least_conn picked), and a map from that
# cookie to a one-server upstream of that backend. No active health checks (passive only:
# max_fails=1 fail_timeout=10s, the defaults); stub_status is its stats page.
_NGINX_FEATURE_LOCATION = f"""limit_req zone=perip burst=1000 nodelay;
            proxy_pass http://$sticky_pool;
            proxy_hide_header {FEATURE_HEADER[0]};
            add_header {FEATURE_HEADER[0]} {FEATURE_HEADER[1]} always;
            add_header Set-Cookie $sticky_cookie;"""


def _nginx_features(backends: list[int], admin_port: int) -> str:
    pinned = "\n".join(
        f"    upstream s{i} {{ server 127.0.0.1:{b}; keepalive 16; keepalive_requests 1000000; }}"
        for i, b in enumerate(backends)
    )
    pools = " ".join(f"s{i} s{i};" for i in range(len(backends)))
    cookies = "\n".join(
        f'        "|127.0.0.1:{b}" "{COOKIE}=s{i}; Path=/; HttpOnly";'
        for i, b in enumerate(backends)
    )
    return f"""{pinned}
    limit_req_zone $binary_remote_addr zone=perip:10m rate={RATE_PER_SECOND}r/s;
    map $cookie_{COOKIE} $sticky_pool {{ default backends; {pools} }}
    # An empty value adds no header: the cookie goes only to clients that came without one.
    map "$cookie_{COOKIE}|$upstream_addr" $sticky_cookie {{
        default "";
{cookies}
    }}
    server {{
        listen 127.0.0.1:{admin_port};
        location / {{ stub_status; }}
    }}"""


def haproxy_config(
    mode: str,
    port: int,
    backends: list[int],
    work: Path,
    maxconn: int = 11_000,
    profile: str = "plain",
    admin_port: int = 0,
) -> str:
    features = profile == "features"
    check = " check inter 1s cookie s{i}" if features else ""
    servers = "\n".join(
        f"    server s{i} 127.0.0.1:{b}{check.format(i=i)}" for i, b in enumerate(backends)
    )
    # Its access log without syslog: raw lines to its standard output (a file here).
    log_global = "log stdout format raw local0" if profile == "log" else ""
    log_defaults = "log global\n    option httplog" if profile == "log" else ""
    alpn = " alpn h2,http/1.1" if mode == "h2" else ""
    tls = f" ssl crt {work}/combined.pem{alpn}" if mode in ("https", "h2") else ""
    http = mode != "tcp"
    return f"""
global
    nbthread 1
    maxconn {maxconn}
    # It reserves two descriptors per connection; idle clients need one. Run with the limit
    # there is instead of refusing to start.
    no strict-limits
    pidfile {work}/haproxy.pid
    {log_global}
    {f"stats socket {work}/haproxy.sock mode 600 level admin" if features else ""}
defaults
    {log_defaults}
    mode {"http" if http else "tcp"}
    timeout connect 5s
    timeout client 75s
    timeout server 60s
    timeout tunnel 1h
    {"timeout http-keep-alive 75s" if http else ""}
    {"option forwardfor" if http else ""}
    {"http-reuse always" if http else ""}
frontend bench
    bind 127.0.0.1:{port}{tls}
    {"http-request set-header X-Forwarded-Proto %[ssl_fc,iif(https,http)]" if http else ""}
{_HAPROXY_FRONTEND_FEATURES if features else ""}
    default_backend backends
backend backends
    balance {"leastconn" if features else "roundrobin"}
{_HAPROXY_BACKEND_FEATURES if features else ""}
{servers}
{_haproxy_stats(admin_port) if features else ""}
"""


_HAPROXY_FRONTEND_FEATURES = f"""\
    stick-table type ip size 100k expire 10s store http_req_rate(1s)
    http-request track-sc0 src
    http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt {RATE_PER_SECOND} }}
    http-response set-header {FEATURE_HEADER[0]} {FEATURE_HEADER[1]}"""
_HAPROXY_BACKEND_FEATURES = f"""    cookie {COOKIE} insert httponly
    option httpchk GET {HEALTH_PATH}"""


def _haproxy_stats(admin_port: int) -> str:
    return f"""listen stats
    bind 127.0.0.1:{admin_port}
    stats enable
    stats uri /
"""


def usher_config(
    mode: str,
    port: int,
    backends: list[int],
    work: Path,
    profile: str = "plain",
    admin_port: int = 0,
) -> str:
    """The listener and pool; the access log is `usher run`'s flag (start_candidate)."""
    protocol = {"ws": "http", "h2": "https"}.get(mode, mode)  # http2 is on by default on https
    features = profile == "features"
    lines = [f"admin: {{bind: 127.0.0.1:{admin_port}}}"] if features else []
    lines += [
        "listeners:",
        "  - name: bench",
        f"    bind: 127.0.0.1:{port}",
        f"    protocol: {protocol}",
    ]
    if features:
        name, value = FEATURE_HEADER
        lines += [
            f"    limits: {{rate: {RATE_PER_SECOND}/s}}",
            f"    routes: [{{pool: backends, response_headers: {{set: {{{name}: {value}}}}}}}]",
        ]
    else:
        lines.append("    pool: backends")
    if protocol == "https":
        lines.append(f"    tls: {{certificates: [{{cert: {work}/cert.pem, key: {work}/key.pem}}]}}")
    algorithm = "least_connections" if features else "round_robin"
    lines += ["pools:", "  backends:", f"    algorithm: {algorithm}"]
    if features:
        lines += [
            f"    health_check: {{type: http, interval: 1, path: {HEALTH_PATH}}}",
            f"    sticky: {{type: cookie, cookie: {COOKIE}}}",
        ]
    lines.append("    backends:")
    lines += [f"      - {{address: 127.0.0.1:{b}}}" for b in backends]
    return "\n".join(lines) + "\n"
