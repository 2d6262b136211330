"""Download one file over HTTP(S): resumable, checked, atomic, with a progress bar.

The transfer goes to ``.<name>.part`` beside the destination (with the server's validator in
``.<name>.part.validator``, so that a resumed transfer continues the same file), and is renamed
to the destination only once complete and checked: against the published md5 where there is
one, else against the SHA-256 recorded at the file's first download (:mod:`.records`), which
this download records if there is none (:meth:`RemoteFile.fetch_unrecorded` leaves the record to
the caller, once the content checks out). A partial file is never taken for data.

A transfer slower than a minimum rate over a window (:mod:`~gradood.downloads.speed`: by
default 1 KiB/s over 60 s) ends with :class:`SlowDownloadError`, its bytes kept for a resume.
Bytes are read as they arrive, so the progress bar moves on a slow link.

Test-only: the environment variable ``GRADOOD_TEST_DOWNLOAD_MIRROR`` (e.g.
``http://127.0.0.1:8765``) sends every request for ``scheme://host/path`` to
``<mirror>/host/path`` instead; it must be a loopback address, and is never meant for users.
"""

from __future__ import annotations

import errno
import http.client
import os
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tqdm.auto import tqdm

from ..locking import exclusive_lock
from .records import ChecksumError, check_record, digests, write_record
from .speed import SpeedLimit, SpeedWatch, current_speed_limit

__all__ = [
    "MIRROR_VARIABLE",
    "DownloadError",
    "NoSpaceError",
    "RemoteFile",
    "SlowDownloadError",
    "resolve_url",
]

#: test-only: the loopback server that stands in for every download host
MIRROR_VARIABLE = "GRADOOD_TEST_DOWNLOAD_MIRROR"
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
_CHUNK = 1 << 20
_TIMEOUT_S = 60
_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body")


class DownloadError(OSError):
    """A download failed; the message names the URL, the file and what went wrong."""


class NoSpaceError(DownloadError):
    """No space left for a download or an extraction; the message names the folder. Nothing
    half-written is left there."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return self.strerror


class SlowDownloadError(DownloadError):
    """A transfer slower than its minimum rate over a whole window; the message names the URL,
    the rate, the window and the bytes kept for a resume."""


class _Interrupted(Exception):
    """The transfer stopped before its end (kept for a resume)."""


@dataclass(frozen=True)
class RemoteFile:
    """A file published at ``url``.

    :param md5: its published md5, or ``None`` where none is published (then its SHA-256 is
        recorded at the first download and checked on every later use)
    :param size: its size in bytes as published, where known (the plan's estimate; the
        transfer uses the server's)
    """

    url: str
    md5: str | None = None
    size: int | None = None

    def published_size(self) -> int | None:
        """The size the server announces (HTTP ``HEAD``), or ``None`` if it says none or
        cannot be asked."""
        request = urllib.request.Request(
            resolve_url(self.url), method="HEAD", headers={"User-Agent": "gradood"}
        )
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
                length = response.headers.get("Content-Length")
        except OSError:
            return None
        return int(length) if length is not None and length.isdigit() else None

    def fetch(
        self,
        path: str | os.PathLike,
        progress: bool = True,
        attempts: int = 3,
        min_speed: float | None = None,
        speed_time: float | None = None,
    ) -> Path:
        """Download to ``path`` (a new file), resuming a partial transfer left there; without a
        published md5, record its SHA-256 beside it.

        :param attempts: transfers tried (each resuming the last) before giving up
        :param min_speed: the slowest average rate accepted over a window, in bytes/s (``0``:
            none); ``None``: :func:`~gradood.downloads.speed.current_speed_limit`'s
        :param speed_time: that window in seconds; ``None``: the current limit's
        :raises FileExistsError: if ``path`` exists (never overwritten)
        :raises DownloadError: for an HTTP error, an HTML page, a transfer that kept stopping
            (its bytes are kept for a later resume) or a failed checksum (the file is removed)
        :raises SlowDownloadError: for a transfer below ``min_speed`` over a whole window of
            ``speed_time`` (its bytes are kept for a later resume)
        :raises NoSpaceError: if the disk is full (the partial file is removed)
        """
        sha256 = self.fetch_unrecorded(path, progress, attempts, min_speed, speed_time)
        if self.md5 is None and sha256 is not None:
            write_record(path, sha256)
        return Path(path)

    def fetch_unrecorded(
        self,
        path: str | os.PathLike,
        progress: bool = True,
        attempts: int = 3,
        min_speed: float | None = None,
        speed_time: float | None = None,
    ) -> str | None:
        """:meth:`fetch`, recording nothing: the caller records the SHA-256 returned once the
        content checks out. ``None`` where another process finished the file meanwhile."""
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{path} exists; a download never overwrites it")
        limit = current_speed_limit().replace(min_speed, speed_time)
        path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(path.with_name(f".{path.name}.lock")):
            if path.exists():  # another process finished it while this one waited
                return None
            _Transfer(self.url, path, progress, limit).run(attempts)
            return self._check(path)

    def _check(self, path: Path) -> str:
        """Check the finished transfer and rename it to ``path``; its SHA-256."""
        part = _part(path)
        md5, sha256 = digests(part)
        try:
            if self.md5 is not None and md5 != self.md5:
                raise ChecksumError(
                    f"{self.url} served a file with md5 {md5}, not the published {self.md5}"
                )
            check_record(path, sha256, f"the download of {self.url}")
        except ChecksumError as error:
            _remove(part)
            _remove(_validator(path))
            raise DownloadError(f"{error} (nothing was saved as {path})") from error
        os.rename(part, path)
        _remove(_validator(path))
        return sha256


def resolve_url(url: str) -> str:
    """``url``, or its stand-in on the test-only mirror
    (:data:`~gradood.downloads.remote.MIRROR_VARIABLE`).

    :raises ValueError: if the mirror is not a loopback address
    """
    mirror = os.environ.get(MIRROR_VARIABLE)
    if not mirror:
        return url
    if urlsplit(mirror).hostname not in _LOOPBACK:
        raise ValueError(
            f"{MIRROR_VARIABLE}={mirror!r}: test-only, and only a loopback address is accepted"
        )
    parts = urlsplit(url)
    return f"{mirror.rstrip('/')}/{parts.netloc}{parts.path}"


def _part(path: Path) -> Path:
    return path.with_name(f".{path.name}.part")


def _validator(path: Path) -> Path:
    return path.with_name(f".{path.name}.part.validator")


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


class _Transfer:
    """The HTTP transfer of ``url`` (named in messages; fetched from :func:`resolve_url`'s)
    into ``path``'s partial file."""

    def __init__(self, url: str, path: Path, progress: bool, limit: SpeedLimit):
        self.url, self.path, self.progress, self.limit = url, path, progress, limit
        self.source = resolve_url(url)
        self.part, self.validator = _part(path), _validator(path)

    def run(self, attempts: int) -> None:
        last = None
        for _ in range(attempts):
            try:
                self._attempt()
                return
            except _Interrupted as error:
                last = error
        have = self.part.stat().st_size if self.part.exists() else 0
        if not have:
            raise DownloadError(
                f"{self.url}: could not download {self.path.name} into {self.path.parent} "
                f"({attempts} tries; last: {last})"
            )
        raise DownloadError(
            f"{self.url}: the transfer of {self.path.name} stopped {attempts} times (last: "
            f"{last}); the {have:,} bytes received are kept in {self.part}: run again to resume"
        )

    def _attempt(self) -> None:
        have = self.part.stat().st_size if self.part.exists() else 0
        try:
            response = urllib.request.urlopen(self._request(have), timeout=self._timeout())
        except urllib.error.HTTPError as error:
            if error.code == 416 and have:  # the partial file is not a prefix of this one
                self._restart()
                raise _Interrupted("the server refused to resume; starting over") from error
            raise DownloadError(
                f"{self.url} answered HTTP {error.code} {error.reason} for {self.path.name} "
                f"(to be saved in {self.path.parent})"
            ) from error
        except (urllib.error.URLError, OSError) as error:
            raise _Interrupted(f"{type(error).__name__}: {error}") from error
        with response:
            self._receive(response, have)

    def _timeout(self) -> float:
        """Seconds one socket operation may wait: within one window where there is a minimum."""
        if self.limit.min_speed == 0:
            return _TIMEOUT_S
        return min(_TIMEOUT_S, self.limit.speed_time)

    def _request(self, have: int) -> urllib.request.Request:
        headers = {"User-Agent": "gradood"}
        if have:
            headers["Range"] = f"bytes={have}-"
            if self.validator.is_file():
                headers["If-Range"] = self.validator.read_text(encoding="utf-8").strip()
        return urllib.request.Request(self.source, headers=headers)

    def _restart(self) -> None:
        _remove(self.part)
        _remove(self.validator)

    def _receive(self, response: http.client.HTTPResponse, have: int) -> None:
        if response.headers.get_content_type() == "text/html":
            self._refuse_html("an HTML page (Content-Type text/html)")
        resumed = response.status == 206 and _range_start(response) == have
        if not resumed:
            self._restart()
            have = 0
            validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
            if validator:
                self.validator.write_text(validator, encoding="utf-8")
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        if length is not None:
            self._check_space(int(length))
        self._copy(response, have, total)

    def _copy(self, response: http.client.HTTPResponse, have: int, total: int | None) -> None:
        received = have
        bar = tqdm(
            total=total,
            initial=have,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=self.path.name,
            disable=not self.progress,
            file=sys.stderr,
        )
        watch = SpeedWatch(self.limit)
        with bar, open(self.part, "ab" if have else "wb") as out:
            try:
                while chunk := response.read1(_CHUNK):  # what has arrived, up to _CHUNK
                    if received == 0 and chunk.lstrip()[:14].lower().startswith(_HTML_STARTS):
                        self._refuse_html("an HTML page")
                    self._write(out, chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                    self._check_speed(watch, received - have, out)
            except (TimeoutError, http.client.HTTPException, ConnectionError) as error:
                if isinstance(error, TimeoutError):
                    self._check_speed(watch, received - have, out)
                raise _Interrupted(f"{type(error).__name__} after {received:,} bytes") from error
        if total is not None and received != total:
            raise _Interrupted(f"connection closed after {received:,} of {total:,} bytes")

    def _check_speed(self, watch: SpeedWatch, received: int, out) -> None:
        slow = watch.slow_rate(received)
        if slow is None:
            return
        rate, seconds = slow
        out.close()
        kept = self.part.stat().st_size
        raise SlowDownloadError(
            f"{self.url}: {self.path.name} arrived at {rate:,.1f} bytes/s over the last "
            f"{seconds:,.1f} s, below the minimum of {self.limit.min_speed:,.0f} "
            f"bytes/s over {self.limit.speed_time:g} s (min_speed=, speed_time=; the harness's "
            f"--gradood-download-min-speed, --gradood-download-speed-time); the {kept:,} bytes "
            f"received are kept in {self.part}: run again to resume"
        )

    def _write(self, out, chunk: bytes) -> None:
        try:
            out.write(chunk)
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
            out.close()
            self._restart()
            raise self._no_space(None) from error

    def _check_space(self, needed: int) -> None:
        free = shutil.disk_usage(self.path.parent).free
        if needed > free:
            self._restart()
            raise self._no_space(needed, free)

    def _no_space(self, needed: int | None, free: int | None = None) -> NoSpaceError:
        sizes = f" ({needed:,} bytes needed, {free:,} free)" if needed is not None else ""
        return NoSpaceError(
            f"no space left on the device of {self.path.parent} for {self.path.name} from "
            f"{self.url}{sizes}; the partial file was removed: free space there and run again"
        )

    def _refuse_html(self, evidence: str) -> None:
        self._restart()
        raise DownloadError(
            f"{self.url} answered {evidence} instead of the file {self.path.name} (a login, error "
            f"or moved page?); nothing was saved in {self.path.parent}"
        )


def _range_start(response: http.client.HTTPResponse) -> int | None:
    """The first byte of a 206 answer's ``Content-Range: bytes a-b/n``."""
    value = response.headers.get("Content-Range", "")
    unit, _, span = value.partition(" ")
    start = span.split("-", 1)[0]
    return int(start) if unit == "bytes" and start.isdigit() else None
