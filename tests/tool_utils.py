"""Run the programs in ``tools/`` the way the docs do: ``python tools/<name>.py ...`` from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO_ROOT


def run_tool(*args: str) -> subprocess.CompletedProcess:
    """``python *args`` in the repository root without ``PYTHONPATH``, so that a tool finds the packages through the
    installation as a user's shell would; the caller checks the exit status and the output."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
