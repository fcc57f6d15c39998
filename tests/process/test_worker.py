"""A worker process starts light: it serves, so it does not load the control plane's admin API."""

from __future__ import annotations

import os
import subprocess
import sys


def test_a_worker_imports_neither_the_admin_api_nor_the_control_plane() -> None:
    probe = (
        "import sys, usher.process.worker; "
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'usher.runtime.controlplane', "
        "'usher.admin.api') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "USHER_PURE": "1"},
        check=True,
    )
    assert out.stdout.strip() == "[]"  # each costs every worker's start (a second under load)


def test_the_worker_runs_by_module_path_and_says_how() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "usher.process.worker"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 1
    assert "usage: python -m usher.process.worker CHANNEL_FD" in out.stderr
