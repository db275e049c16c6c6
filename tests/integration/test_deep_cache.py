"""The layer cache of --deep (lockd.layercache) against the real Docker daemon: digests of the
image's read-only layers kept from one container to the next, the container's own writes
always hashed, a corrupt cache file ignored and written again, --no-cache."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_deep import SITE, Lockd, check, findings, record, sh, verify_deep

CACHED = "files from lockd's layer cache"


@pytest.fixture
def cache_env(tmp_path: Path) -> dict[str, str]:
    return {"LOCKD_CACHE_DIR": str(tmp_path / "cache")}


def cache_files(env: dict[str, str]) -> list[Path]:
    return sorted((Path(env["LOCKD_CACHE_DIR"]) / "deep").glob("*.json"))


def cached_count(report: dict[str, Any]) -> int:
    message = check(report, "integrity")["message"]
    if CACHED not in message:
        return 0
    return int(message.split(CACHED)[0].rsplit("; ", 1)[1].split()[0])


@pytest.fixture
def warm(
    app_image: str,
    run_container: Callable[..., Any],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    lockd: Lockd,
    cache_env: dict[str, str],
) -> Path:
    """A manifest recorded with --deep from a first container of the app image, which fills
    the layer cache; that container is then gone."""
    first = run_container(app_image)
    out = tmp_path / "clean.dsse.json"
    result = record(lockd, first.name, keypair, out, env=cache_env)
    assert result.returncode == 0, result.stdout + result.stderr
    first.remove(force=True)
    assert cache_files(cache_env), "record --deep wrote no layer cache"
    return out


def test_second_container_of_the_image_takes_the_cache_and_passes(
    app_image: str,
    run_container: Callable[..., Any],
    warm: Path,
    keypair: tuple[Path, Path],
    lockd: Lockd,
    cache_env: dict[str, str],
) -> None:
    second = run_container(app_image)
    code, report = verify_deep(lockd, second.name, warm, keypair[1], env=cache_env)
    assert code == 0, report
    integrity = check(report, "integrity")
    assert (integrity["status"], integrity["evidence"]) == ("pass", "host")
    files = int(integrity["message"].split()[0])
    assert cached_count(report) == files > 100  # every listed file lies in the image's layers

    empty = {"LOCKD_CACHE_DIR": cache_env["LOCKD_CACHE_DIR"] + "-empty"}
    code, fresh = verify_deep(lockd, second.name, warm, keypair[1], env=empty)
    assert code == 0
    assert check(fresh, "integrity")["status"] == "pass"
    assert int(check(fresh, "integrity")["message"].split()[0]) == files
    assert cached_count(fresh) == 0


def test_a_file_the_container_changed_is_found_with_a_warm_cache(
    app_image: str,
    run_container: Callable[..., Any],
    warm: Path,
    keypair: tuple[Path, Path],
    lockd: Lockd,
    cache_env: dict[str, str],
) -> None:
    """Edited, deleted (a whiteout in the upper directory) and replaced by pip's way of
    installing (a new file renamed over the old): each is in the container's upper directory,
    hashed again, never taken from the cache."""
    second = run_container(app_image)
    sh(
        second,
        f"echo 'x = 1' >> {SITE}/six.py && rm {SITE}/idna/codec.py"
        f" && cp {SITE}/idna/core.py /tmp/core.py && echo '# patched' >> /tmp/core.py"
        f" && mv /tmp/core.py {SITE}/idna/core.py",
    )
    code, report = verify_deep(lockd, second.name, warm, keypair[1], env=cache_env)
    assert code == 1
    assert findings(report) == [
        ("missing", f"{SITE}/idna/codec.py"),
        ("modified", f"{SITE}/idna/core.py"),
        ("modified", f"{SITE}/six.py"),
    ]
    assert cached_count(report) > 100  # the rest still came from the cache


def test_a_corrupt_cache_file_is_ignored_and_written_again(
    app_image: str,
    run_container: Callable[..., Any],
    warm: Path,
    keypair: tuple[Path, Path],
    lockd: Lockd,
    cache_env: dict[str, str],
) -> None:
    for path in cache_files(cache_env):
        path.write_bytes(b'{"format": "lockd-deep-cache/1", "files": {"x": [1, 2')
    second = run_container(app_image)
    code, report = verify_deep(lockd, second.name, warm, keypair[1], env=cache_env)
    assert code == 0, report
    assert cached_count(report) == 0
    for path in cache_files(cache_env):
        assert json.loads(path.read_bytes())["format"] == "lockd-deep-cache/1"
    code, report = verify_deep(lockd, second.name, warm, keypair[1], env=cache_env)
    assert code == 0
    assert cached_count(report) > 100


def test_a_cache_entry_that_lies_is_believed_only_without_no_cache(
    app_image: str,
    run_container: Callable[..., Any],
    warm: Path,
    keypair: tuple[Path, Path],
    lockd: Lockd,
    cache_env: dict[str, str],
) -> None:
    """The cache is trusted host evidence (root wrote it); --no-cache hashes every file again
    and neither reads nor writes it."""
    [layer] = [p for p in cache_files(cache_env) if f"{SITE}/six.py"[1:] in p.read_text()]
    document = json.loads(layer.read_text())
    entry = document["files"][f"{SITE}/six.py"[1:]]
    entry[4] = "sha256=" + "A" * 43
    layer.write_text(json.dumps(document))
    second = run_container(app_image)

    code, report = verify_deep(lockd, second.name, warm, keypair[1], env=cache_env)
    assert code == 1
    assert findings(report) == [("modified", f"{SITE}/six.py")]

    verified = lockd(
        "verify",
        second.name,
        "--manifest",
        warm,
        "--key",
        keypair[1],
        "--json",
        "--deep",
        "--no-cache",
        env=cache_env,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert check(report, "integrity")["status"] == "pass"
    assert cached_count(report) == 0
    assert json.loads(layer.read_text())["files"][f"{SITE}/six.py"[1:]][4] == entry[4]


def test_record_no_cache_hashes_everything(
    app_image: str,
    run_container: Callable[..., Any],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    lockd: Lockd,
    cache_env: dict[str, str],
) -> None:
    container = run_container(app_image)
    out = tmp_path / "m.dsse.json"
    result = lockd(
        "record",
        container.name,
        "--key",
        keypair[0],
        "--output",
        out,
        "--deep",
        "--no-cache",
        env=cache_env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert cache_files(cache_env) == []


def test_an_images_layers_go_through_the_cache_too(
    app_image: str,
    keypair: tuple[Path, Path],
    tmp_path: Path,
    lockd: Lockd,
    cache_env: dict[str, str],
) -> None:
    out = tmp_path / "image.dsse.json"
    assert record(lockd, f"image:{app_image}", keypair, out, env=cache_env).returncode == 0
    assert cache_files(cache_env)
    code, report = verify_deep(lockd, f"image:{app_image}", out, keypair[1], env=cache_env)
    assert code == 0, report
    assert "the image's overlay2 layers, on the host" in check(report, "integrity")["message"]
    assert cached_count(report) == int(check(report, "integrity")["message"].split()[0])
