"""The layer cache of --deep without Docker: which overlay layer provides a path (pure), chain
IDs, the digests on disk, and a container's tree read through the cache from real directories
standing for its upper and lower layers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from builders import SITE, digest, install

from lockd.evidence.cache.layers import (
    FORMAT,
    DigestCache,
    Entry,
    LayerView,
    chain_ids,
    container_layer_keys,
    provider,
    resolve_dir,
)
from lockd.evidence.integrity.check import check_files
from lockd.evidence.integrity.hosttree import HostTree


def layers(*tables: dict[str, Entry]) -> tuple[int, Callable[[int, str], Entry]]:
    """(count, entry) for layers (top first) described as {path: entry}."""

    def entry(layer: int, rel: str) -> Entry:
        return tables[layer].get(rel, "missing")

    return len(tables), entry


def test_a_directory_shows_every_layer_that_has_it_until_an_opaque_one() -> None:
    upper: dict[str, Entry] = {"a": "dir", "a/b": "dir"}
    middle: dict[str, Entry] = {"a": "dir", "a/b": "opaque"}
    lower: dict[str, Entry] = {"a": "dir", "a/b": "dir", "a/b/f": "file"}
    count, entry = layers(upper, middle, lower)
    assert resolve_dir(count, ["a"], entry) == [0, 1, 2]
    assert resolve_dir(count, ["a", "b"], entry) == [0, 1]
    assert provider([0, 1], "a/b/f", entry) is None


def test_a_whiteout_or_a_file_hides_the_directories_below() -> None:
    count, entry = layers({"a": "whiteout"}, {"a": "dir", "a/f": "file"})
    assert resolve_dir(count, ["a"], entry) == []
    count, entry = layers({"a": "file"}, {"a": "dir"})
    assert resolve_dir(count, ["a"], entry) == []
    count, entry = layers({"a": "dir"}, {"a": "file"}, {"a": "dir"})
    assert resolve_dir(count, ["a"], entry) == [0]
    count, entry = layers({}, {"a": "dir"}, {"a": "dir"})
    assert resolve_dir(count, ["a"], entry) == [1, 2]


def test_the_top_most_layer_provides_a_file_and_a_whiteout_deletes_it() -> None:
    _, entry = layers({"a/f": "whiteout"}, {"a/f": "file", "a/g": "file"}, {"a/g": "file"})
    assert provider([0, 1, 2], "a/f", entry) is None
    assert provider([0, 1, 2], "a/g", entry) == (1, "file")
    assert provider([0, 1, 2], "a/h", entry) is None
    _, entry = layers({"a/g": "other"}, {"a/g": "file"})
    assert provider([0, 1], "a/g", entry) == (0, "other")


def test_chain_ids_follow_the_oci_image_spec() -> None:
    one, two, three = (f"sha256:{c * 64}" for c in "abc")
    second = "sha256:" + hashlib.sha256(f"{one} {two}".encode()).hexdigest()
    third = "sha256:" + hashlib.sha256(f"{second} {three}".encode()).hexdigest()
    assert chain_ids([one, two, three]) == [one, second, third]
    assert chain_ids([]) == []


def image(dirs: list[str], diff_ids: list[str]) -> dict[str, object]:
    data = {"UpperDir": dirs[0], "LowerDir": ":".join(dirs[1:])} if dirs else {}
    return {
        "GraphDriver": {"Name": "overlay2", "Data": data},
        "RootFS": {"Type": "layers", "Layers": diff_ids},
    }


def test_a_containers_lower_dirs_map_to_the_images_chain_ids() -> None:
    one, two = (f"sha256:{c * 64}" for c in "ab")
    chains = chain_ids([one, two])
    attrs = image(["/d/top/diff", "/d/bottom/diff"], [one, two])
    lowers = ["/d/c-init/diff", "/d/top/diff", "/d/bottom/diff"]
    assert container_layer_keys(lowers, attrs) == [None, chains[1], chains[0]]
    assert container_layer_keys(lowers, image(["/d/top/diff"], [one, two])) is None
    assert container_layer_keys(lowers, {"GraphDriver": {"Name": "btrfs"}}) is None
    assert container_layer_keys(lowers, image(["/d/top/diff"], ["md5:x"])) is None


def stat_of(path: Path) -> os.stat_result:
    return os.lstat(path)


def test_digests_round_trip_and_the_guard_rejects_another_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    cache = DigestCache(tmp_path / "cache")
    cache.put("sha256:l", "a/f", digest(b"x"), stat_of(f))
    cache.save()
    [written] = (tmp_path / "cache").iterdir()
    assert written.name == "sha256-l.json"
    assert written.stat().st_mode & 0o777 == 0o600
    again = DigestCache(tmp_path / "cache")
    assert again.get("sha256:l", "a/f", "sha256", stat_of(f)) == digest(b"x")
    assert again.get("sha256:l", "a/f", "sha512", stat_of(f)) is None
    assert again.get("sha256:l", "a/g", "sha256", stat_of(f)) is None
    assert again.get("sha256:other", "a/f", "sha256", stat_of(f)) is None
    assert again.hits == 1
    os.utime(f, ns=(1, 1))  # another mtime (and ctime): not the file hashed
    assert again.get("sha256:l", "a/f", "sha256", stat_of(f)) is None


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"format": "another/1"}', b'{"format": "' + FORMAT.encode() + b'"}', b"[]"],
)
def test_a_corrupt_cache_file_is_ignored_and_written_again(tmp_path: Path, content: bytes) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    (tmp_path / "cache").mkdir(mode=0o700)
    stored = tmp_path / "cache" / "sha256-l.json"
    stored.write_bytes(content)
    cache = DigestCache(tmp_path / "cache")
    assert cache.get("sha256:l", "a/f", "sha256", stat_of(f)) is None
    cache.save()  # nothing new, but the corrupt file is replaced
    assert json.loads(stored.read_bytes()) == {"files": {}, "format": FORMAT, "layer": "sha256:l"}


def test_a_cache_file_others_can_write_is_not_trusted(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x")
    cache = DigestCache(tmp_path / "cache")
    cache.put("sha256:l", "a/f", digest(b"x"), stat_of(f))
    cache.save()
    (tmp_path / "cache" / "sha256-l.json").chmod(0o666)
    assert DigestCache(tmp_path / "cache").get("sha256:l", "a/f", "sha256", stat_of(f)) is None


def test_the_cache_keeps_at_most_max_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("lockd.evidence.cache.layers.MAX_FILES", 2)
    f = tmp_path / "f"
    f.write_bytes(b"x")
    for n in range(4):
        cache = DigestCache(tmp_path / "cache")
        cache.put(f"sha256:{n}", "f", digest(b"x"), stat_of(f))
        cache.save()
        os.utime(tmp_path / "cache" / f"sha256-{n}.json", ns=(n + 1, n + 1))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "sha256-2.json",
        "sha256-3.json",
    ]


def container_tree(tmp_path: Path, cache: Path) -> HostTree:
    """The container of ``tmp_path`` (merged, upper, lower) read through the layer cache."""
    return HostTree(
        [str(tmp_path / "merged")],
        kind="overlay",
        evidence="host",
        description="a container",
        upper=str(tmp_path / "upper"),
        digests=DigestCache(cache),
        view=LayerView([(str(tmp_path / "upper"), None), (str(tmp_path / "lower"), "sha256:l")]),
    )


@pytest.mark.usefixtures("root_required")  # mknod: an overlay whiteout
def test_lower_files_come_from_the_cache_and_the_upper_dirs_are_hashed(tmp_path: Path) -> None:
    """A lower layer with a distribution; the container edited one file (in its upper
    directory) and deleted another (a whiteout); the merged directory shows both."""
    files = {"demo/a.py": b"a", "demo/b.py": b"b", "demo/c.py": b"c"}
    dist = install(tmp_path / "lower", "demo", "1.0", files)
    shutil.copytree(tmp_path / "lower", tmp_path / "merged", symlinks=True)
    upper_site = tmp_path / "upper" / SITE.lstrip("/") / "demo"
    upper_site.mkdir(parents=True)
    (upper_site / "b.py").write_bytes(b"edited")
    (tmp_path / "merged" / SITE.lstrip("/") / "demo" / "b.py").write_bytes(b"edited")
    os.mknod(upper_site / "c.py", 0o600 | 0o020000, os.makedev(0, 0))  # a whiteout
    (tmp_path / "merged" / SITE.lstrip("/") / "demo" / "c.py").unlink()
    cache = tmp_path / "cache"

    def run() -> tuple[list[tuple[str, str | None]], int, int]:
        tree = container_tree(tmp_path, cache)
        found = check_files(tree, [dist], progress=False)
        tree.close()
        return [(f.kind, f.path) for f in found.findings], found.files, found.cached

    expected = [("modified", f"{SITE}/demo/b.py"), ("missing", f"{SITE}/demo/c.py")]
    assert run() == (expected, 4, 0)  # a.py, b.py, c.py, METADATA: nothing cached yet
    assert run() == (expected, 4, 2)  # a.py and METADATA from the lower layer's cache

    # the cached digest of a.py is only believed for the file hashed
    [stored] = cache.iterdir()
    document = json.loads(stored.read_text())
    document["files"][f"{SITE}/demo/a.py"[1:]][5] = digest(b"not a")
    stored.write_text(json.dumps(document))
    assert run()[0] == [("modified", f"{SITE}/demo/a.py"), *expected]
    os.utime(tmp_path / "lower" / SITE.lstrip("/") / "demo" / "a.py", ns=(5, 5))
    assert run() == (expected, 4, 1)  # rehashed: another mtime


@pytest.mark.usefixtures("root_required")  # mknod: an overlay whiteout
def test_what_the_container_writes_while_lockd_hashes_is_unstable(tmp_path: Path) -> None:
    """Files are read in the lower layer; what the container writes into its upper directory
    meanwhile (here: just before lockd reads the upper directory again) makes exactly the
    files it hides 'unstable', not their neighbours, and a new directory alone hides nothing."""
    files = {"demo/a.py": b"a", "demo/b.py": b"b", "demo/sub/c.py": b"c", "other/d.py": b"d"}
    dist = install(tmp_path / "lower", "demo", "1.0", files)
    shutil.copytree(tmp_path / "lower", tmp_path / "merged", symlinks=True)
    site = SITE.lstrip("/")
    (tmp_path / "upper").mkdir()

    def run(write: Callable[[Path], None]) -> list[tuple[str, str | None]]:
        shutil.rmtree(tmp_path / "upper")
        (tmp_path / "upper").mkdir()
        tree = HostTree(
            [str(tmp_path / "merged")],
            kind="overlay",
            evidence="host",
            description="a container",
            upper=str(tmp_path / "upper"),
            view=LayerView([(str(tmp_path / "upper"), None), (str(tmp_path / "lower"), None)]),
        )
        assert tree.view is not None
        recheck = tree.view.changed_since

        def written_meanwhile() -> Callable[[str, str], bool]:
            write(tmp_path / "upper" / site)
            return recheck()

        tree.view.changed_since = written_meanwhile  # type: ignore[method-assign]
        found = check_files(tree, [dist], progress=False, workers=1)
        assert found.files == 5
        return [(f.kind, f.path) for f in found.findings]

    def copy_up(upper: Path) -> None:  # a.py edited; its directories copied up with it
        (upper / "demo").mkdir(parents=True)
        (upper / "demo" / "a.py").write_bytes(b"edited")
        (upper / "other").mkdir()  # an empty directory copied up: hides nothing

    def delete_dir(upper: Path) -> None:  # rm -r demo: a whiteout over the directory
        upper.mkdir(parents=True)
        os.mknod(upper / "demo", 0o600 | 0o020000, os.makedev(0, 0))

    assert run(lambda upper: None) == []
    assert run(copy_up) == [("unstable", f"{SITE}/demo/a.py")]
    assert run(delete_dir) == [
        ("unstable", f"{SITE}/demo/a.py"),
        ("unstable", f"{SITE}/demo/b.py"),
        ("unstable", f"{SITE}/demo/sub/c.py"),
    ]
