"""lockd.evidence.cache.files' documents: written as JSON, zlib-compressed or plain, and read back alike
when trusted, within their limit once inflated, well formed and carrying the fields asked for."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import pytest

from lockd.evidence.cache.files import load_document, store_document

FIELDS = {"format": "lockd-test-cache/1", "container": "c" * 64}
DOCUMENT = {**FIELDS, "observed_at": "2026-01-02T03:04:05+00:00", "paths": ["/a", "/b"] * 50}
JSON = json.dumps(DOCUMENT, separators=(",", ":"), sort_keys=True).encode()
LIMIT = 64 * 1024


@pytest.mark.parametrize("compress", [True, False])
def test_a_stored_document_loads_compressed_or_plain(tmp_path: Path, compress: bool) -> None:
    path = tmp_path / "cache" / "f.json"
    store_document(path, DOCUMENT, LIMIT, 8, compress=compress)
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert path.read_bytes()[:1] == (b"\x78" if compress else b"{")
    assert load_document(path, LIMIT, FIELDS) == DOCUMENT


def test_a_document_stored_uncompressed_is_plain_json(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    store_document(path, DOCUMENT, LIMIT, 8, compress=False)
    assert path.read_bytes() == JSON


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
    path = tmp_path / "f.json"
    path.write_bytes(data)
    assert load_document(path, LIMIT, FIELDS) == DOCUMENT


def test_a_compressed_document_inflating_beyond_max_bytes_is_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_bytes(zlib.compress(JSON))
    assert path.stat().st_size < len(JSON) - 1  # the file itself is within the limit
    assert load_document(path, len(JSON), FIELDS) == DOCUMENT
    assert load_document(path, len(JSON) - 1, FIELDS) is None


def test_a_zip_bomb_is_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    bomb = b'{"format": "lockd-test-cache/1", "x": "' + b"0" * 20_000_000 + b'"}'
    path.write_bytes(zlib.compress(bomb, 9))
    assert path.stat().st_size < LIMIT
    assert load_document(path, LIMIT, {}) is None


@pytest.mark.parametrize(
    "data",
    [
        b"\x78",
        b"\x78garbage",
        b"\x78\x9c" + b"\x00" * 32,
        zlib.compress(JSON)[:-4],  # no checksum
        zlib.compress(JSON)[: len(zlib.compress(JSON)) // 2],
        zlib.compress(JSON)[:-1] + bytes([zlib.compress(JSON)[-1] ^ 1]),  # a wrong checksum
        zlib.compress(b"[1, 2]"),
        zlib.compress(b'"text"'),
        zlib.compress(b"{not json"),
        zlib.compress(b'{"format": "\xff"}'),
        zlib.compress(zlib.compress(JSON)),
    ],
)
def test_a_corrupt_compressed_file_is_not_loaded(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "f.json"
    path.write_bytes(data)
    assert load_document(path, LIMIT, {}) is None


def test_bytes_after_the_compressed_stream_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_bytes(zlib.compress(JSON) + b"tail")
    assert load_document(path, LIMIT, FIELDS) is None
    path.write_bytes(zlib.compress(JSON))
    assert load_document(path, LIMIT, FIELDS) == DOCUMENT


def test_a_compressed_file_others_can_write_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_bytes(zlib.compress(JSON))
    path.chmod(0o666)
    assert load_document(path, LIMIT, FIELDS) is None
    path.chmod(0o600)
    assert load_document(path, LIMIT, FIELDS) == DOCUMENT


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize(
    "fields",
    [
        {**FIELDS, "format": "lockd-test-cache/0"},
        {**FIELDS, "container": "d" * 64},
        {**FIELDS, "key": "k1"},
    ],
)
def test_a_document_with_other_fields_is_not_loaded_nor_marked_used(
    tmp_path: Path, compress: bool, fields: dict[str, str]
) -> None:
    path = tmp_path / "f.json"
    store_document(path, DOCUMENT, LIMIT, 8, compress=compress)
    os.utime(path, (1000, 1000))
    assert load_document(path, LIMIT, fields) is None
    assert path.stat().st_mtime == 1000
    assert load_document(path, LIMIT, FIELDS) == DOCUMENT
    assert path.stat().st_mtime != 1000  # used: now the most recent


@pytest.mark.parametrize("compress", [True, False])
def test_a_document_whose_json_exceeds_max_bytes_is_not_written(
    tmp_path: Path, compress: bool
) -> None:
    path = tmp_path / "f.json"
    assert len(zlib.compress(JSON)) < len(JSON) - 1  # compressed, it would fit
    store_document(path, DOCUMENT, len(JSON) - 1, 8, compress=compress)
    assert not path.exists()
    store_document(path, DOCUMENT, len(JSON), 8, compress=compress)
    assert load_document(path, len(JSON), FIELDS) == DOCUMENT


def test_beyond_keep_files_the_least_recently_used_goes(tmp_path: Path) -> None:
    paths = [tmp_path / f"{n}.json" for n in range(3)]
    for n, path in enumerate(paths[:2]):
        store_document(path, DOCUMENT, LIMIT, 2, compress=True)
        os.utime(path, (1000 * (n + 1), 1000 * (n + 1)))
    assert load_document(paths[0], LIMIT, FIELDS) == DOCUMENT  # used: now the most recent
    store_document(paths[2], DOCUMENT, LIMIT, 2, compress=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.json", "2.json"]
