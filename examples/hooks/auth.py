"""A header-auth hook: 401 unless the request carries one of the configured API keys.

The key is compared in constant time and removed before the request is forwarded (the backend
never sees it); the backend gets the key's name instead, in `X-Client`. Keys come from the
options or from a file of `name: key` lines (kept out of the config). Use it with (auth.yaml):

    python_path: [.]
    listeners:
      - name: api
        bind: 127.0.0.1:8080
        hooks:
          - use: "auth:HeaderAuth"
            options: {header: X-Api-Key, keys: {alice: "s3cret-a", bob: "s3cret-b"}}
        pool: api
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from usher.hooks import Request, Response


class HeaderAuth:
    def __init__(self, options: dict[str, Any]) -> None:
        keys: dict[str, str] = {str(k): str(v) for k, v in options.get("keys", {}).items()}
        keys_file = options.get("keys_file")
        if keys_file is not None:
            for line in Path(keys_file).read_text().splitlines():
                name, sep, key = line.partition(":")
                if sep and name.strip() and not name.lstrip().startswith("#"):
                    keys[name.strip()] = key.strip()
        if not keys:
            raise ValueError("options.keys (or keys_file) must give at least one key")
        self.keys = [(name, key.encode()) for name, key in keys.items()]
        self.header = str(options.get("header", "X-Api-Key"))
        self.realm = str(options.get("realm", "api"))

    def on_request(self, request: Request) -> Response | None:
        given = (request.headers.get(self.header) or "").encode("latin-1")
        # Every key is compared, so the time taken says nothing of which one came close.
        matches = [name for name, key in self.keys if hmac.compare_digest(given, key)]
        if not given or not matches:
            challenge = f'ApiKey realm="{self.realm}", header="{self.header}"'
            return Response(401, "a valid API key is required\n", {"WWW-Authenticate": challenge})
        request.remove_header(self.header)
        request.set_header("X-Client", matches[0])
        return None
