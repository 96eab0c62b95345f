"""Tests for the verified downloader (medmoe.data.download), the catalogue (medmoe.data.sources)
and the CLI (data_scripts/fetch.py).

Nothing leaves the machine: downloads come from an HTTP server on 127.0.0.1 started per test, or
from file:// URLs. The server understands ``Range`` (206 + Content-Range) and can be told to cut a
response short, to ignore ``Range``, or to answer with an error status.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import subprocess
import sys
import tarfile
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from medmoe.data.download import (
    ChecksumError,
    DownloadError,
    ManualDownloadRequired,
    UnsafeArchiveError,
    download,
    extract,
    md5sum,
    part_path,
    sha256sum,
)
from medmoe.data.sources import SOURCES, RemoteFile, Source, access_table, fetch, get_source

REPO = Path(__file__).resolve().parent.parent
FETCH_CLI = REPO / "data_scripts" / "fetch.py"

PAYLOAD = bytes(range(256)) * 1000  # 256,000 bytes, every byte value, easy to compare
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


# --------------------------------------------------------------------------------------------------
# A tiny local HTTP server
# --------------------------------------------------------------------------------------------------


@dataclass
class ServerState:
    """What the server serves, how it misbehaves, and what it was asked."""

    files: dict[str, bytes] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)  # path -> error status to answer with
    ignore_range: set[str] = field(default_factory=set)  # paths answered 200 even with Range
    fail_after: dict[str, int] = field(default_factory=dict)  # path -> cut the *next* response here
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    base_url: str = ""

    def url(self, path: str) -> str:
        return self.base_url + path

    def ranges(self, path: str) -> list[str | None]:
        return [rng for p, rng in self.requests if p == path]


class RangeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: a cut response is an EOF

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (name fixed by http.server)
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        rng = self.headers.get("Range")
        state.requests.append((self.path, rng))

        if self.path in state.status:
            code = state.status[self.path]
            body = f"error {code}".encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        data = state.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return

        start = 0
        if rng and self.path not in state.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))  # always the full length promised
        self.end_headers()
        cut = state.fail_after.pop(self.path, None)
        self.wfile.write(body if cut is None else body[:cut])
        self.wfile.flush()


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.daemon_threads = True
    state = ServerState(base_url=f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------------------------------
# download()
# --------------------------------------------------------------------------------------------------


def test_download_with_matching_sha(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    dest = tmp_path / "sub" / "data.bin"
    out = download(server.url("/data.bin"), dest, sha256=PAYLOAD_SHA, progress=False)
    assert out == dest
    assert dest.read_bytes() == PAYLOAD
    assert not part_path(dest).exists()
    assert server.ranges("/data.bin") == [None]


def test_sha_mismatch_leaves_nothing_and_names_both_digests(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    dest = tmp_path / "data.bin"
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as info:
        download(server.url("/data.bin"), dest, sha256=wrong, progress=False)
    message = str(info.value)
    assert wrong in message and PAYLOAD_SHA in message
    assert str(dest) in message
    assert info.value.expected == wrong and info.value.actual == PAYLOAD_SHA
    assert not dest.exists()
    assert not part_path(dest).exists()


def test_interrupted_download_resumes_with_range(server, tmp_path):
    server.files["/big.bin"] = PAYLOAD
    server.fail_after["/big.bin"] = 100_000
    dest = tmp_path / "big.bin"

    with pytest.raises(DownloadError, match="call again to resume"):
        download(server.url("/big.bin"), dest, sha256=PAYLOAD_SHA, progress=False)
    assert not dest.exists()
    assert part_path(dest).stat().st_size == 100_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin.part"]

    download(server.url("/big.bin"), dest, sha256=PAYLOAD_SHA, progress=False)
    assert server.ranges("/big.bin") == [None, "bytes=100000-"]
    assert dest.read_bytes() == PAYLOAD
    assert not part_path(dest).exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    server.ignore_range.add("/data.bin")
    dest = tmp_path / "data.bin"
    part_path(dest).write_bytes(b"junk that must not survive")

    download(server.url("/data.bin"), dest, sha256=PAYLOAD_SHA, progress=False)
    assert server.ranges("/data.bin") == ["bytes=26-"]
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_file_is_finished_on_416(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    dest = tmp_path / "data.bin"
    part_path(dest).write_bytes(PAYLOAD)  # a previous run died just before the rename
    download(server.url("/data.bin"), dest, sha256=PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_resume_false_starts_over(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    dest = tmp_path / "data.bin"
    part_path(dest).write_bytes(b"old")
    download(server.url("/data.bin"), dest, resume=False, progress=False)
    assert server.ranges("/data.bin") == [None]
    assert dest.read_bytes() == PAYLOAD


def test_404_names_the_url(server, tmp_path):
    url = server.url("/missing.bin")
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "missing.bin", progress=False)
    assert url in str(info.value) and "404" in str(info.value)
    assert info.value.status == 404
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code", [401, 403])
def test_401_403_point_to_login_and_manual_route(server, tmp_path, code):
    server.status["/private.zip"] = code
    with pytest.raises(DownloadError) as info:
        download(server.url("/private.zip"), tmp_path / "private.zip", progress=False)
    message = str(info.value)
    assert str(code) in message and server.url("/private.zip") in message
    assert "login" in message and "manual" in message
    assert not (tmp_path / "private.zip").exists()


def test_unreachable_host_is_a_download_error(tmp_path):
    # Port 9 on 127.0.0.1: nothing listens there on a test machine, so the connection is refused.
    with pytest.raises(DownloadError, match="could not reach"):
        download("http://127.0.0.1:9/x.bin", tmp_path / "x.bin", timeout=5, progress=False)


def test_file_url_is_copied_and_verified(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "copy.bin"
    download(src.as_uri(), dest, sha256=PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD

    with pytest.raises(ChecksumError):
        download(src.as_uri(), tmp_path / "bad.bin", sha256="1" * 64, progress=False)
    assert not (tmp_path / "bad.bin").exists()

    with pytest.raises(DownloadError, match="no such file"):
        download((tmp_path / "nope.bin").as_uri(), tmp_path / "nope-copy.bin", progress=False)


def test_md5_is_supported(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    good = hashlib.md5(PAYLOAD).hexdigest()
    assert md5sum(src) == good
    download(src.as_uri(), tmp_path / "a.bin", md5=good, progress=False)
    with pytest.raises(ChecksumError, match="md5"):
        download(src.as_uri(), tmp_path / "b.bin", md5="f" * 32, progress=False)


def test_existing_good_file_is_not_downloaded_again(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    dest = tmp_path / "data.bin"
    download(server.url("/data.bin"), dest, sha256=PAYLOAD_SHA, progress=False)
    download(server.url("/data.bin"), dest, sha256=PAYLOAD_SHA, progress=False)
    assert len(server.requests) == 1


def test_existing_bad_file_is_not_overwritten_silently(server, tmp_path):
    server.files["/data.bin"] = PAYLOAD
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"something else")
    with pytest.raises(ChecksumError, match="already exists"):
        download(server.url("/data.bin"), dest, sha256=PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == b"something else"
    assert server.requests == []

    download(server.url("/data.bin"), dest, sha256=PAYLOAD_SHA, overwrite=True, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_bad_checksum_string_is_rejected_before_downloading(server, tmp_path):
    with pytest.raises(ValueError, match="64 hex"):
        download(server.url("/x"), tmp_path / "x", sha256="abc", progress=False)
    assert server.requests == []


def test_sha256sum_streams_large_files(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(PAYLOAD * 10)  # 2.5 MB: several 1 MiB chunks
    assert sha256sum(path) == hashlib.sha256(PAYLOAD * 10).hexdigest()


# --------------------------------------------------------------------------------------------------
# extract()
# --------------------------------------------------------------------------------------------------


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _targz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_extract_zip_and_targz(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"ds/img/1.png": b"png", "ds/readme.txt": b"hi"})
    out = extract(archive, tmp_path / "zip_out")
    assert (out / "ds" / "img" / "1.png").read_bytes() == b"png"

    archive = _targz(tmp_path / "b.tar.gz", {"vol/ct.nii.gz": b"nifti"})
    existing = tmp_path / "zip_out"  # an existing folder: the entries are moved in
    extract(archive, existing)
    assert (existing / "vol" / "ct.nii.gz").read_bytes() == b"nifti"
    assert sorted(p.name for p in existing.iterdir()) == ["ds", "vol"]  # no temp folder left

    with pytest.raises(FileExistsError, match="vol"):
        extract(archive, existing)
    extract(archive, existing, overwrite=True)


@pytest.mark.parametrize("evil", ["../evil.txt", "ok/../../evil.txt", "/tmp/evil.txt"])
@pytest.mark.parametrize("make", [_zip, _targz], ids=["zip", "tar.gz"])
def test_extract_refuses_path_traversal(tmp_path, evil, make):
    suffix = ".zip" if make is _zip else ".tar.gz"
    archive = make(tmp_path / f"evil{suffix}", {"fine.txt": b"ok", evil: b"pwned"})
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match="refusing"):
        extract(archive, dest)
    assert not dest.exists()
    assert not (tmp_path / "evil.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == [archive.name]  # no staging folder left behind


def test_extract_refuses_symlink_out_of_folder(tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("data/passwd")
        info.type = tarfile.SYMTYPE
        info.linkname = "../../etc/passwd"
        tf.addfile(info)
    with pytest.raises(UnsafeArchiveError, match="symlink"):
        extract(archive, tmp_path / "out")


# --------------------------------------------------------------------------------------------------
# Source / fetch()
# --------------------------------------------------------------------------------------------------

FAKE_XLSX = b"PK\x03\x04 not really a workbook"
FAKE_SHA = hashlib.sha256(FAKE_XLSX).hexdigest()


def _manual_source(**overrides) -> Source:
    fields = dict(
        name="toy_manual",
        description="a toy dataset behind a login",
        access="manual",
        files=(RemoteFile("Train_text.xlsx", sha256=FAKE_SHA), RemoteFile("extra.xlsx", optional=True)),
        homepage="https://example.org/toy",
        licence="CC BY 4.0",
        target="toy/text",
        instructions="Log in at example.org, accept the data-use agreement, download Train_text.xlsx.",
    )
    fields.update(overrides)
    return Source(**fields)


def test_fetch_manual_source_missing_files_explains_where(tmp_path):
    source = _manual_source()
    with pytest.raises(ManualDownloadRequired) as info:
        fetch(source, tmp_path)
    message = str(info.value)
    expected_path = tmp_path / "toy" / "text" / "Train_text.xlsx"
    assert str(expected_path) in message
    assert "example.org/toy" in message and "data-use agreement" in message
    assert FAKE_SHA in message
    assert "extra.xlsx" not in message.split("exactly these paths")[1]  # optional: not demanded
    assert info.value.missing == (expected_path,)


def test_fetch_manual_source_with_files_placed(tmp_path):
    source = _manual_source()
    folder = tmp_path / "toy" / "text"
    folder.mkdir(parents=True)
    (folder / "Train_text.xlsx").write_bytes(FAKE_XLSX)
    assert fetch(source, tmp_path) == folder

    (folder / "Train_text.xlsx").write_bytes(b"a different file")
    with pytest.raises(ChecksumError) as info:
        fetch(source, tmp_path)
    assert FAKE_SHA in str(info.value)
    assert fetch(source, tmp_path, verify=False) == folder


def test_unverified_pin_says_so_on_mismatch(tmp_path):
    source = _manual_source(files=(RemoteFile("Train_text.xlsx", sha256="a" * 64, checksum_verified=False),))
    folder = tmp_path / "toy" / "text"
    folder.mkdir(parents=True)
    (folder / "Train_text.xlsx").write_bytes(FAKE_XLSX)
    with pytest.raises(ChecksumError, match="third-party"):
        fetch(source, tmp_path)


def test_fetch_manual_archive_is_extracted_once(tmp_path):
    source = _manual_source(
        files=(RemoteFile("toy.zip", extract=True),), expect=("toy_images/1.png",), access="token"
    )
    folder = tmp_path / "toy" / "text"
    folder.mkdir(parents=True)
    _zip(folder / "toy.zip", {"toy_images/1.png": b"png"})
    fetch(source, tmp_path, use_kaggle_cli=False)
    assert (folder / "toy_images" / "1.png").read_bytes() == b"png"
    (folder / "toy.zip").unlink()  # once extracted, the archive may go
    fetch(source, tmp_path, use_kaggle_cli=False)


def test_fetch_open_source_from_local_server(server, tmp_path):
    archive = _zip(tmp_path / "weights.zip", {"model/pytorch_model.bin": b"weights"})
    server.files["/weights.zip"] = archive.read_bytes()
    server.files["/readme.txt"] = b"read me"
    source = Source(
        name="toy_open",
        description="toy open checkpoint",
        access="open",
        files=(
            RemoteFile("weights.zip", url=server.url("/weights.zip"), sha256=sha256sum(archive), extract=True),
            RemoteFile("readme.txt", url=server.url("/readme.txt")),
        ),
        homepage="https://example.org",
        licence="MIT",
        target="weights/toy",
    )
    root = tmp_path / "data"
    folder = fetch(source, root, progress=False)
    assert folder == root / "weights" / "toy"
    assert (folder / "model" / "pytorch_model.bin").read_bytes() == b"weights"
    assert (folder / "readme.txt").read_bytes() == b"read me"

    n_requests = len(server.requests)
    fetch(source, root, progress=False)  # everything present: no network, no second extraction
    assert len(server.requests) == n_requests


def test_source_validation():
    with pytest.raises(ValueError, match="no URL"):
        Source(name="x", description="", access="open", files=(RemoteFile("a.bin"),),
               homepage="", licence="", target="x")
    with pytest.raises(ValueError, match="access"):
        _manual_source(access="sometimes")
    with pytest.raises(ValueError, match="instructions"):
        _manual_source(instructions="")
    with pytest.raises(ValueError, match="relative"):
        _manual_source(target="../outside")
    with pytest.raises(ValueError, match="archive"):
        RemoteFile("a.bin", extract=True)


def test_unknown_name_lists_known_names():
    with pytest.raises(KeyError) as info:
        get_source("no_such_dataset")
    assert "qata_cov19" in str(info.value) and "sam_vit_b" in str(info.value)
    assert get_source("QaTa-COV19") is SOURCES["qata_cov19"]


def test_catalogue_has_the_required_entries():
    required = {
        "qata_cov19": "token", "lvit_qata_text": "manual", "lvit_mosmed_text": "manual",
        "mosmed_plus": "token", "sam_vit_b": "open", "chaos": "open", "amos22": "open",
        "isles22": "open", "totalsegmentator_v201": "open", "medclip_vit": "open",
        "chexpert_5x200": "manual",
    }
    for name, access in required.items():
        assert SOURCES[name].access == access, name
    assert SOURCES["sam_vit_b"].files[0].sha256 is None
    assert SOURCES["totalsegmentator_v201"].files[0].md5 == "fe250e5718e0a3b5df4c4ea9d58a62fe"
    assert all(not f.checksum_verified for f in SOURCES["lvit_mosmed_text"].files)


def test_readme_table_matches_catalogue():
    readme = (REPO / "data_scripts" / "README.md").read_text(encoding="utf-8")
    table = readme.split("<!-- sources-table:start -->\n")[1].split("<!-- sources-table:end -->")[0]
    assert table.strip() == access_table().strip(), (
        "data_scripts/README.md is out of date: paste the output of "
        "`python data_scripts/fetch.py --list --markdown` between the sources-table markers"
    )


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli():
    """The program behind ``data_scripts/fetch.py``, so its ``main(argv)`` runs in-process (fast)."""
    return importlib.import_module("medmoe.data.fetch_cli")


def test_cli_list_as_a_script():
    # One real subprocess, to prove the script runs on its own; the other CLI tests call main().
    result = subprocess.run(
        [sys.executable, str(FETCH_CLI), "--list"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for name in ("qata_cov19", "sam_vit_b", "amos22"):
        assert name in result.stdout
    assert "token" in result.stdout and "manual" in result.stdout and "open" in result.stdout


def test_cli_unknown_name_fails_with_the_list(cli, capsys):
    assert cli.main(["definitely_not_a_dataset", "--root", "unused"]) != 0
    err = capsys.readouterr().err
    assert "definitely_not_a_dataset" in err and "qata_cov19" in err


def test_cli_manual_source_exits_nonzero_with_the_path(cli, capsys, tmp_path):
    assert cli.main(["lvit_mosmed_text", "--root", str(tmp_path), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert str(tmp_path / "lvit_text" / "mosmed_plus" / "Test_text_MosMedData+.xlsx") in err
    assert "third-party" in err


def test_cli_fetches_an_open_source(cli, capsys, server, tmp_path, monkeypatch):
    server.files["/w.bin"] = PAYLOAD
    toy = Source(name="toy_cli", description="toy", access="open", homepage="", licence="MIT",
                 files=(RemoteFile("w.bin", url=server.url("/w.bin"), sha256=PAYLOAD_SHA),), target="toy")
    monkeypatch.setitem(SOURCES, "toy_cli", toy)
    assert cli.main(["toy_cli", "--root", str(tmp_path), "--quiet"]) == 0
    assert (tmp_path / "toy" / "w.bin").read_bytes() == PAYLOAD
    assert "ready" in capsys.readouterr().out

    assert cli.main(["toy_cli", "--show", "--root", str(tmp_path)]) == 0
    assert PAYLOAD_SHA in capsys.readouterr().out
