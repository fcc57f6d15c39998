"""A tenant-routing hook: each tenant's requests go to its own backends of the pool.

The tenant is named by a header (`X-Tenant: acme`) or, without one, by the Host; a request of
no known tenant is answered 404 here. Among the tenant's backends the pool's algorithm still
balances, and health, limits and retries still apply. Use it with (tenant.yaml):

    python_path: [.]
    listeners:
      - name: web
        bind: 127.0.0.1:8080
        hooks:
          - use: "tenant:Tenant"
            options:
              header: X-Tenant
              hosts: {acme.example.com: acme}
              tenants: {acme: ["127.0.0.1:9001", "127.0.0.1:9002"], globex: ["127.0.0.1:9003"]}
        pool: shared
"""

from __future__ import annotations

from typing import Any

from usher.hooks import Candidate, Request, Response


class Tenant:
    def __init__(self, options: dict[str, Any]) -> None:
        tenants = options.get("tenants")
        if not isinstance(tenants, dict) or not tenants:
            raise ValueError("options.tenants must map each tenant to its backends' addresses")
        self.tenants = {str(name): set(map(str, addresses)) for name, addresses in tenants.items()}
        self.header = str(options.get("header", "X-Tenant"))
        self.hosts = {str(h).lower(): str(t) for h, t in options.get("hosts", {}).items()}
        unknown = set(self.hosts.values()) - set(self.tenants)
        if unknown:
            raise ValueError(f"options.hosts names tenants with no backends: {sorted(unknown)}")

    def on_request(self, request: Request) -> Response | None:
        tenant = request.headers.get(self.header)
        if tenant is None:
            tenant = self.hosts.get(request.host.rsplit(":", 1)[0].lower())
        if tenant not in self.tenants:
            return Response(404, "unknown tenant\n", {"Content-Type": "text/plain"})
        request.state["tenant"] = tenant
        request.set_header(self.header, tenant)  # the backend sees the tenant however named
        return None

    def select(self, request: Request, candidates: list[Candidate]) -> list[Candidate]:
        mine = self.tenants[request.state["tenant"]]
        return [c for c in candidates if c.address in mine]
