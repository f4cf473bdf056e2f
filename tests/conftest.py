"""Suite-wide options: ``--fuzz-long`` runs the hostile-input property tests with tens of
thousands of examples each and prints what they measured (see :mod:`tests.fuzz`)."""

from __future__ import annotations

import os

import pytest

from tests import fuzz
from tests.hostile_http import HostileServer


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz-long", action="store_true", default=False,
        help="run the hostile-input property tests with --fuzz-factor times the examples",
    )
    parser.addoption(
        "--fuzz-factor", type=int, default=100,
        help="how many times more examples --fuzz-long runs (default 100: tens of thousands)",
    )


def pytest_configure(config: pytest.Config) -> None:
    long = config.getoption("--fuzz-long")
    fuzz.configure(factor=config.getoption("--fuzz-factor") if long else 1)


def pytest_runtest_logfinish(nodeid, location) -> None:  # type: ignore[no-untyped-def]
    if os.environ.get("TRACE_FUZZ_REPORT"):
        fuzz.save(os.environ["TRACE_FUZZ_REPORT"])


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    lines = fuzz.report()
    if lines:
        terminalreporter.section("hostile-input fuzzing")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def hostile():
    """A hostile HTTP server on loopback (:mod:`tests.hostile_http`); tests set its ``plan``."""
    with HostileServer() as server:
        yield server
