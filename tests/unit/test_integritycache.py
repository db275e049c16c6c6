"""The integrity cache without Docker: a --deep result kept and loaded again under its
fingerprint, the files trusted and in the format, the guards of real files and directories, the
digest of the probe's distributions, at most MAX_FILES kept."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pytest

from lockd import integritycache
from lockd.integritycache import FORMAT, Guard, Kept, distributions_digest, guard, load, store
from lockd.model import Distribution, Finding, Integrity

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


def guards_of(*paths: Path) -> list[Guard]:
    return [guard(str(p), os.lstat(p)) for p in paths]


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
        guards or [("/nonexistent/lockd-layer/six.py", 10, 20, 30, 40)],
        directory=directory,
        now=dt.datetime.fromisoformat(NOW),
    )
    return directory / f"{container}.json"


# --- the files -----------------------------------------------------------------------------------


def test_a_stored_result_loads_under_its_key_only(tmp_path: Path) -> None:
    path = stored(tmp_path / "integrity")
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    kept = load(CONTAINER, "k1", directory=tmp_path / "integrity")
    assert kept == Kept(
        INTEGRITY, NOW, DIGEST, [("/nonexistent/lockd-layer/six.py", 10, 20, 30, 40)]
    )
    assert kept.integrity.reused_from is None
    assert load(CONTAINER, "k2", directory=tmp_path / "integrity") is None
    assert load(OTHER, "k1", directory=tmp_path / "integrity") is None


@pytest.mark.parametrize("container", ["c" * 63, "C" * 64, "../" + "c" * 61, ""])
def test_a_malformed_container_id_is_neither_stored_nor_loaded(
    tmp_path: Path, container: str
) -> None:
    stored(tmp_path / "integrity", container)
    assert not (tmp_path / "integrity").exists()
    assert load(container, "k1", directory=tmp_path / "integrity") is None


def test_a_file_others_can_write_or_own_is_not_trusted(tmp_path: Path) -> None:
    path = stored(tmp_path)
    path.chmod(0o666)
    assert load(CONTAINER, "k1", directory=tmp_path) is None
    path.chmod(0o600)
    assert load(CONTAINER, "k1", directory=tmp_path) is not None
    os.chown(path, 65534, 65534)
    assert load(CONTAINER, "k1", directory=tmp_path) is None


@pytest.mark.parametrize("data", [b"{not json", b"\xff\xfe", b"[1, 2]", b'"text"', b"[" * 100_000])
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
        ("guards", MISSING),
        ("guards", 5),
        ("guards", [["/a", 1, 2, 3]]),  # one number short
        ("guards", [["/a", 1, 2, 3, 4, 5]]),
        ("guards", [["/a", 1, "x", 3, 4]]),
        ("guards", [["/a", 1, 2, None, 4]]),
        ("guards", ["/a"]),
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
    document = json.loads(path.read_bytes())
    assert document["format"] == FORMAT and load(CONTAINER, "k1", directory=tmp_path)
    if value is MISSING:
        del document[field]
    else:
        document[field] = value
    path.write_text(json.dumps(document))
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
    assert kept.guards == guards
    assert kept.intact()
    assert kept.intact()  # looking changes nothing
    assert Kept(INTEGRITY, NOW, DIGEST, []).intact()


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
