"""Fresh Python processes: what a real user's process sees, with nothing imported from the tests."""

from __future__ import annotations

import os
import subprocess
import sys


def run_python(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python process (a real user's process: nothing imported from the tests)."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})}, timeout=600)
