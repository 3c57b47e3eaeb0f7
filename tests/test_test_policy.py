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
