"""The layer cache of --deep (lockd.evidence.cache.layers) against the real Docker daemon: digests of the
image's read-only layers kept from one container to the next, the container's own writes
always hashed, a corrupt cache file ignored and written again, --no-cache."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_deep import SITE, Lockd, check, findings, record, sh, verify_deep

from lockd.evidence.cache.layers import FORMAT

CACHED = "files from lockd's layer cache"


@dataclass(frozen=True)
class Deep:
    """``lockd record/verify --deep`` with the session's key pair and this test's layer cache
    (``env``: LOCKD_CACHE_DIR)."""

    lockd: Lockd
    keypair: tuple[Path, Path]
    env: dict[str, str]

    def record(self, target: str, out: Path) -> subprocess.CompletedProcess[str]:
        return record(self.lockd, target, self.keypair, out, env=self.env)

    def verify(
        self, target: str, manifest: Path, env: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """``(exit code, JSON report)``; ``env`` instead of this test's cache."""
        return verify_deep(
            self.lockd, target, manifest, self.keypair[1], env=self.env if env is None else env
        )

    def cache_files(self) -> list[Path]:
        return sorted((Path(self.env["LOCKD_CACHE_DIR"]) / "deep").glob("*.json"))

    def forget_results(self) -> None:
        """Drop the containers' kept --deep results (lockd.evidence.cache.integrity): a container verified
        again unchanged would take its result from there, not from the layer cache tested
        here."""
        shutil.rmtree(Path(self.env["LOCKD_CACHE_DIR"]) / "integrity", ignore_errors=True)


@pytest.fixture
def deep(lockd: Lockd, keypair: tuple[Path, Path], tmp_path: Path) -> Deep:
    return Deep(lockd, keypair, {"LOCKD_CACHE_DIR": str(tmp_path / "cache")})


def cached_count(report: dict[str, Any]) -> int:
    message = check(report, "integrity")["message"]
    if CACHED not in message:
        return 0
    return int(message.split(CACHED)[0].rsplit("; ", 1)[1].split()[0])


@pytest.fixture
def warm(app_image: str, run_container: Callable[..., Any], tmp_path: Path, deep: Deep) -> Path:
    """A manifest recorded with --deep from a first container of the app image, which fills
    the layer cache; that container is then gone."""
    first = run_container(app_image)
    out = tmp_path / "clean.dsse.json"
    result = deep.record(first.name, out)
    assert result.returncode == 0, result.stdout + result.stderr
    first.remove(force=True)
    assert deep.cache_files(), "record --deep wrote no layer cache"
    return out


@pytest.fixture
def second(app_image: str, run_container: Callable[..., Any], warm: Path) -> Any:
    """A second container of the app image, started once ``warm``'s first one is gone."""
    return run_container(app_image)


def test_second_container_of_the_image_takes_the_cache_and_passes(
    second: Any, warm: Path, deep: Deep
) -> None:
    code, report = deep.verify(second.name, warm)
    assert code == 0, report
    integrity = check(report, "integrity")
    assert (integrity["status"], integrity["evidence"]) == ("pass", "host")
    files = int(integrity["message"].split()[0])
    assert cached_count(report) == files > 100  # every listed file lies in the image's layers

    empty = {"LOCKD_CACHE_DIR": deep.env["LOCKD_CACHE_DIR"] + "-empty"}
    code, fresh = deep.verify(second.name, warm, env=empty)
    assert code == 0
    assert check(fresh, "integrity")["status"] == "pass"
    assert int(check(fresh, "integrity")["message"].split()[0]) == files
    assert cached_count(fresh) == 0


def test_a_file_the_container_changed_is_found_with_a_warm_cache(
    second: Any, warm: Path, deep: Deep
) -> None:
    """Edited, deleted (a whiteout in the upper directory) and replaced by pip's way of
    installing (a new file renamed over the old): each is in the container's upper directory,
    hashed again, never taken from the cache."""
    sh(
        second,
        f"echo 'x = 1' >> {SITE}/six.py && rm {SITE}/idna/codec.py"
        f" && cp {SITE}/idna/core.py /tmp/core.py && echo '# patched' >> /tmp/core.py"
        f" && mv /tmp/core.py {SITE}/idna/core.py",
    )
    code, report = deep.verify(second.name, warm)
    assert code == 1
    assert findings(report) == [
        ("missing", f"{SITE}/idna/codec.py"),
        ("modified", f"{SITE}/idna/core.py"),
        ("modified", f"{SITE}/six.py"),
    ]
    assert cached_count(report) > 100  # the rest still came from the cache


def test_a_corrupt_cache_file_is_ignored_and_written_again(
    second: Any, warm: Path, deep: Deep
) -> None:
    for path in deep.cache_files():
        path.write_bytes(b'{"format": "%s", "files": {"x": [1, 2' % FORMAT.encode())
    code, report = deep.verify(second.name, warm)
    assert code == 0, report
    assert cached_count(report) == 0
    for path in deep.cache_files():
        assert json.loads(path.read_bytes())["format"] == FORMAT
    deep.forget_results()
    code, report = deep.verify(second.name, warm)
    assert code == 0
    assert cached_count(report) > 100


def test_a_cache_entry_that_lies_is_believed_only_without_no_cache(
    second: Any, warm: Path, deep: Deep
) -> None:
    """The cache is trusted host evidence (root wrote it); --no-cache hashes every file again
    and neither reads nor writes it."""
    [layer] = [p for p in deep.cache_files() if f"{SITE}/six.py"[1:] in p.read_text()]
    document = json.loads(layer.read_text())
    entry = document["files"][f"{SITE}/six.py"[1:]]  # size, mtime, ctime, inode, mode, digest
    entry[5] = "sha256=" + "A" * 43
    layer.write_text(json.dumps(document))

    code, report = deep.verify(second.name, warm)
    assert code == 1
    assert findings(report) == [("modified", f"{SITE}/six.py")]

    verified = deep.lockd(
        "verify",
        second.name,
        "--manifest",
        warm,
        "--key",
        deep.keypair[1],
        "--json",
        "--deep",
        "--no-cache",
        env=deep.env,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert check(report, "integrity")["status"] == "pass"
    assert cached_count(report) == 0
    assert json.loads(layer.read_text())["files"][f"{SITE}/six.py"[1:]][5] == entry[5]


def test_record_no_cache_hashes_everything(
    app_image: str, run_container: Callable[..., Any], tmp_path: Path, deep: Deep
) -> None:
    container = run_container(app_image)
    out = tmp_path / "m.dsse.json"
    result = deep.lockd(
        "record",
        container.name,
        "--key",
        deep.keypair[0],
        "--output",
        out,
        "--deep",
        "--no-cache",
        env=deep.env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert deep.cache_files() == []


def test_an_images_layers_go_through_the_cache_too(
    app_image: str, tmp_path: Path, deep: Deep
) -> None:
    out = tmp_path / "image.dsse.json"
    assert deep.record(f"image:{app_image}", out).returncode == 0
    assert deep.cache_files()
    code, report = deep.verify(f"image:{app_image}", out)
    assert code == 0, report
    assert "the image's overlay2 layers, on the host" in check(report, "integrity")["message"]
    assert cached_count(report) == int(check(report, "integrity")["message"].split()[0])
