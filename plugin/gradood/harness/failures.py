"""Failures shared by many tests, reported in full once.

A failure that stops many paper checks alike (a download that failed, a model that does not
load, a measurement group that raised) is remembered by its key on the first call: that test
reports it with its whole traceback. Every later test that needs the same thing gets a fresh
:class:`RepeatedFailure`, one line that names the error and the test that shows it in full, and
pytest prints it as that one line (:func:`shorten`). The output then grows linearly in the
rows, never by the frames of earlier raises (re-raising one stored exception object appends
each raise's frames to its traceback).

A failure first met outside a test (e.g. while the plan is made) is raised as it is in the
first test that needs it, which then shows it in full.

Imports only pytest and the standard library, as :mod:`.plugin` does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import pytest

__all__ = [
    "RepeatedFailure",
    "SharedFailures",
    "current_test",
    "one_line",
    "shared_failures",
    "shorten",
]

_STORE = pytest.StashKey["SharedFailures"]()


class RepeatedFailure(Exception):
    """A failure an earlier test reported in full (``original``, in ``shown_in``), raised again
    (fresh) for a later one."""

    def __init__(self, original: BaseException, shown_in: str | None) -> None:
        where = f"as in {shown_in}, whose report shows it in full" if shown_in else "as before"
        super().__init__(f"{one_line(original)} (the same failure {where})")
        self.original = original
        self.shown_in = shown_in

    def __reduce__(self):
        return type(self), (self.original, self.shown_in)


def one_line(error: BaseException) -> str:
    """``Type: first line of the message`` (``Type`` alone where the message is empty); of a
    :class:`RepeatedFailure`, that of the failure it repeats."""
    if isinstance(error, RepeatedFailure):
        error = error.original
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    name = type(error).__name__
    return f"{name}: {lines[0]}" if lines else name


def current_test() -> str | None:
    """The node id of the test pytest is running now (``None`` outside a test)."""
    running = os.environ.get("PYTEST_CURRENT_TEST")
    return running.rsplit(" ", 1)[0] if running else None


@dataclass
class _First:
    error: BaseException
    #: the test whose report shows ``error`` in full (``None``: none yet)
    shown_in: str | None


class SharedFailures:
    """The first failure of each key, with its traceback."""

    def __init__(self) -> None:
        self._first: dict[Hashable, _First] = {}

    def call(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """``make()``; if it raises (an ``Exception``), the error is kept under ``key`` and raised;
        a later call with ``key`` raises again without calling ``make`` (:meth:`raise_again`)."""
        if key in self._first:
            self.raise_again(key)
        try:
            return make()
        except Exception as error:
            self.record(key, error)
            raise

    def record(self, key: Hashable, error: BaseException) -> None:
        """Keep ``error`` as ``key``'s failure (the first one stays; a repeated one is kept as
        the failure it repeats)."""
        if isinstance(error, RepeatedFailure):
            self._first.setdefault(key, _First(error.original, error.shown_in))
        else:
            self._first.setdefault(key, _First(error, current_test()))

    def failed(self, key: Hashable) -> bool:
        return key in self._first

    def raise_again(self, key: Hashable) -> None:
        """Raise ``key``'s failure for this test: as it is where no test showed it in full yet,
        else a fresh :class:`RepeatedFailure` of one line that points to the test that did."""
        first = self._first[key]
        if first.shown_in is None:
            first.shown_in = current_test()
            raise first.error
        raise RepeatedFailure(first.error, first.shown_in) from None


def shared_failures(config: pytest.Config) -> SharedFailures:
    """This run's :class:`SharedFailures`."""
    if _STORE not in config.stash:
        config.stash[_STORE] = SharedFailures()
    return config.stash[_STORE]


def shorten(report: pytest.TestReport, call: pytest.CallInfo) -> None:
    """A test stopped by a :class:`RepeatedFailure` is reported as its message only."""
    excinfo = call.excinfo
    if report.failed and excinfo is not None and excinfo.errisinstance(RepeatedFailure):
        report.longrepr = excinfo.getrepr(style="value")
