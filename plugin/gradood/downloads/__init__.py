"""Downloads of published files: resumable, checked, atomic transfers (:mod:`.remote`) that end
below a minimum rate (:mod:`~gradood.downloads.speed`), tar extraction that refuses members
landing outside the destination (:mod:`.extraction`), and the SHA-256 recorded for files
without a published checksum (:mod:`.records`)."""

from .extraction import ArchiveError, UnsafeArchiveError, extract_tar, is_no_space
from .records import ChecksumError, check_record, digests, recorded_sha256, write_record
from .remote import (
    MIRROR_VARIABLE,
    DownloadError,
    NoSpaceError,
    RemoteFile,
    SlowDownloadError,
    resolve_url,
)
from .speed import DEFAULT_MIN_SPEED, DEFAULT_SPEED_TIME, SpeedLimit, speed_limit

__all__ = [
    "DEFAULT_MIN_SPEED",
    "DEFAULT_SPEED_TIME",
    "MIRROR_VARIABLE",
    "ArchiveError",
    "ChecksumError",
    "DownloadError",
    "NoSpaceError",
    "RemoteFile",
    "SlowDownloadError",
    "SpeedLimit",
    "UnsafeArchiveError",
    "check_record",
    "digests",
    "extract_tar",
    "is_no_space",
    "recorded_sha256",
    "resolve_url",
    "speed_limit",
    "write_record",
]
