"""The run's plan, printed before the first measurement: what it measures (tables, rows,
protocols, datasets, models), what is missing and what it will fetch or train, and an estimate
of each stage's time on this device from a short timed probe of the models
(:mod:`gradood.harness.probe`): images to process divided by images per second.

The estimate counts the models' computation only (a forward pass per scored image; a training
step per training image and epoch; a forward and backward pass per image for the fitted
detectors' groups); decoding, the feature cache and the fits themselves are left out, so the
actual times (in the report beside it) say how far the models' compute bounds the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .checks import FORWARD, PaperCheck
from .downloading import Fetch, fetch_kind, wants_download
from .environment import environment
from .failures import one_line
from .inputs import hook_model, open_benchmark
from .readable import checkpoint_problem, read_resnet20
from .session import flag, run_report, say, uses_gpu
from .stages import Stage, seconds
from .summary import MAX_WIDTH
from .training import (
    PAPER_EPOCHS,
    checkpoint_path,
    finished,
    recipe,
    train_epochs,
    wants_training,
)

__all__ = ["ProtocolPlan", "announce", "selected_checks"]


@dataclass
class ProtocolPlan:
    """What the run does with one protocol."""

    name: str
    checks: list[PaperCheck]
    data: str = "found"
    model: str = "found"
    runs: bool = True
    trains: bool = False
    #: the model a hook gave (probed instead of the protocol's architecture)
    model_object: object = None
    stages: list[Stage] = field(default_factory=list)

    @property
    def tables(self) -> list[str]:
        return list(dict.fromkeys(check.table for check in self.checks))

    def lines(self) -> list[str]:
        """Two lines: the rows and the data; the model."""
        numbers = [t.removeprefix("table") for t in self.tables]
        tables = f"Table{'s' if len(numbers) > 1 else ''} {', '.join(numbers)}"
        verdict = "" if self.runs else "; not run"
        rows = f"{len(self.checks)} {'row' if len(self.checks) == 1 else 'rows'}"
        return [
            f"{self.name:<9} {rows} ({tables}){verdict}; data: {self.data}",
            f"{'':<9} model: {self.model}",
        ]


def selected_checks(items: Sequence[pytest.Item]) -> list[PaperCheck]:
    """The paper checks among the collected ``items``."""
    checks = []
    for item in items:
        check = getattr(getattr(item, "callspec", None), "params", {}).get("check")
        if isinstance(check, PaperCheck):
            checks.append(check)
    return checks


def announce(config: pytest.Config, items: Sequence[pytest.Item]) -> None:
    """Make the plan of the paper checks among ``items``, print it in a few lines, keep it (and
    its stages' estimates) in the run's report; nothing if no paper check is selected."""
    checks = selected_checks(items)
    if not checks:
        return
    protocols = dict.fromkeys(check.protocol for check in checks)
    plans = [_protocol_plan(config, p, [c for c in checks if c.protocol == p]) for p in protocols]
    report = run_report(config)
    _record_rows(report, checks)
    for plan in plans:
        for stage in plan.stages:
            report.stages.plan(stage)
    device = _device_name(config)
    lines = [f"gradood plan: {len(checks)} paper rows on {device}"]
    lines += [f"  {line}" for plan in plans for line in plan.lines()]
    planned = [stage for plan in plans for stage in plan.stages]
    if planned:
        total = report.stages.total("estimate")
        shown = ", ".join(f"{s.name} {seconds(s.estimate)}" for s in planned)
        lines.append(f"  estimate: {seconds(total)} ({shown})")
    report.plan = lines
    report.environment = environment(_device(config), config.rootpath)
    for line in lines:
        for part in wrapped(line):
            say(config, part)


def wrapped(line: str, width: int = MAX_WIDTH) -> list[str]:
    """``line`` in lines of at most ``width`` columns, broken at spaces (a word or a path is
    never split); the continuation lines are indented past the line's first column of text
    (the protocol's name)."""
    import textwrap

    indent = len(line) - len(line.lstrip())
    first_word = line.lstrip().split(" ", 1)[0]
    hanging = " " * min(indent + max(len(first_word) + 1, 10), width // 2)
    return textwrap.wrap(
        line,
        width,
        subsequent_indent=hanging,
        break_long_words=False,
        break_on_hyphens=False,
    ) or [line]


def _record_rows(report, checks: list[PaperCheck]) -> None:
    """Each protocol's selected rows, which the summary accounts for (run, skipped, raised or
    not reached)."""
    for check in checks:
        report.planned.setdefault(check.protocol, []).append(check.id)


def _device_name(config: pytest.Config) -> str:
    import torch

    if uses_gpu(config):
        return torch.cuda.get_device_name(0)
    threads = torch.get_num_threads()
    return f"the CPU, {threads} thread{'s' if threads > 1 else ''}"


def _custom(config: pytest.Config, hook: str) -> bool:
    """Whether an implementation of ``hook`` other than gradood's own is registered."""
    from .session import only_gradood_implements

    return not only_gradood_implements(getattr(config.pluginmanager.hook, hook))


def _protocol_plan(config: pytest.Config, name: str, checks: list[PaperCheck]) -> ProtocolPlan:
    from ..protocols import protocol_class

    cls = protocol_class(name)
    plan = ProtocolPlan(name, checks)
    benchmark = _open_or_describe(config, cls, plan)
    _describe_model(config, cls, plan)
    if plan.runs:
        plan.stages = _stages(config, cls, benchmark, plan)
    return plan


def _open_or_describe(config: pytest.Config, cls, plan: ProtocolPlan):
    """The benchmark if it opens now; else ``None``, with what is missing (and fetched) said in
    ``plan``. With ``--gradood-download`` and the default hook, what is missing is listed first
    (opening would fetch it before the plan is shown)."""
    download = wants_download(config)
    if download and not _custom(config, "pytest_gradood_open_protocol"):
        from ..protocols import missing
        from .session import option_path

        absent = missing(cls.name, option_path(config, "data_root"))
        if absent:
            _describe_fetch(cls, absent, option_path(config, "data_root"), plan)
            return None
    try:
        return open_benchmark(config, cls.name)
    except Exception as error:  # the measurement raises it again, where it belongs
        plan.data = f"cannot be opened: {one_line(error)}"
        plan.runs = False
        return None
    except pytest.skip.Exception as skipped:
        reason = str(skipped.msg).removeprefix(f"{cls.name}: ").split(" (")[0]
        default = not _custom(config, "pytest_gradood_open_protocol")
        hint = _download_hint(config, cls) if default and not download else ""
        plan.data = f"{reason}{hint}"
        plan.runs = False
        return None


def _download_hint(config: pytest.Config, cls) -> str:
    """What ``--gradood-download`` would fetch of ``cls``'s missing datasets, in parentheses:
    all of them, some (naming those it never fetches: e.g. ImageNet-1k, or one there but
    incomplete), or nothing."""
    from ..protocols import missing
    from .session import option_path

    root = option_path(config, "data_root")
    kinds = {m.name: fetch_kind(cls, m.name, root) for m in missing(cls.name, root)}
    never = [_named(name, kind) for name, kind in kinds.items() if kind is not Fetch.FETCHED]
    option = flag("download", config)
    if not kinds or len(never) == len(kinds):
        return ""
    if not never:
        return f" (no {option})"
    fetched = len(kinds) - len(never)
    return f" ({option} would fetch {fetched}; never {', '.join(never)})"


def _named(name: str, kind: Fetch) -> str:
    """A dataset ``--gradood-download`` never fetches: its name, and why where it is there."""
    return f"{name} ({kind.value})" if kind is Fetch.INCOMPLETE else name


def _describe_fetch(cls, absent: list, root, plan: ProtocolPlan) -> None:
    """What ``--gradood-download`` fetches of the ``absent`` datasets, and what it cannot: a
    dataset no download gives (ImageNet), or one that is there but incomplete (never
    replaced); the protocol does not run while one of those is missing."""
    fetched, kept = [], []
    for problem in absent:
        kind = fetch_kind(cls, problem.name, root)
        if kind is Fetch.FETCHED:
            fetched.append(problem.name)
        else:
            kept.append(f"{problem.name} ({kind.value})")
    parts = [f"missing: {', '.join(kept)}"] if kept else []  # first: it stops the protocol
    if fetched:
        parts.append(f"to fetch: {', '.join(fetched)}")
    plan.runs = not kept
    plan.data = "; ".join(parts)


def _describe_model(config: pytest.Config, cls, plan: ProtocolPlan) -> None:
    try:
        plan.model_object = hook_model(config, cls.name)
    except pytest.skip.Exception as skipped:
        plan.model = str(skipped.msg).removeprefix(f"{cls.name}: ")
        plan.runs = False
        return
    except Exception as error:  # the measurement raises it again, where it belongs
        plan.model = f"cannot be loaded: {one_line(error)}"
        plan.runs = False
        return
    if plan.model_object is not None:
        plan.model = "from a pytest_gradood_load_model hook"
        return
    path = checkpoint_path(config, cls)
    problem, complete = _checkpoint_state(path, cls.trainable)
    if problem is not None:
        plan.model = f"{path.name} unreadable: {problem}"
        plan.runs = False
    elif complete:
        plan.model = f"{path.name} found"
    elif cls.checkpoint_download is not None and not path.exists() and wants_download(config):
        plan.model = f"to fetch: {path.name}"
    elif cls.trainable and wants_training(config):
        epochs = recipe(cls.name, train_epochs(config)).epochs
        verb = "resume training" if path.is_file() else "train"
        plan.trains = True
        plan.model = f"will {verb} {path.name} ({epochs} epochs)"
    else:
        plan.model = f"{path.name} missing"
        if cls.trainable:
            plan.model += f" (no {flag('train', config)})"
        elif cls.checkpoint_download is not None and not wants_download(config):
            plan.model += f" (no {flag('download', config)})"
        plan.runs = False


def _checkpoint_state(path: Path, trainable: bool) -> tuple[str | None, bool]:
    """Why the checkpoint at ``path`` cannot be loaded (``None``: it can, or there is no file),
    and whether it is complete: a file that loads and, of a ``trainable`` protocol (a
    ResNet-20 checkpoint, read whole once), of a finished training."""
    if not path.is_file():
        return None, False
    if not trainable:
        problem = checkpoint_problem(path, read_whole=False)
        return problem, problem is None
    content, problem = read_resnet20(path)
    return problem, content is not None and finished(content)


def _stages(config: pytest.Config, cls, benchmark, plan: ProtocolPlan) -> list[Stage]:
    """The protocol's stages with their estimates from a probe of its model (or architecture),
    and their images at the paper's counts (to scale a miniature's times up)."""
    from .probe import probe

    expected = cls.paper_expected if benchmark is None else benchmark.expected
    epochs = recipe(cls.name, train_epochs(config)).epochs if plan.trains else 0
    counts = _stage_images(cls, expected, plan, epochs)
    paper_counts = _stage_images(cls, cls.paper_expected, plan, PAPER_EPOCHS if epochs else 0)
    try:
        model = plan.model_object if plan.model_object is not None else cls.architecture()
        speed = probe(model, cls.preprocessing.size, _device(config))
    except Exception as error:  # an architecture that cannot be built here (e.g. no timm)
        note = f"no probe: {type(error).__name__}: {error}"
        return [Stage(name, images, note=note) for name, (images, _) in counts.items()]
    stages = []
    for name, (images, training) in counts.items():
        if name.endswith(" train"):  # a training step per training image, a forward per test
            test_images = expected[cls.id_test_source.name].images * epochs
            estimate = (images - test_images) / speed.training + test_images / speed.forward
        else:
            estimate = images / (speed.training if training else speed.forward)
        stages.append(Stage(name, images, estimate, paper_images=paper_counts[name][0]))
    return stages


def _stage_images(cls, expected, plan: ProtocolPlan, epochs: int) -> dict[str, tuple[int, bool]]:
    """Stage name -> (images it processes, whether with a backward pass), for the counts of
    ``expected``: training ``epochs`` (training and test set each epoch); the forward group
    scores the test sets; a fitted group also passes its fit's images with input gradients."""
    from ..registry import detector_spec
    from .checks import SURROGATE_FIT_SAMPLES

    scored = sum(expected[source.name].images for source in cls.sources(include_train=False))
    train_images = expected[cls.id_train_source.name].images
    stages = {}
    if epochs:
        test_images = expected[cls.id_test_source.name].images
        stages[f"{cls.name} train"] = (epochs * (train_images + test_images), True)
    for group in dict.fromkeys(check.group for check in plan.checks):
        if group == FORWARD:
            stages[f"{cls.name} {group}"] = (scored, False)
            continue
        fit = detector_spec(group).fit
        fitted = min(train_images, SURROGATE_FIT_SAMPLES) if fit == "surrogate" else train_images
        extra = fitted if "train" in fit or fit == "surrogate" else 0
        stages[f"{cls.name} {group}"] = (scored + extra, True)
    return stages


def _device(config: pytest.Config) -> str:
    return "cuda" if uses_gpu(config) else "cpu"
