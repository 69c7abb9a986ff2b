"""The dependency direction of STYLE.md, checked by import-linter on every test run.

transplant (the science) imports no service code; app enqueues jobs by name and never imports the
task code; the client talks HTTP only, and it and the user commands need only the client's
dependencies; the demo does not import the command line; the tasks use the services, not the
repositories; tests and benchmarks never import each other (support/ holds what both use).
Contracts live in pyproject.toml ([tool.importlinter]).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Contracts: 9 kept, 0 broken" in proc.stdout
