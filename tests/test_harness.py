"""The test suite's own harness (conftest.py)."""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT


def test_the_suite_s_exit_status_is_pytest_s() -> None:
    """conftest.py ends pytest's process itself (past a crash in the interpreter's finalization): with pytest's status,
    here 5, no test selected."""
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "tests/test_harness.py", "-k", "no_test_is_named_so"], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 5, done.stdout[-2000:]
