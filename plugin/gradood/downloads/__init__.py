"""Downloads of published files: resumable, checked, atomic transfers (:mod:`.remote`), tar
extraction that refuses members landing outside the destination (:mod:`.extraction`), and the
SHA-256 recorded for files without a published checksum (:mod:`.records`)."""

from .extraction import ArchiveError, UnsafeArchiveError, extract_tar, is_no_space
from .records import ChecksumError, check_record, digests, recorded_sha256, write_record
from .remote import MIRROR_VARIABLE, DownloadError, NoSpaceError, RemoteFile, resolve_url

__all__ = [
    "MIRROR_VARIABLE",
    "ArchiveError",
    "ChecksumError",
    "DownloadError",
    "NoSpaceError",
    "RemoteFile",
    "UnsafeArchiveError",
    "check_record",
    "digests",
    "extract_tar",
    "is_no_space",
    "recorded_sha256",
    "resolve_url",
    "write_record",
]
