"""``--gradood-download``: fetch the public datasets and checkpoints the run's protocols need,
and say in the report which data was never checked against a published checksum.

With the option (or ``GRADOOD_DOWNLOAD=1``), the first time a protocol is opened every dataset
of it that is entirely absent from the data root is downloaded and installed (as the Python
API's ``download=True`` does: :mod:`gradood.downloads`, nothing overwritten), and a missing
published checkpoint (the authors' BiT-S-R101x1) is downloaded into the checkpoint folder.
ImageNet itself needs a login and is never downloaded. :func:`planned_downloads` says
beforehand what that would fetch. A transfer slower than ``--gradood-download-min-speed`` bytes/s
(``GRADOOD_DOWNLOAD_MIN_SPEED``, default 1024) on average over a window of
``--gradood-download-speed-time`` seconds (``GRADOOD_DOWNLOAD_SPEED_TIME``, default 60) ends
(:mod:`gradood.downloads.speed`).

The hooks wrap the default (or a project's own) implementations, which then open the data
and load the model. At the end the run's report gets ``data-provenance.md``: per dataset and
checkpoint of the protocols opened, whether it was checked against a published checksum and
how.

Imports only pytest and the standard library at the top, as :mod:`.plugin` does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import pytest

from .session import DOWNLOAD_VARIABLE, verbosity

__all__ = [
    "DOWNLOAD_VARIABLE",
    "OPTION",
    "PROVENANCE",
    "DownloadHooks",
    "Fetch",
    "PlannedDownload",
    "download_speed",
    "fetch_kind",
    "missing_line",
    "parse_number",
    "planned_downloads",
    "provenance",
    "wants_download",
]

#: the option (registered by :mod:`.plugin`)
OPTION = "--gradood-download"
#: the report's file of what was checked against published checksums
PROVENANCE = "data-provenance.md"


#: the environment variables of ``--gradood-download-min-speed`` and ``-speed-time``
SPEED_VARIABLES = {
    "download_min_speed": "GRADOOD_DOWNLOAD_MIN_SPEED",
    "download_speed_time": "GRADOOD_DOWNLOAD_SPEED_TIME",
}


def parse_number(text: str, minimum: float, open_below: bool) -> float:
    """``text`` as a finite number >= ``minimum`` (> with ``open_below``).

    :raises ValueError: saying what was expected
    """
    bound = f"{'>' if open_below else '>='} {minimum:g}"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < minimum or (open_below and value == minimum):
        raise ValueError(f"a finite number {bound}, got {text!r}")
    return value


def download_speed(config: pytest.Config) -> tuple[float | None, float | None]:
    """``(min_speed, speed_time)`` of this run's downloads: the options, else their environment
    variables, else ``None`` (:mod:`gradood.downloads.speed`'s defaults).

    :raises pytest.UsageError: for an environment variable that is not such a number
    """
    values = []
    for name, open_below in (("download_min_speed", False), ("download_speed_time", True)):
        value = config.getoption(f"gradood_{name}", None)
        text = os.environ.get(SPEED_VARIABLES[name], "")
        if value is None and text:
            try:
                value = parse_number(text, 0.0, open_below)
            except ValueError as error:
                raise pytest.UsageError(f"{SPEED_VARIABLES[name]}={text}: {error}") from None
        values.append(value)
    return values[0], values[1]


def wants_download(config: pytest.Config) -> bool:
    """Whether this run downloads what is missing (``--gradood-download``, or
    ``GRADOOD_DOWNLOAD=1``: :func:`gradood.harness.session.apply_environment`)."""
    return bool(config.getoption("gradood_download", False))


@dataclass(frozen=True)
class PlannedDownload:
    """One file that ``--gradood-download`` would fetch.

    :param what: the datasets or model it is for, e.g. ``"cifar10: CIFAR-10 test, CIFAR-10
        train"``
    :param size: bytes, where known (published, or the server's answer with ``probe=True``)
    :param published_checksum: whether an md5 is published for it (else its SHA-256 is
        recorded at the download)
    """

    what: str
    url: str
    path: Path
    size: int | None
    published_checksum: bool


def planned_downloads(
    protocols: Iterable[str],
    data_root: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    include_train: bool = True,
    probe: bool = False,
) -> list[PlannedDownload]:
    """What ``--gradood-download`` would fetch now for ``protocols``: the archives and files of
    every dataset entirely absent under ``data_root`` (the training sets too, with
    ``include_train``) and the published checkpoints absent from ``checkpoint_dir``; each file
    once, in the protocols' order. Archives already downloaded are not listed (they are only
    extracted).

    :param probe: ask the servers (HTTP ``HEAD``) for the sizes not known beforehand
    """
    from ..protocols import protocol_class

    planned: dict[Path, PlannedDownload] = {}
    for name in protocols:
        cls = protocol_class(name)
        for source in cls.sources(include_train):
            for remote, path in source.downloads(Path(data_root)):
                _add(planned, f"{name}: {source.name}", remote, path)
        remote = cls.checkpoint_download
        checkpoint = Path(checkpoint_dir) / cls.checkpoint_file
        if remote is not None and not checkpoint.exists():
            _add(planned, f"{name}: model", remote, checkpoint)
    downloads = list(planned.values())
    if probe:
        downloads = [_probed(download) for download in downloads]
    return downloads


def _add(planned: dict, what: str, remote, path: Path) -> None:
    if path in planned:
        known = planned[path]
        planned[path] = PlannedDownload(
            f"{known.what}, {what}", known.url, path, known.size, known.published_checksum
        )
    else:
        planned[path] = PlannedDownload(what, remote.url, path, remote.size, remote.md5 is not None)


def _probed(download: PlannedDownload) -> PlannedDownload:
    if download.size is not None:
        return download
    from ..downloads import RemoteFile

    size = RemoteFile(download.url).published_size()
    return PlannedDownload(
        download.what, download.url, download.path, size, download.published_checksum
    )


class Fetch(Enum):
    """What ``--gradood-download`` does for a dataset that is missing (its value in words)."""

    #: entirely absent and published: downloaded
    FETCHED = "fetched"
    #: there, but incomplete: never replaced (nothing on disk is overwritten)
    INCOMPLETE = "incomplete"
    #: no download gives it (ImageNet-1k, behind a login)
    NO_DOWNLOAD = "no download"


def fetch_kind(cls, dataset: str, root: str | os.PathLike) -> Fetch:
    """What ``--gradood-download`` does for the dataset named ``dataset`` of protocol class
    ``cls`` where it is missing under ``root``."""
    source = next((source for source in cls.sources() if source.name == dataset), None)
    return _source_fetch(source, Path(root))


def _source_fetch(source, root: Path) -> Fetch:
    if source is None or not source.can_download:
        return Fetch.NO_DOWNLOAD
    return Fetch.INCOMPLETE if source.is_present(root) else Fetch.FETCHED


def missing_line(protocol: str, problem, root: str | os.PathLike, option: str = OPTION) -> str:
    """The line of ``missing-data.md`` for a dataset of ``protocol`` missing under ``root`` (a
    :class:`gradood.protocols.MissingDataset`): what and where, how to get it, and for a
    dataset that can be downloaded, the option that does it (``option``, as this run spells
    it)."""
    from ..protocols import protocol_class

    line = f"- {sentence(str(problem))}"
    kind = fetch_kind(protocol_class(protocol), problem.name, root)
    if kind is Fetch.NO_DOWNLOAD:
        return line
    if kind is Fetch.INCOMPLETE:
        return f"{line}\n  With the harness: move it away, then run with {option}."
    return f"{line}\n  With the harness: run with {option}."


def sentence(text: str) -> str:
    """``text`` ending in a full stop (unless it ends in one already, or in ``?`` or ``!``)."""
    text = text.rstrip()
    return text if text.endswith((".", "?", "!")) else f"{text}."


def provenance(
    protocols: Iterable[str],
    data_root: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    verify_checksums: bool = True,
) -> list[tuple[str, bool, str]]:
    """Per dataset and published checkpoint of ``protocols`` that is present: ``(what,
    checked against a published checksum, how in words)``.

    :param verify_checksums: whether the protocols were opened with the published checksums
        checked (a miniature is not)
    """
    from ..downloads import recorded_sha256
    from ..protocols import protocol_class

    rows: dict[str, tuple[str, bool, str]] = {}
    for name in protocols:
        cls = protocol_class(name)
        for source in cls.sources():
            if source.is_present(Path(data_root)):
                verified, how = source.verification(Path(data_root))
                if verified and not verify_checksums:
                    verified, how = False, "opened with verify_checksums=False: not checked"
                rows.setdefault(source.name, (source.name, verified, how))
        checkpoint = Path(checkpoint_dir) / cls.checkpoint_file
        if cls.checkpoint_download is not None and checkpoint.exists():
            sha256 = recorded_sha256(checkpoint)
            how = (
                f"no published checksum: SHA-256 {sha256} recorded at its download, checked at "
                "every load"
                if sha256
                else "no published checksum, and not downloaded by gradood: never checked"
            )
            rows.setdefault(checkpoint.name, (f"{name} model {checkpoint.name}", False, how))
    return list(rows.values())


def _provenance_markdown(rows: list[tuple[str, bool, str]]) -> str:
    never = [what for what, verified, _ in rows if not verified]
    lines = [
        "# Data provenance",
        "",
        "Never verified against a published checksum: " + (", ".join(never) or "none") + ".",
        "",
        "| data | published checksum checked | how |",
        "|---|---|---|",
    ]
    lines += [f"| {what} | {'yes' if ok else 'no'} | {how} |" for what, ok, how in rows]
    return "\n".join(lines) + "\n"


class DownloadHooks:
    """The hooks of ``--gradood-download`` and of the provenance report (registered by
    :mod:`.plugin` with the run's data root and checkpoint folder)."""

    def __init__(
        self,
        data_root: Path,
        checkpoint_dir: Path,
        speed: tuple[float | None, float | None] = (None, None),
    ) -> None:
        self.data_root, self.checkpoint_dir = Path(data_root), Path(checkpoint_dir)
        #: ``(min_speed, speed_time)`` of the downloads (:func:`download_speed`)
        self.speed = speed
        #: protocol -> (data root, checksums verified) of the benchmark the hooks returned
        self.opened: dict[str, tuple[Path, bool]] = {}

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_gradood_open_protocol(self, config: pytest.Config, name: str):
        """Download first (with the option), check what was downloaded without a published
        checksum once the protocol is opened; remember where the benchmark returned reads."""
        downloading = wants_download(config)
        if downloading:
            self._download(config, name)
        try:
            benchmark = yield
        except BaseException:
            if downloading:  # e.g. a skip for counts that fail: say what was removed
                _check_downloads(name, self.data_root, None)
            raise
        if downloading:
            _check_downloads(name, self.data_root, getattr(benchmark, "expected", None))
        root, expected = getattr(benchmark, "root", None), getattr(benchmark, "expected", None)
        if root is not None:
            verified = bool(getattr(expected, "verify_checksums", True))
            self.opened.setdefault(name, (Path(root), verified))
        return benchmark

    def _download(self, config: pytest.Config, name: str) -> None:
        """A failed download is never retried in the run: raised again, in one line."""
        from .failures import shared_failures

        def download() -> None:
            with _uncaptured(config), _speed_limit(self.speed):
                _download_data(config, name, self.data_root)

        shared_failures(config).call(("download data", name), download)

    @pytest.hookimpl(tryfirst=True)
    def pytest_gradood_load_model(self, config: pytest.Config, protocol: str) -> None:
        from ..downloads import check_record, digests, recorded_sha256
        from ..protocols import protocol_class

        cls = protocol_class(protocol)
        path = self.checkpoint_dir / cls.checkpoint_file
        remote = cls.checkpoint_download
        if remote is not None and not path.exists() and wants_download(config):
            from .failures import shared_failures

            def download() -> None:
                with _uncaptured(config), _speed_limit(self.speed):
                    _say(config, f"gradood: downloading {remote.url} to {path}")
                    remote.fetch(path)

            shared_failures(config).call(("download model", protocol), download)
        elif path.is_file() and recorded_sha256(path) is not None:
            check_record(path, digests(path)[1])  # a downloaded checkpoint, at every load
        return None

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter, config: pytest.Config) -> None:
        """Add ``data-provenance.md`` to the run's report (written with it, in its folder)."""
        if not self.opened:
            return
        from .session import run_report

        found: dict[str, tuple[str, bool, str]] = {}
        for name, (root, verified) in self.opened.items():
            for row in provenance([name], root, self.checkpoint_dir, verified):
                found.setdefault(row[0], row)
        rows = list(found.values())
        if not rows:
            return
        run_report(config).texts[PROVENANCE] = _provenance_markdown(rows)
        never = [what for what, verified, _ in rows if not verified]
        if never:
            terminalreporter.write_line(
                f"gradood: never verified against a published checksum: {', '.join(never)} "
                f"(see the report's {PROVENANCE})"
            )


def _download_data(config: pytest.Config, name: str, root: Path) -> None:
    from ..protocols import protocol_class

    for source in protocol_class(name).sources():
        if _source_fetch(source, root) is Fetch.FETCHED:
            _say(config, f"gradood: downloading {source.name} ({name}) into {root}")
            source.download(root)


def _check_downloads(name: str, root: Path, expected) -> None:
    """Check by ``expected``'s counts (default: the paper's) the datasets of protocol ``name``
    that were downloaded without a published checksum: their SHA-256 is recorded, or they are
    removed (:meth:`gradood.protocols.source.DataSource.check_download`)."""
    from ..protocols import protocol_class

    cls = protocol_class(name)
    expected = cls.paper_expected if expected is None else expected
    for source in cls.sources():
        source.check_download(root, expected[source.name])


def _speed_limit(speed: tuple[float | None, float | None]):
    """The block where downloads have the run's minimum rate."""
    from ..downloads import speed_limit

    return speed_limit(*speed)


def _say(config: pytest.Config, message: str) -> None:
    """A progress line (output capture is off here)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and verbosity(config) >= 0:
        reporter.ensure_newline()
        reporter.write_line(message)


@contextmanager
def _uncaptured(config: pytest.Config) -> Iterator[None]:
    """pytest's output capture off (the progress bars show), where there is one."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    if capture is None:
        yield
        return
    with capture.global_and_fixture_disabled():
        yield
