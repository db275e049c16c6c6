"""The kept-store (lockd.evidence.cache.store): documents written as JSON, zlib-compressed or plain,
atomically, and read back alike when trusted, within their limit once inflated, well formed and
carrying the fields asked for; a directory trusted only when this user's, writable by nobody
else and no symbolic link; a full disk, an untrusted directory or an unusable entry logged once
and never raised; at most so many entries, the least recently used going first."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from lockd.evidence.cache import store as store_module
from lockd.evidence.cache.store import Store

REPO = Path(__file__).resolve().parents[4]
FORMAT = "lockd-test-cache/1"
FIELDS = {"container": "c" * 64}
DOCUMENT = {
    **FIELDS,
    "format": FORMAT,
    "observed_at": "2026-01-02T03:04:05+00:00",
    "paths": ["/a", "/b"] * 50,
}
JSON = json.dumps(DOCUMENT, separators=(",", ":"), sort_keys=True).encode()
LIMIT = 64 * 1024


@pytest.fixture(autouse=True)
def problems(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> pytest.LogCaptureFixture:
    """The problems the store logs in this test (``.messages``; none reported before it)."""
    monkeypatch.setattr(store_module, "_reported", set())
    caplog.set_level(logging.WARNING, logger="lockd.cache")
    return caplog


def store_at(
    directory: Path, *, limit: int = LIMIT, keep: int = 8, compress: bool = False
) -> Store:
    return Store(directory, FORMAT, limit, keep, compress=compress)


# --- documents -------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_a_saved_document_loads_compressed_or_plain(tmp_path: Path, compress: bool) -> None:
    store = store_at(tmp_path / "cache", compress=compress)
    assert store.save("f.json", DOCUMENT)
    path = tmp_path / "cache" / "f.json"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert path.read_bytes()[:1] == (b"\x78" if compress else b"{")
    assert store.load("f.json", FIELDS) == DOCUMENT


def test_a_document_saved_uncompressed_is_canonical_json_with_its_format(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    store.save("f.json", {k: v for k, v in DOCUMENT.items() if k != "format"})
    assert (tmp_path / "f.json").read_bytes() == JSON


@pytest.mark.parametrize(
    "data",
    [
        JSON,
        json.dumps(DOCUMENT, indent=2).encode(),
        zlib.compress(JSON),
        zlib.compress(JSON, 9),
        zlib.compress(JSON, 0),
    ],
)
def test_a_document_written_by_hand_loads(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "f.json").write_bytes(data)
    assert store_at(tmp_path).load("f.json", FIELDS) == DOCUMENT


def test_a_compressed_document_inflating_beyond_max_bytes_is_not_loaded(tmp_path: Path) -> None:
    (tmp_path / "f.json").write_bytes(zlib.compress(JSON))
    assert (tmp_path / "f.json").stat().st_size < len(JSON) - 1  # within the limit on disk
    assert store_at(tmp_path, limit=len(JSON)).load("f.json", FIELDS) == DOCUMENT
    assert store_at(tmp_path, limit=len(JSON) - 1).load("f.json", FIELDS) is None


def test_a_zip_bomb_is_not_loaded(tmp_path: Path) -> None:
    bomb = b'{"format": "lockd-test-cache/1", "x": "' + b"0" * 20_000_000 + b'"}'
    (tmp_path / "f.json").write_bytes(zlib.compress(bomb, 9))
    assert (tmp_path / "f.json").stat().st_size < LIMIT
    assert store_at(tmp_path).load("f.json", {}) is None


@pytest.mark.parametrize(
    "data",
    [
        b"\x78",
        b"\x78garbage",
        b"\x78\x9c" + b"\x00" * 32,
        zlib.compress(JSON)[:-4],  # no checksum
        zlib.compress(JSON)[: len(zlib.compress(JSON)) // 2],
        zlib.compress(JSON)[:-1] + bytes([zlib.compress(JSON)[-1] ^ 1]),  # a wrong checksum
        zlib.compress(JSON) + b"tail",
        zlib.compress(b"[1, 2]"),
        zlib.compress(b'"text"'),
        zlib.compress(b"{not json"),
        zlib.compress(b'{"format": "\xff"}'),
        zlib.compress(zlib.compress(JSON)),
        b"{not json",
        b"\xff\xfe",
        b"[1, 2]",
        b"[" * 100_000,
    ],
)
def test_a_corrupt_entry_is_not_loaded_and_said_once(
    tmp_path: Path, data: bytes, problems: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "f.json").write_bytes(data)
    (tmp_path / "g.json").write_bytes(data)
    store = store_at(tmp_path)
    assert store.load("f.json", {}) is None
    assert store.load("g.json", {}) is None
    assert store.load("f.json", {}) is None
    [said] = problems.messages
    assert str(tmp_path / "f.json") in said and "computes it again" in said
    assert store.save("f.json", DOCUMENT)  # and the next save replaces it
    assert store.load("f.json", FIELDS) == DOCUMENT


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize(
    "fields",
    [{**FIELDS, "format": "lockd-test-cache/0"}, {"container": "d" * 64}, {**FIELDS, "key": "k1"}],
)
def test_a_document_with_other_fields_is_not_loaded_nor_marked_used_nor_said(
    tmp_path: Path, compress: bool, fields: dict[str, str], problems: pytest.LogCaptureFixture
) -> None:
    store = store_at(tmp_path, compress=compress)
    store.save("f.json", DOCUMENT)
    os.utime(tmp_path / "f.json", (1000, 1000))
    assert store.load("f.json", fields) is None
    assert (tmp_path / "f.json").stat().st_mtime == 1000
    assert store.load("f.json", FIELDS) == DOCUMENT
    assert (tmp_path / "f.json").stat().st_mtime != 1000  # used: now the most recent
    assert problems.messages == []  # another's document (an older format): no problem


def test_a_document_of_another_format_is_not_loaded(tmp_path: Path) -> None:
    store_at(tmp_path).save("f.json", DOCUMENT)
    assert Store(tmp_path, "lockd-test-cache/2", LIMIT, 8).load("f.json", FIELDS) is None


@pytest.mark.parametrize("compress", [True, False])
def test_a_document_whose_json_exceeds_max_bytes_is_not_written(
    tmp_path: Path, compress: bool
) -> None:
    assert len(zlib.compress(JSON)) < len(JSON) - 1  # compressed, it would fit
    assert not store_at(tmp_path, limit=len(JSON) - 1, compress=compress).save("f.json", DOCUMENT)
    assert not (tmp_path / "f.json").exists()
    store = store_at(tmp_path, limit=len(JSON), compress=compress)
    assert store.save("f.json", DOCUMENT)
    assert store.load("f.json", FIELDS) == DOCUMENT


def test_beyond_max_files_the_least_recently_used_goes(tmp_path: Path) -> None:
    store = store_at(tmp_path, keep=2, compress=True)
    for n in range(2):
        store.save(f"{n}.json", DOCUMENT)
        os.utime(tmp_path / f"{n}.json", (1000 * (n + 1), 1000 * (n + 1)))
    assert store.load("0.json", FIELDS) == DOCUMENT  # used: now the most recent
    store.save("2.json", DOCUMENT)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.json", "2.json"]


def test_a_read_is_capped_and_a_write_atomic(tmp_path: Path) -> None:
    store = store_at(tmp_path, limit=10)
    (tmp_path / "f.json").write_bytes(b"0123456789")
    (tmp_path / "f.json").chmod(0o644)
    assert store.read("f.json") == b"0123456789"
    assert store_at(tmp_path, limit=9).read("f.json") is None
    assert store.read("missing.json") is None
    assert store.write("f.json", b"one") and store.write("f.json", b"two")
    assert (tmp_path / "f.json").read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


@pytest.mark.parametrize("name", ["", ".hidden.json", "../f.json", "a/b.json", "a\0.json"])
def test_a_name_that_is_no_entry_name_is_neither_read_nor_written(
    tmp_path: Path, name: str
) -> None:
    store = store_at(tmp_path / "cache")
    assert not store.write(name, b"{}")
    assert store.read(name) is None
    assert store.load(name, {}) is None
    assert not (tmp_path / "cache").exists()


# --- what is trusted ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602])
def test_an_entry_others_can_write_is_not_trusted(
    tmp_path: Path, mode: int, problems: pytest.LogCaptureFixture
) -> None:
    store = store_at(tmp_path)
    store.save("f.json", DOCUMENT)
    (tmp_path / "f.json").chmod(mode)
    assert store.load("f.json", FIELDS) is None
    assert len(problems.messages) == 1 and "writable by others" in problems.messages[0]
    (tmp_path / "f.json").chmod(0o600)
    assert store.load("f.json", FIELDS) == DOCUMENT


@pytest.mark.usefixtures("root_required")  # chown
def test_an_entry_of_another_user_is_not_trusted(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    store.save("f.json", DOCUMENT)
    os.chown(tmp_path / "f.json", 65534, 65534)
    assert store.load("f.json", FIELDS) is None


def test_an_entry_that_is_a_link_or_no_file_is_not_followed(
    tmp_path: Path, problems: pytest.LogCaptureFixture
) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_bytes(JSON)
    store = store_at(tmp_path / "cache")
    store.save("g.json", DOCUMENT)
    os.symlink(elsewhere, tmp_path / "cache" / "f.json")
    (tmp_path / "cache" / "d.json").mkdir()
    assert store.load("f.json", FIELDS) is None
    assert store.load("d.json", FIELDS) is None
    assert len(problems.messages) == 1  # one per directory
    assert store.load("g.json", FIELDS) == DOCUMENT


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777])
def test_a_directory_others_can_write_is_not_trusted(
    tmp_path: Path, mode: int, problems: pytest.LogCaptureFixture
) -> None:
    store = store_at(tmp_path / "cache")
    assert store.save("f.json", DOCUMENT)
    (tmp_path / "cache").chmod(mode)
    assert store.load("f.json", FIELDS) is None
    assert not store.save("g.json", DOCUMENT)
    assert not (tmp_path / "cache" / "g.json").exists()
    [said] = problems.messages
    assert f"{tmp_path / 'cache'}" in said and "writable by others" in said
    assert "LOCKD_CACHE_DIR" in said


@pytest.mark.usefixtures("root_required")  # chown
def test_a_directory_of_another_user_is_not_trusted(
    tmp_path: Path, problems: pytest.LogCaptureFixture
) -> None:
    store = store_at(tmp_path / "cache")
    assert store.save("f.json", DOCUMENT)
    os.chown(tmp_path / "cache", 65534, 65534)
    assert store.load("f.json", FIELDS) is None
    assert not store.save("g.json", DOCUMENT)
    assert len(problems.messages) == 1 and "owned by uid 65534" in problems.messages[0]


def test_a_directory_above_others_can_write_is_not_trusted_unless_sticky(
    tmp_path: Path, problems: pytest.LogCaptureFixture
) -> None:
    store = store_at(tmp_path / "root" / "cache")
    assert store.save("f.json", DOCUMENT)
    (tmp_path / "root").chmod(0o1777)  # as /tmp: nobody else can rename what is ours
    assert store.load("f.json", FIELDS) == DOCUMENT
    (tmp_path / "root").chmod(0o777)  # anyone could swap the cache directory for theirs
    assert store.load("f.json", FIELDS) is None
    assert (
        len(problems.messages) == 1
        and f"{tmp_path / 'root'} is writable by others" in problems.messages[0]
    )


@pytest.mark.parametrize("linked", ["cache", "root"])
def test_a_directory_that_is_a_symbolic_link_is_not_followed(
    tmp_path: Path, linked: str, problems: pytest.LogCaptureFixture
) -> None:
    real = store_at(tmp_path / "real" / "cache")
    assert real.save("f.json", DOCUMENT)
    (tmp_path / "root").mkdir(mode=0o700)
    if linked == "cache":
        os.symlink(tmp_path / "real" / "cache", tmp_path / "root" / "cache")
    else:
        os.rmdir(tmp_path / "root")
        os.symlink(tmp_path / "real", tmp_path / "root")
    store = store_at(tmp_path / "root" / "cache")
    assert store.load("f.json", FIELDS) is None
    assert not store.save("g.json", DOCUMENT)
    assert not (tmp_path / "real" / "cache" / "g.json").exists()
    [said] = problems.messages
    assert f"{tmp_path / 'root'}" in said and "is a symbolic link" in said


def test_a_directory_that_cannot_be_made_is_said_once(
    tmp_path: Path, problems: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("")
    store = store_at(tmp_path / "file" / "cache")
    assert not store.save("f.json", DOCUMENT)
    assert not store.save("g.json", DOCUMENT)
    assert store.load("f.json", FIELDS) is None
    [said] = problems.messages
    assert "cannot make lockd's cache directory" in said


# --- a full disk -----------------------------------------------------------------------------------

_WRITER = """
import logging, resource, signal, sys
from pathlib import Path
from lockd.evidence.cache.store import Store

logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
store = Store(Path(sys.argv[1]), "lockd-test-cache/1", 1 << 20, 8)
limit = int(sys.argv[2])
if limit:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
big = {"paths": ["x" * 100] * 1000}
print(store.save("a.json", big), store.save("b.json", big), store.load("a.json", {}))
if limit:
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    print(store.save("c.json", {"small": 1}), store.load("c.json", {}))
"""


def write_until_full(command: list[str], directory: Path) -> tuple[list[str], list[str]]:
    """(stdout lines, stderr lines) of ``_WRITER`` run by ``command`` on ``directory``."""
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines(), done.stderr.splitlines()


def test_a_file_size_limit_keeps_nothing_says_so_once_and_leaves_no_temporary_file(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "cache"
    out, err = write_until_full([sys.executable, "-c", _WRITER, str(directory), "4096"], directory)
    assert out == ["False False None", "True {'format': 'lockd-test-cache/1', 'small': 1}"]
    [said] = err
    assert said.startswith(f"lockd.cache: cannot write to lockd's cache directory {directory}")
    assert "File too large" in said and "LOCKD_CACHE_DIR" in said
    assert sorted(p.name for p in directory.iterdir()) == ["c.json"]


@pytest.mark.usefixtures("root_required")  # unshare, mount
def test_a_full_filesystem_keeps_nothing_and_says_so_once(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    mount = 'mount -t tmpfs -o size=16k,mode=0700 tmpfs "$1" && exec "$2" -c "$3" "$1" 0'
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount]
    out, err = write_until_full(
        [*command, "sh", str(directory), sys.executable, _WRITER], directory
    )
    assert out == ["False False None"]
    [said] = err
    assert "No space left on device" in said and str(directory) in said


def test_an_untrusted_directory_above_is_said_once_for_all_its_caches(
    tmp_path: Path, problems: pytest.LogCaptureFixture
) -> None:
    kinds = ("probe", "integrity", "deep")
    for kind in kinds:
        assert store_at(tmp_path / "root" / kind).save("f.json", DOCUMENT)
    (tmp_path / "root").chmod(0o777)
    for kind in kinds:
        assert store_at(tmp_path / "root" / kind).load("f.json", FIELDS) is None
        assert not store_at(tmp_path / "root" / kind).save("g.json", DOCUMENT)
    assert len(problems.messages) == 1
