"""Tests stay inside: no test installs system packages, and CI's FINETUNE_REQUIRE_ALL=1 turns a skip
for something missing ("needs ...") into a failure, leaving other skips alone (tests/conftest.py)."""

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
TESTS = Path(__file__).resolve().parent

INNER = '''
import pytest
from conftest import needs

def test_needs_a_system_package():
    needs("the system package chromium")

def test_needs_an_extra():
    pytest.importorskip("no_such_module_xyz", reason="needs no_such_module_xyz: pip install it")

def test_skipped_for_another_reason():
    pytest.skip("root ignores directory permissions")

def test_passes():
    assert 1 + 1 == 2
'''


@pytest.mark.parametrize("require_all, outcomes", [(None, dict(passed=1, skipped=3)),
                                                   ("1", dict(passed=1, skipped=1, failed=2))])
def test_require_all_turns_needs_skips_into_failures(pytester, monkeypatch, require_all, outcomes):
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makepyfile(test_inner=INNER)
    if require_all is None:
        monkeypatch.delenv("FINETUNE_REQUIRE_ALL", raising=False)
    else:
        monkeypatch.setenv("FINETUNE_REQUIRE_ALL", require_all)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist")
    result.assert_outcomes(**outcomes)


def test_no_test_installs_system_packages():
    offenders = [f"{path.name}:{n}" for path in sorted(TESTS.glob("*.py")) if path.name != Path(__file__).name
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"\b(apt-get|apt|dnf|yum|apk|brew)\b.*\binstall\b", line)]
    assert not offenders, offenders
    assert "apt-get install" in (TESTS.parent / ".ci" / "run").read_text()  # the one place that does


GROUPED = """
import os
import pytest

pytestmark = pytest.mark.xdist_group("one")


@pytest.mark.parametrize("i", range(6))
def test_where(i):
    with open("workers.txt", "a") as f:
        f.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
"""


def test_an_xdist_group_runs_on_one_worker(pytester):
    """The suite's expensive module fixtures are shared by grouping their tests (pyproject's -n 2 --dist
    loadgroup); with a pytest that breaks grouping, each worker would build them again."""
    pytester.makepyfile(test_grouped=GROUPED, test_other="def test_a(): pass\ndef test_b(): pass\n")
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=8)
    workers = (pytester.path / "workers.txt").read_text().split()
    assert len(workers) == 6 and len(set(workers)) == 1, workers
