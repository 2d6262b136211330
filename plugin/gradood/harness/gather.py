"""Under pytest-xdist (``-n``): each worker's part of the run's report goes to the controller
(xdist's ``workeroutput``), which joins the parts in the tests' collection order, so that the
report and the summary are those of the same run without ``-n``.

Each worker notes what every test added to its report (with the test's position in the
collection, which every worker collects alike); the controller adds the parts of all workers
to its own report in that order, before the summary. What a worker's report holds before its
first test (the plan, what is missing) is the same on every worker: the first worker's is
taken."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import fields, replace

import pandas as pd
import pytest

from .report import Report
from .stages import Stage, Stages

__all__ = ["ReportParts", "merge"]

_OUTPUT_KEY = "gradood_report_parts"
#: the position of a worker's part from before its first test (every worker's is alike)
_BEFORE_TESTS = -1


def merge(into: Report, part: Report) -> None:
    """Add ``part``'s entries to ``into``, after its own: lists are extended, tables get the
    part's rows, nested dictionaries its keys, stages its times; elsewhere a key's first value
    stays (e.g. a protocol's first reason)."""
    for field in fields(Report):
        mine, theirs = getattr(into, field.name), getattr(part, field.name)
        if isinstance(mine, list):
            mine.extend(theirs)
        elif isinstance(mine, Stages):
            for stage in theirs.by_name.values():
                _add_stage(mine, stage)
        else:
            for key, value in theirs.items():
                _merge_value(mine, key, value)


def _merge_value(into: dict, key, value) -> None:
    if key not in into:
        into[key] = value
    elif isinstance(value, pd.DataFrame):
        into[key] = pd.concat([into[key], value], ignore_index=True)
    elif isinstance(value, dict):
        into[key].update(value)


def _add_stage(stages: Stages, stage: Stage) -> None:
    """A stage new to ``stages`` as it is (planned, or run); a known one gets its time added."""
    mine = stages.by_name.get(stage.name)
    if mine is None:
        stages.by_name[stage.name] = replace(stage)
    elif stage.actual is not None:
        mine.actual = (mine.actual or 0.0) + stage.actual


def _since(report: Report, before: Report) -> Report:
    """The entries of ``report`` that ``before`` (a copy of it, taken earlier) lacks."""
    part = Report()
    for field in fields(Report):
        now, then = getattr(report, field.name), getattr(before, field.name)
        if isinstance(now, list):
            getattr(part, field.name).extend(now[len(then) :])
        elif isinstance(now, Stages):
            for name, stage in now.by_name.items():
                earlier = then.by_name.get(name)
                if earlier is None:
                    part.stages.by_name[name] = replace(stage)
                elif (stage.actual or 0.0) > (earlier.actual or 0.0):
                    spent = stage.actual - (earlier.actual or 0.0)
                    part.stages.by_name[name] = replace(stage, actual=spent)
        else:
            getattr(part, field.name).update(_new_entries(now, then))
    return part


def _new_entries(now: dict, then: dict) -> dict:
    """The keys of ``now`` that ``then`` lacks; of a table, the rows it gained; of a dict, the
    keys it gained."""
    new = {}
    for key, value in now.items():
        if key not in then:
            new[key] = value
        elif isinstance(value, pd.DataFrame) and len(value) > len(then[key]):
            new[key] = value.iloc[len(then[key]) :]
        elif isinstance(value, dict) and (gained := _new_entries(value, then[key])):
            new[key] = gained
    return new


def _empty(part: Report) -> bool:
    values = [getattr(part, f.name) for f in fields(Report)]
    return not any(v.by_name if isinstance(v, Stages) else v for v in values)


def _copy(report: Report) -> Report:
    """A copy of ``report`` that later additions to it leave alone (one level down too)."""
    copied = {}
    for f in fields(Report):
        value = getattr(report, f.name)
        if isinstance(value, Stages):
            copied[f.name] = Stages({n: replace(s) for n, s in value.by_name.items()})
        elif isinstance(value, dict):
            copied[f.name] = {k: dict(v) if isinstance(v, dict) else v for k, v in value.items()}
        else:
            copied[f.name] = list(value)
    return Report(**copied)


class ReportParts:
    """The plugin that carries the report from xdist's workers to its controller; ``report``
    gives this process's report."""

    def __init__(self, config: pytest.Config, report: Callable[[], Report]):
        self.config = config
        self.report = report
        self.parts: list[tuple[int, Report]] = []
        self.positions: dict[str, int] = {}

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """After the plan (which opens the protocols and may record what is missing): what the
        report holds now is the part before the first test, the same on every worker."""
        self.positions = {item.nodeid: index for index, item in enumerate(session.items)}
        before_tests = self.report()
        if hasattr(self.config, "workerinput") and not _empty(before_tests):
            self.parts.append((_BEFORE_TESTS, _copy(before_tests)))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None):
        before = _copy(self.report())
        try:
            return (yield)
        finally:
            part = _since(self.report(), before)
            if not _empty(part):
                self.parts.append((self.positions.get(item.nodeid, len(self.positions)), part))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        output = getattr(self.config, "workeroutput", None)
        if output is not None:  # a worker: hand the parts over
            output[_OUTPUT_KEY] = pickle.dumps(self.parts)
            return
        report = self.report()
        setup = [part for position, part in self.parts if position == _BEFORE_TESTS]
        tests = [entry for entry in self.parts if entry[0] != _BEFORE_TESTS]
        for part in setup[:1] + [part for _, part in sorted(tests, key=lambda e: e[0])]:
            merge(report, part)
        self.parts.clear()

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        data = getattr(node, "workeroutput", {}).get(_OUTPUT_KEY)
        if data is not None:
            self.parts += pickle.loads(data)
