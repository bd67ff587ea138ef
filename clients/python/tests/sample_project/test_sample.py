"""A small project for the pytest plugin's test: one test of each outcome the plugin reports.

Run by ../test_pytest_plugin.py under `outrigger exec -- python -m pytest --outrigger`; never
collected by the suite itself (conftest.py ignores this folder).
"""

import pytest


def test_passes():
    assert 1 + 1 == 2


def test_fails():
    expected = "the answer"
    assert expected == "a different answer", "FAILURE-MARKER"


@pytest.fixture
def broken_setup():
    raise RuntimeError("SETUP-ERROR-MARKER")


def test_errors_in_setup(broken_setup):
    pass


@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("TEARDOWN-ERROR-MARKER")


def test_errors_in_teardown(broken_teardown):
    pass


@pytest.mark.skip(reason="SKIP-MARKER")
def test_skipped():
    pass


@pytest.mark.xfail(reason="XFAIL-MARKER")
def test_xfails():
    assert False


def test_observes_into_its_run(outrigger_run):
    outrigger_run.observe("step", {"n": 1})
    outrigger_run.observe("step", {"n": 2})


@pytest.mark.xfail(reason="XPASS-MARKER")
def test_xpasses():
    pass


def test_fails_with_a_huge_message():
    assert False, "HUGE-MARKER " + "x" * 200_000
