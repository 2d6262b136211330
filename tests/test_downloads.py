"""gradood.downloads against a local HTTP server (127.0.0.1): complete, resumed, stopped and
truncated transfers, wrong checksums, HTML and 404 answers, a full disk; archives whose members
would land outside the destination, with and without tarfile's data filter."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import random
import re
import socket
import tarfile
import time

import pytest

import gradood.downloads.extraction as extraction_module
import gradood.downloads.remote as remote_module
import gradood.protocols.archives as archives_module
from gradood.downloads import (
    MIRROR_VARIABLE,
    ArchiveError,
    DownloadError,
    NoSpaceError,
    RemoteFile,
    UnsafeArchiveError,
    extract_tar,
    recorded_sha256,
    resolve_url,
)
from gradood.protocols.archives import Archive, installed_from

URL = "http://files.example.org/data/archive.bin"
CONTENT = bytes(range(256)) * 4099  # about 1 MiB: more than one read chunk


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_complete_download_is_checked_and_renamed(served, tmp_path):
    served.add(URL, CONTENT)
    path = RemoteFile(URL, _md5(CONTENT)).fetch(tmp_path / "a.bin", progress=False)
    assert path.read_bytes() == CONTENT
    assert _leftovers(tmp_path) == ["a.bin"]  # no partial file, lock or record left
    assert served.requests == [(URL, None)]


def test_a_wrong_md5_keeps_nothing_and_names_the_url(served, tmp_path):
    served.add(URL, CONTENT)
    with pytest.raises(DownloadError, match="not the published") as error:
        RemoteFile(URL, _md5(b"other")).fetch(tmp_path / "a.bin", progress=False)
    assert URL in str(error.value) and "a.bin" in str(error.value)
    assert _leftovers(tmp_path) == []


def test_a_transfer_that_stops_mid_file_is_resumed(served, tmp_path):
    served.add(URL, CONTENT)
    served.stops[URL] = [100_000, 300_000]  # the first two answers stop early

    RemoteFile(URL, _md5(CONTENT)).fetch(tmp_path / "a.bin", progress=False)

    assert (tmp_path / "a.bin").read_bytes() == CONTENT
    assert served.requests == [
        (URL, None),
        (URL, "bytes=100000-"),
        (URL, "bytes=400000-"),
    ]


def test_a_server_that_keeps_stopping_leaves_a_partial_file_that_a_later_run_resumes(
    served, tmp_path
):
    served.add(URL, CONTENT)
    served.stops[URL] = [1000, 1000, 1000]
    remote = RemoteFile(URL, _md5(CONTENT))

    with pytest.raises(DownloadError, match="run again to resume") as error:
        remote.fetch(tmp_path / "a.bin", progress=False, attempts=3)
    assert URL in str(error.value)
    assert not (tmp_path / "a.bin").exists()  # a partial file is never taken for data
    assert (tmp_path / ".a.bin.part").stat().st_size == 3000

    remote.fetch(tmp_path / "a.bin", progress=False)
    assert (tmp_path / "a.bin").read_bytes() == CONTENT
    assert served.requests[-1] == (URL, "bytes=3000-")
    assert _leftovers(tmp_path) == ["a.bin"]


def test_a_resume_of_a_file_changed_on_the_server_starts_over(served, tmp_path):
    served.add(URL, CONTENT)
    served.stops[URL] = [5000]
    remote = RemoteFile(URL, _md5(CONTENT[::-1]))
    with pytest.raises(DownloadError):
        remote.fetch(tmp_path / "a.bin", progress=False, attempts=1)
    served.files[URL], served.etag = CONTENT[::-1], '"v2"'  # If-Range no longer matches

    remote.fetch(tmp_path / "a.bin", progress=False)

    assert (tmp_path / "a.bin").read_bytes() == CONTENT[::-1]


def test_a_truncated_file_fails_its_md5(served, tmp_path):
    served.add(URL, CONTENT[: len(CONTENT) // 2])  # complete transfer of a truncated file
    with pytest.raises(DownloadError, match="md5"):
        RemoteFile(URL, _md5(CONTENT)).fetch(tmp_path / "a.bin", progress=False)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("how", ["content type", "content"])
def test_an_html_answer_is_refused_naming_url_and_file(served, tmp_path, how):
    if how == "content type":
        served.html.add(URL)
    else:  # an HTML page sent as a binary file
        served.add(URL, b"\n  <!DOCTYPE HTML>\n<html><body>moved</body></html>")
    with pytest.raises(DownloadError, match="HTML") as error:
        RemoteFile(URL).fetch(tmp_path / "a.bin", progress=False)
    assert URL in str(error.value) and "a.bin" in str(error.value)
    assert _leftovers(tmp_path) == []


def test_a_404_names_url_and_file(served, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404") as error:
        RemoteFile(URL).fetch(tmp_path / "a.bin", progress=False)
    assert URL in str(error.value) and "a.bin" in str(error.value)
    assert _leftovers(tmp_path) == []


def test_an_existing_file_is_never_overwritten(served, tmp_path):
    served.add(URL, CONTENT)
    (tmp_path / "a.bin").write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        RemoteFile(URL).fetch(tmp_path / "a.bin", progress=False)
    assert (tmp_path / "a.bin").read_bytes() == b"mine"
    assert served.requests == []


def test_no_space_before_the_transfer_names_the_folder(served, tmp_path, monkeypatch):
    served.add(URL, CONTENT)
    monkeypatch.setattr(
        remote_module.shutil, "disk_usage", lambda path: type("U", (), {"free": 10})()
    )
    with pytest.raises(NoSpaceError, match=re.escape(str(tmp_path))) as error:
        RemoteFile(URL).fetch(tmp_path / "a.bin", progress=False)
    assert error.value.errno == errno.ENOSPC
    assert _leftovers(tmp_path) == []


def test_no_space_during_the_transfer_leaves_nothing_half_written(served, tmp_path, monkeypatch):
    served.add(URL, CONTENT)

    class FullDisk(io.FileIO):
        def write(self, data):
            if self.tell() + len(data) > 300_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    monkeypatch.setattr(remote_module, "open", lambda p, mode: FullDisk(p, mode), raising=False)
    with pytest.raises(NoSpaceError, match=re.escape(str(tmp_path))):
        RemoteFile(URL).fetch(tmp_path / "a.bin", progress=False)
    assert _leftovers(tmp_path) == []


def test_an_unchecksummed_file_gets_its_sha256_recorded_and_checked_later(served, tmp_path):
    served.add(URL, CONTENT)
    remote = RemoteFile(URL)  # no md5 published
    remote.fetch(tmp_path / "a.bin", progress=False)
    assert recorded_sha256(tmp_path / "a.bin") == hashlib.sha256(CONTENT).hexdigest()
    assert (tmp_path / "a.bin.sha256").read_text() == (
        f"{hashlib.sha256(CONTENT).hexdigest()}  a.bin\n"  # sha256sum's format
    )

    (tmp_path / "a.bin").unlink()  # e.g. removed to save space; the server now serves another
    served.files[URL] = CONTENT[::-1]
    with pytest.raises(DownloadError, match="recorded at its first download"):
        remote.fetch(tmp_path / "a.bin", progress=False)
    assert _leftovers(tmp_path) == ["a.bin.sha256"]


def test_the_mirror_is_test_only_and_loopback_only(monkeypatch):
    monkeypatch.delenv(MIRROR_VARIABLE, raising=False)
    assert resolve_url(URL) == URL
    monkeypatch.setenv(MIRROR_VARIABLE, "http://127.0.0.1:9/")
    assert resolve_url(URL) == "http://127.0.0.1:9/files.example.org/data/archive.bin"
    monkeypatch.setenv(MIRROR_VARIABLE, "http://mirror.example.org")
    with pytest.raises(ValueError, match="loopback"):
        resolve_url(URL)


# -- archives --------------------------------------------------------------------------------


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> bytes:
    """A tar archive of ``members``; gzipped (``"w:gz"``) with a zero timestamp in the gzip
    header, so the same members give the same bytes (and checksum) at any time."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w" if mode == "w:gz" else mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(buffer.getvalue(), mtime=0) if mode == "w:gz" else buffer.getvalue()


def _file(name: str, data: bytes = b"image") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _entry(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def _dataset(*extra) -> bytes:
    return _tar([_file("set/a/1.jpg"), _file("set/b/2.jpg"), *extra])


def test_the_test_archives_do_not_depend_on_the_clock(monkeypatch):
    """Two builds of one archive a second apart are the same bytes (the checksums that the
    download tests compare were off by the gzip header's timestamp)."""
    now = _dataset()
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)
    assert _dataset() == now


EVIL = {
    "absolute path": [_file("/tmp/gradood-evil-absolute.jpg")],
    "dot-dot": [_file("set/../../evil.jpg")],
    "symlink out (relative)": [_entry("set/link", tarfile.SYMTYPE, "../../outside")],
    "symlink out (absolute)": [_entry("set/link", tarfile.SYMTYPE, "/etc")],
    "hard link out": [_entry("set/hard", tarfile.LNKTYPE, "../outside.txt")],
    "hard link absolute": [_entry("set/hard", tarfile.LNKTYPE, "/etc/passwd")],
    "character device": [_entry("set/dev", tarfile.CHRTYPE)],
    "block device": [_entry("set/blk", tarfile.BLKTYPE)],
    "fifo": [_entry("set/fifo", tarfile.FIFOTYPE)],
}


@pytest.fixture(params=["data filter", "no data filter"])
def filter_or_not(request, monkeypatch):
    """Each archive test with tarfile's data filter (Python >= 3.10.12 / 3.11.4) and without
    it, as on older Pythons (then gradood's own checks alone refuse)."""
    if request.param == "no data filter":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python's tarfile has no data filter")
    return request.param


@pytest.mark.parametrize("kind", sorted(EVIL))
def test_an_archive_member_landing_outside_is_refused_and_nothing_extracted(
    tmp_path, filter_or_not, kind
):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(_dataset(*EVIL[kind]))
    destination = tmp_path / "out" / "deep"

    with pytest.raises(UnsafeArchiveError, match="nothing was extracted") as error:
        extract_tar(archive, destination)

    assert repr(EVIL[kind][0][0].name) in str(error.value)  # names the member
    assert not destination.exists()
    assert _leftovers(tmp_path) == ["evil.tar.gz"]
    assert not os.path.exists("/tmp/gradood-evil-absolute.jpg")


def test_links_chained_through_an_extracted_link_are_refused(tmp_path, filter_or_not):
    # each link points inside on its own; the second escapes through the first ('up' is '.')
    members = [_entry("up", tarfile.SYMTYPE, "."), _entry("escape", tarfile.SYMTYPE, "up/..")]
    archive = tmp_path / "chain.tar"
    archive.write_bytes(_tar(members, "w"))
    with pytest.raises(UnsafeArchiveError, match="'escape'"):
        extract_tar(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "escape").exists()


def test_links_inside_the_destination_are_extracted(tmp_path, filter_or_not):
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(_dataset(_entry("set/c", tarfile.SYMTYPE, "a")))
    extract_tar(archive, tmp_path / "out")
    assert (tmp_path / "out" / "set" / "c" / "1.jpg").read_bytes() == b"image"


def test_a_truncated_archive_is_an_archive_error_naming_it(tmp_path):
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(_dataset()[:40])
    with pytest.raises(ArchiveError, match=re.escape("cut.tar.gz")):
        extract_tar(archive, tmp_path / "out")


# -- installing a dataset from an archive ------------------------------------------------------

SUBSET = "http://pages.example.edu/ood/Subset.tar.gz"


def test_install_downloads_extracts_notes_and_records_once_confirmed(served, tmp_path):
    served.add(SUBSET, _dataset())
    archive = Archive(SUBSET, "Subset.tar.gz", md5=None, member="set")
    archive.install(tmp_path / "Subset", progress=False)

    assert sorted(p.name for p in (tmp_path / "Subset").rglob("*.jpg")) == ["1.jpg", "2.jpg"]
    sha256 = hashlib.sha256(_dataset()).hexdigest()
    note = {"url": SUBSET, "archive": "Subset.tar.gz", "md5": None, "sha256": sha256}
    # no published checksum: nothing recorded before the dataset's counts check out
    assert recorded_sha256(tmp_path / "Subset.tar.gz") is None
    assert installed_from(tmp_path / "Subset") == {**note, "unchecked": True, "downloaded": True}
    assert archive.unchecked(tmp_path / "Subset")
    archive.confirm(tmp_path / "Subset", tmp_path)
    assert recorded_sha256(tmp_path / "Subset.tar.gz") == sha256
    assert installed_from(tmp_path / "Subset") == note
    assert not archive.unchecked(tmp_path / "Subset")
    assert not [p for p in tmp_path.iterdir() if p.is_dir() and p.name != "Subset"]  # staging


def test_install_checks_an_existing_archive_against_its_record(served, tmp_path):
    served.add(SUBSET, _dataset())
    archive = Archive(SUBSET, "Subset.tar.gz", md5=None, member="set")
    archive.install(tmp_path / "Subset", progress=False)
    archive.confirm(tmp_path / "Subset", tmp_path)
    (tmp_path / "Subset").rename(tmp_path / "moved")
    (tmp_path / "Subset.tar.gz").write_bytes(_dataset(_file("set/c/3.jpg")))  # changed

    with pytest.raises(FileExistsError, match="recorded at its first download"):
        archive.install(tmp_path / "Subset", progress=False)
    assert not (tmp_path / "Subset").exists()


def test_install_refuses_an_evil_archive_from_the_server(served, tmp_path, filter_or_not):
    served.add(SUBSET, _dataset(*EVIL["dot-dot"]))
    with pytest.raises(UnsafeArchiveError, match=re.escape("set/../../evil.jpg")):
        Archive(SUBSET, "Subset.tar.gz", None, member="set").install(tmp_path / "Subset", False)
    assert not (tmp_path / "Subset").exists()
    assert not (tmp_path.parent / "evil.jpg").exists()
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []  # no staging left


def test_install_of_a_truncated_unchecksummed_archive_installs_nothing(served, tmp_path):
    whole = _dataset(_file("set/c/3.jpg", random.Random(0).randbytes(50_000)))
    served.add(SUBSET, whole[: len(whole) // 2])  # the server's file is cut: no checksum tells
    with pytest.raises(ArchiveError, match=re.escape("Subset.tar.gz")):
        Archive(SUBSET, "Subset.tar.gz", None, member="set").install(tmp_path / "Subset", False)
    assert not (tmp_path / "Subset").exists()


def test_no_space_while_extracting_names_the_folder_and_removes_the_extraction(
    served, tmp_path, monkeypatch
):
    served.add(SUBSET, _dataset())

    def full_disk(archive, destination, progress):
        (destination / "half.jpg").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archives_module, "extract_tar", full_disk)
    with pytest.raises(NoSpaceError, match=re.escape(str(tmp_path))):
        Archive(SUBSET, "Subset.tar.gz", None, member="set").install(tmp_path / "Subset", False)
    assert _leftovers(tmp_path) == ["Subset.tar.gz"]  # its SHA-256 recorded once checked


def test_an_archive_larger_than_the_free_space_is_refused_before_extracting(
    served, tmp_path, monkeypatch
):
    served.add(SUBSET, _dataset())
    Archive(SUBSET, "Subset.tar.gz", None, member="set").obtain(tmp_path, progress=False)
    monkeypatch.setattr(
        extraction_module.shutil, "disk_usage", lambda path: type("U", (), {"free": 3})()
    )
    with pytest.raises(NoSpaceError, match=re.escape(str(tmp_path))):
        Archive(SUBSET, "Subset.tar.gz", None, member="set").install(tmp_path / "Subset", False)
    assert _leftovers(tmp_path) == ["Subset.tar.gz"]  # its SHA-256 recorded once checked


def test_a_server_that_cannot_be_reached_names_url_and_file(tmp_path, monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as bound:  # bound, not listening: connections to it are refused
        bound.bind(("127.0.0.1", 0))
        monkeypatch.setenv(MIRROR_VARIABLE, f"http://127.0.0.1:{bound.getsockname()[1]}")
        with pytest.raises(DownloadError, match=re.escape("could not download a.bin")) as error:
            RemoteFile(URL).fetch(tmp_path / "a.bin", progress=False, attempts=2)
    assert URL in str(error.value)
    assert _leftovers(tmp_path) == []


def test_an_extraction_left_by_a_killed_process_is_removed_by_the_next(served, tmp_path):
    served.add(SUBSET, _dataset())
    stale = tmp_path / ".Subset.k1ll3d.gradood-partial"
    (stale / "set" / "a").mkdir(parents=True)
    (stale / "set" / "a" / "half.jpg").write_bytes(b"half")
    Archive(SUBSET, "Subset.tar.gz", None, member="set").install(tmp_path / "Subset", False)
    assert not stale.exists()
    assert sorted(p.name for p in (tmp_path / "Subset").rglob("*.jpg")) == ["1.jpg", "2.jpg"]
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["Subset"]


def _install_after(barrier, archive: Archive, destination, results, rank) -> None:
    barrier.wait(timeout=30)  # both found the dataset absent; now both install it
    try:
        archive.install(destination, progress=False)
        (results / f"{rank}.ok").write_text("")
    finally:
        os._exit(0)


def test_two_processes_installing_one_dataset_both_succeed_once(tmp_path):
    """Two runs (or ranks) that both found a dataset absent: one extracts it, the other waits
    and takes it; neither fails on the other's folder, nothing half-made is left."""
    import multiprocessing

    path = tmp_path / "data" / "big.tar.gz"
    path.parent.mkdir()
    with tarfile.open(path, "w:gz") as tar:
        for index in range(3000):  # long enough to extract that the two overlap
            member = tarfile.TarInfo(f"big/images/{index % 30}/{index}.jpg")
            member.size = 64
            tar.addfile(member, io.BytesIO(bytes(64)))
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    archive = Archive("http://127.0.0.1:9/big.tar.gz", path.name, md5, member="big/images")
    destination = tmp_path / "data" / "big"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    processes = [
        context.Process(target=_install_after, args=(barrier, archive, destination, tmp_path, r))
        for r in (0, 1)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert sorted(p.name for p in tmp_path.glob("*.ok")) == ["0.ok", "1.ok"]
    assert len(list(destination.rglob("*.jpg"))) == 3000
    assert installed_from(destination)["md5"] == md5
    assert not list((tmp_path / "data").glob("*gradood-partial"))
