"""`make test`'s promise that the tests starting Flower run one at a time on one xdist worker.

Two things broke it silently before (both suites still passed, with Ray clusters running side by
side and module fixtures started once per worker): conftest's hook ran after xdist had read the
groups, and pytest 9.2 ignores the group xdist 3.8 writes into the node id (pytest-xdist#1386).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent

PROBE = """
def test_one():
    pass


def test_two():
    pass


def test_three():
    pass


def test_four():
    pass
"""


def test_end_to_end_tests_share_one_worker_under_make_tests_options(tmp_path: Path) -> None:
    # Prepare: the grouping hook of tests/conftest.py, an e2e module and a plain one beside it.
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n")
    (tmp_path / "test_probe_e2e.py").write_text(PROBE)
    (tmp_path / "test_probe_plain.py").write_text(PROBE)
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}

    # Execute
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )

    # Assert
    assert done.returncode == 0, done.stdout + done.stderr
    ran = re.findall(r"\[(gw\d)\] .*PASSED test_probe_(e2e|plain)\.py::", done.stdout)
    assert len(re.findall(r"PASSED test_probe_e2e\.py::test_\w+@flower", done.stdout)) == 4, done.stdout
    assert len({worker for worker, module in ran if module == "e2e"}) == 1, done.stdout
    # Both workers got work (xdist gives each one a unit first), so one worker for e2e is the grouping's doing.
    assert {worker for worker, _ in ran} == {"gw0", "gw1"}, done.stdout
