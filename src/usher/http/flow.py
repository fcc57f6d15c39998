"""Why a client connection stops reading: the reasons, shared by the downstream Protocol and the
exchange that asks it to. Reading resumes when no reason is left."""

from __future__ import annotations

BLOCK_UPSTREAM_FULL = 1  # the backend is not taking the body as fast as the client sends it
BLOCK_BUFFERING = 2  # body bytes wait for a backend connection
BLOCK_PIPELINE = 4  # a pipelined request waits for the one before it
BLOCK_UPGRADE = 8  # an upgrade request waits for the backend's answer
