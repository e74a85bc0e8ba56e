"""The suite's own pytest configuration: a failing test is named, never an INTERNALERROR.

`filterwarnings = error` turns a warning raised outside any test (in a plugin's hook) into
pytest's INTERNALERROR, which ends the run without naming the failing test. mypy_extensions
warns when its deprecated attributes are touched; the configuration ignores that warning,
and only that one.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from typing import TYPE_CHECKING

from conftest import ROOT

if TYPE_CHECKING:
    from pathlib import Path

# Touches mypy_extensions' deprecated attribute from a collection hook, the hook in which
# hypothesis's plugin starts its work (it scans the loaded modules there).
CONFTEST = """
import mypy_extensions

def pytest_collection_modifyitems(items):
    mypy_extensions.NoReturn
"""

TESTS = """
import warnings

from hypothesis import given, strategies as st


@given(st.integers())
def test_fails_on_purpose(x):
    assert x < 10


def test_other_deprecations_still_fail():
    warnings.warn("something else is deprecated", DeprecationWarning)
"""


def _ini_options() -> str:
    """The suite's [tool.pytest.ini_options] as written, less its testpaths."""
    text = (ROOT / "pyproject.toml").read_text()
    start = text.index("[tool.pytest.ini_options]")
    section = text[start : text.index("\n[", start + 1)]
    options = tomllib.loads(section)["tool"]["pytest"]["ini_options"]
    assert "error" in options["filterwarnings"]  # (what this test is about)
    return "\n".join(ln for ln in section.splitlines() if not ln.startswith("testpaths"))


def test_a_failing_hypothesis_test_is_named(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(_ini_options())
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_scratch.py").write_text(TESTS)
    proc = subprocess.run(
        # (-n 0: in this process, not on the suite's xdist workers)
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert "INTERNALERROR" not in out, out
    assert proc.returncode == 1, out  # tests failed (3 would be an internal error)
    assert "FAILED test_scratch.py::test_fails_on_purpose" in out, out
    assert "Falsifying example" in out, out
    # The filter is narrow: any other DeprecationWarning is still an error.
    assert "FAILED test_scratch.py::test_other_deprecations_still_fail" in out, out
