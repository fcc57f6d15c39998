"""An A/B hook by cookie: a share of new visitors goes to the B backends, and stays there.

A visitor without the cookie is assigned `a` or `b` (`split` percent to b) and gets the cookie
with the answer; one with it keeps its group. Group b's requests go to the `b` backends only,
group a's to the others. Use it with (ab.yaml):

    python_path: [.]
    listeners:
      - name: web
        bind: 127.0.0.1:8080
        hooks:
          - use: "ab:ABTest"
            options: {cookie: ab, split: 10, b: ["127.0.0.1:9003"]}
        pool: web
"""

from __future__ import annotations

import random
from typing import Any

from usher.hooks import Candidate, Request, ResponseHead

GROUPS = ("a", "b")
MAX_AGE = 30 * 24 * 3600  # a month: long enough for the test to end


class ABTest:
    def __init__(self, options: dict[str, Any]) -> None:
        self.cookie = str(options.get("cookie", "ab"))
        self.split = float(options.get("split", 10))
        if not 0 <= self.split <= 100:
            raise ValueError(f"options.split is a percentage, 0..100, not {self.split}")
        self.b = set(map(str, options.get("b", ())))
        if not self.b:
            raise ValueError("options.b must list the addresses of the B backends")
        self.random = random.Random(options.get("seed"))

    def on_request(self, request: Request) -> None:
        group = request.cookie(self.cookie)
        if group not in GROUPS:
            group = "b" if self.random.random() * 100 < self.split else "a"
            request.state["new_group"] = group
        request.state["group"] = group

    def select(self, request: Request, candidates: list[Candidate]) -> list[Candidate]:
        in_b = request.state["group"] == "b"
        return [c for c in candidates if (c.address in self.b) == in_b]

    def on_response(self, request: Request, response: ResponseHead) -> None:
        group = request.state.get("new_group")
        if group is not None:
            response.add_header(
                "Set-Cookie",
                f"{self.cookie}={group}; Path=/; Max-Age={MAX_AGE}; HttpOnly; SameSite=Lax",
            )
        response.set_header("X-AB-Group", request.state["group"])
