"""The integrity cache without Docker: a --deep result kept (compressed) and loaded again under
its fingerprint, the files trusted and in the format, the guards of real files and directories
and their digest, the digest of the probe's distributions, at most MAX_FILES kept."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from lockd.evidence.cache import integrity as integritycache
from lockd.evidence.cache.guard import StatGuard
from lockd.evidence.cache.integrity import (
    FORMAT,
    Guard,
    Kept,
    distributions_digest,
    guard,
    guard_digest,
    load,
    store,
)
from lockd.model.environment import Distribution
from lockd.model.host import Integrity
from lockd.model.report import Finding

CONTAINER = "c" * 64
OTHER = "d" * 64
NOW = "2026-01-02T03:04:05+00:00"
DIGEST = "e" * 64
INTEGRITY = Integrity(
    source="overlay",
    evidence="host",
    distributions=3,
    files=120,
    bytes=456789,
    cached=100,
    unhashed=7,
    without_record=["legacy"],
    findings=[
        Finding(
            kind="modified",
            name="six",
            path="/opt/venv/lib/python3.11/site-packages/six.py",
            expected="sha256=AAAA",
            observed="sha256=BBBB",
        )
    ],
)


GONE: Guard = ("/nonexistent/lockd-layer/six.py", StatGuard(10, 20, 30, 40, 0o100644))


def guards_of(*paths: Path) -> list[Guard]:
    return [guard(str(p), os.lstat(p)) for p in paths]


def document_of(path: Path) -> dict[str, Any]:
    """The stored file's document: zlib-compressed JSON."""
    document = json.loads(zlib.decompress(path.read_bytes()))
    assert isinstance(document, dict)
    return document


def stored(
    directory: Path,
    container: str = CONTAINER,
    guards: list[Guard] | None = None,
) -> Path:
    store(
        container,
        "k1",
        INTEGRITY,
        DIGEST,
        guards or [GONE],
        directory=directory,
        now=dt.datetime.fromisoformat(NOW),
    )
    return directory / f"{container}.json"


# --- the files -----------------------------------------------------------------------------------


def test_a_stored_result_loads_under_its_key_only(tmp_path: Path) -> None:
    path = stored(tmp_path / "integrity")
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    kept = load(CONTAINER, "k1", directory=tmp_path / "integrity")
    assert kept == Kept(INTEGRITY, NOW, DIGEST, [GONE[0]], guard_digest([GONE]))
    assert kept.integrity.reused_from is None
    assert sorted(document_of(path)) == [
        "container",
        "distributions",
        "format",
        "guard_digest",
        "guarded",
        "integrity",
        "key",
        "observed_at",
        "places",
    ]
    assert load(CONTAINER, "k2", directory=tmp_path / "integrity") is None
    assert load(OTHER, "k1", directory=tmp_path / "integrity") is None


@pytest.mark.parametrize("container", ["c" * 63, "C" * 64, "../" + "c" * 61, ""])
def test_a_malformed_container_id_is_neither_stored_nor_loaded(
    tmp_path: Path, container: str
) -> None:
    stored(tmp_path / "integrity", container)
    assert not (tmp_path / "integrity").exists()
    assert load(container, "k1", directory=tmp_path / "integrity") is None


@pytest.mark.usefixtures("root_required")  # chown
def test_a_file_others_can_write_or_own_is_not_trusted(tmp_path: Path) -> None:
    path = stored(tmp_path)
    path.chmod(0o666)
    assert load(CONTAINER, "k1", directory=tmp_path) is None
    path.chmod(0o600)
    assert load(CONTAINER, "k1", directory=tmp_path) is not None
    os.chown(path, 65534, 65534)
    assert load(CONTAINER, "k1", directory=tmp_path) is None


def test_a_stored_file_is_compressed_and_much_smaller_than_its_json(tmp_path: Path) -> None:
    guards: list[Guard] = [
        (
            f"/var/lib/docker/overlay2/{'a' * 64}/diff/site-packages/pkg{i}/mod{i}.py",
            StatGuard(i, 2, 3, i, 0o644),
        )
        for i in range(5000)
    ]
    path = stored(tmp_path, guards=guards)
    data = path.read_bytes()
    assert data[:1] == b"\x78"
    assert len(data) * 10 < len(zlib.decompress(data))
    kept = load(CONTAINER, "k1", directory=tmp_path)
    assert kept is not None
    assert kept.guarded == [g[0] for g in guards]
    assert kept.guard_digest == guard_digest(guards)


@pytest.mark.parametrize(
    "data",
    [
        b"{not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"text"',
        b"[" * 100_000,
        b"\x78garbage",
        zlib.compress(b"[1, 2]"),
        zlib.compress(b"{not json"),
    ],
)
def test_a_file_that_is_no_document_is_not_loaded(tmp_path: Path, data: bytes) -> None:
    stored(tmp_path).write_bytes(data)
    assert load(CONTAINER, "k1", directory=tmp_path) is None


MISSING = object()


@pytest.mark.parametrize(
    "field, value",
    [
        ("format", "lockd-integrity-cache/0"),
        ("container", OTHER),
        ("key", "k2"),
        ("integrity", MISSING),
        ("observed_at", MISSING),
        ("observed_at", ["2026"]),
        ("distributions", 5),
        ("distributions", MISSING),
        ("guarded", MISSING),
        ("guarded", 5),
        ("guarded", "/a"),
        ("guarded", {"/a": 1}),
        ("guarded", ["/a", 5]),
        ("guarded", ["/a", None]),
        ("guarded", [["/a", 1, 2, 3, 4]]),  # a guard of the first format
        ("guard_digest", MISSING),
        ("guard_digest", 5),
        ("guard_digest", None),
        ("guard_digest", [DIGEST]),
        ("integrity", {"source": "overlay"}),  # no evidence, counts
        ("integrity", {**INTEGRITY.model_dump(mode="json"), "files": -1}),
        ("integrity", {**INTEGRITY.model_dump(mode="json"), "source": "elsewhere"}),
        ("integrity", {**INTEGRITY.model_dump(mode="json"), "findings": [{"name": "six"}]}),
        ("integrity", [1]),
    ],
)
def test_a_document_not_in_the_format_is_not_loaded(
    tmp_path: Path, field: str, value: object
) -> None:
    path = stored(tmp_path)
    document = document_of(path)
    assert document["format"] == FORMAT and load(CONTAINER, "k1", directory=tmp_path)
    if value is MISSING:
        del document[field]
    else:
        document[field] = value
    path.write_bytes(zlib.compress(json.dumps(document).encode()))
    assert load(CONTAINER, "k1", directory=tmp_path) is None


def test_beyond_max_files_the_least_recently_used_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(integritycache, "MAX_FILES", 2)
    first, second = stored(tmp_path, "1" * 64), stored(tmp_path, "2" * 64)
    os.utime(first, (1000, 1000))
    os.utime(second, (2000, 2000))
    assert load("1" * 64, "k1", directory=tmp_path) is not None  # used: now the most recent
    third = stored(tmp_path, "3" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, third.name])


# --- the guards ----------------------------------------------------------------------------------


@pytest.fixture
def layer(tmp_path: Path) -> Path:
    """A directory standing for a lower layer's site-packages: a module in a package."""
    package = tmp_path / "layer" / "six"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("x = 1\n")
    return package


def kept_on(directory: Path, guards: list[Guard]) -> Kept:
    """The result stored with these guards, loaded again."""
    store(CONTAINER, "k1", INTEGRITY, DIGEST, guards, directory=directory)
    kept = load(CONTAINER, "k1", directory=directory)
    assert kept is not None
    return kept


def test_unchanged_files_and_directories_are_intact(tmp_path: Path, layer: Path) -> None:
    guards = guards_of(layer, layer / "__init__.py")
    kept = kept_on(tmp_path / "cache", guards)
    assert (kept.guarded, kept.guard_digest) == (
        [str(layer), str(layer / "__init__.py")],
        guard_digest(guards),
    )
    assert kept.intact()
    assert kept.intact()  # looking changes nothing
    assert Kept(INTEGRITY, NOW, DIGEST, [], guard_digest([])).intact()
    assert not Kept(INTEGRITY, NOW, DIGEST, [], DIGEST).intact()


def test_a_file_whose_name_is_not_utf8_is_guarded(tmp_path: Path, layer: Path) -> None:
    module = layer / os.fsdecode(b"\xff.py")
    module.write_text("x = 1\n")
    kept = kept_on(tmp_path / "cache", guards_of(layer, module))
    assert kept.guarded == [str(layer), str(module)]
    assert kept.intact()
    module.unlink()
    assert not kept.intact()


@pytest.mark.parametrize("compress", [True, False])
def test_a_wrong_guard_digest_loads_but_is_not_intact(
    tmp_path: Path, layer: Path, compress: bool
) -> None:
    module = layer / "__init__.py"
    guards = guards_of(layer, module)
    path = stored(tmp_path / "cache", guards=guards)
    document = document_of(path)
    _, now = guards[1]
    for digest, intact in [
        (guard_digest(guards), True),
        (guard_digest([guards[0], (str(module), now._replace(size=now.size + 1))]), False),
        (guard_digest([guards[0], (str(module), now._replace(mode=now.mode | 0o4000))]), False),
        (guard_digest(reversed(guards)), False),
        (guard_digest(guards[:1]), False),
        (DIGEST, False),
    ]:
        document["guard_digest"] = digest
        data = json.dumps(document).encode()
        path.write_bytes(zlib.compress(data) if compress else data)
        kept = load(CONTAINER, "k1", directory=tmp_path / "cache")
        assert kept is not None
        assert (kept.guarded, kept.guard_digest) == ([str(layer), str(module)], digest)
        assert kept.intact() is intact


@pytest.mark.parametrize("name", ["/a\x00b", "/\ud800"])  # no path lstat can take
def test_a_guarded_name_no_file_can_have_is_not_intact(tmp_path: Path, name: str) -> None:
    path = stored(tmp_path)
    document = document_of(path)
    document["guarded"] = [name]
    path.write_bytes(zlib.compress(json.dumps(document).encode()))
    kept = load(CONTAINER, "k1", directory=tmp_path)
    assert kept is not None
    assert not kept.intact()


def test_a_file_rewritten_with_its_mtime_put_back_is_not_intact(
    tmp_path: Path, layer: Path
) -> None:
    module = layer / "__init__.py"
    was = module.stat()
    kept = kept_on(tmp_path / "cache", guards_of(layer, module))
    time.sleep(0.05)  # past the coarse clock of file times
    module.write_text("x = 2\n")
    os.utime(module, ns=(was.st_atime_ns, was.st_mtime_ns))
    now = module.stat()
    assert (now.st_size, now.st_mtime_ns, now.st_ino) == (was.st_size, was.st_mtime_ns, was.st_ino)
    assert now.st_ctime_ns != was.st_ctime_ns
    assert not kept.intact()


def test_a_removed_file_is_not_intact(tmp_path: Path, layer: Path) -> None:
    kept = kept_on(tmp_path / "cache", guards_of(layer / "__init__.py"))
    (layer / "__init__.py").unlink()
    assert not kept.intact()


def test_a_file_added_to_a_guarded_directory_is_not_intact(tmp_path: Path, layer: Path) -> None:
    kept = kept_on(tmp_path / "cache", guards_of(layer))
    time.sleep(0.05)  # past the coarse clock of file times
    (layer / "evil.py").write_text("import os\n")
    assert not kept.intact()


# --- the distributions ---------------------------------------------------------------------------


def dist(
    name: str, location: str = "/opt/venv/lib/site", record: str | None = "a" * 64
) -> Distribution:
    return Distribution(name=name, version="1.0", location=location, record_sha256=record, files=3)


def test_the_distributions_digest_is_of_names_locations_and_records_in_any_order() -> None:
    found = [dist("six"), dist("idna", record="b" * 64), dist("legacy", record=None)]
    digest = distributions_digest(found)
    assert len(digest) == 64
    assert distributions_digest(reversed(found)) == digest
    assert distributions_digest(found[:2]) != digest
    assert distributions_digest([dist("six", record="c" * 64), *found[1:]]) != digest
    assert distributions_digest([dist("six", location="/usr/lib/site"), *found[1:]]) != digest
    assert distributions_digest([dist("legacy", record="d" * 64), *found[:2]]) != digest
    assert distributions_digest([]) != digest
