"""The integrity cache (lockd.evidence.cache.integrity) against the real daemon: `lockd verify <container>
--deep` takes a container's result again while nothing the container can see changed and its
image layers' files are those hashed then; it hashes again after a write in the container or a
lower-layer file rewritten on the host, and never reuses with --no-cache or in `lockd record`."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_deep import SITE, Lockd, check, findings, sh

REUSED = "taken from lockd's integrity cache"
TEST_LABEL = "lockd.test"  # as tests/integration/conftest.py labels what tests make


@dataclass(frozen=True)
class Deep:
    """``lockd record/verify --deep`` of one container with the session's key pair and this
    test's own caches (LOCKD_CACHE_DIR)."""

    lockd: Lockd
    keypair: tuple[Path, Path]
    container: Any
    tmp: Path

    @property
    def env(self) -> dict[str, str]:
        return {"LOCKD_CACHE_DIR": str(self.tmp / "cache")}

    @property
    def manifest(self) -> Path:
        return self.tmp / "m.dsse.json"

    @property
    def cache_file(self) -> Path:
        return self.tmp / "cache" / "integrity" / f"{self.container.id}.json"

    def record(self, out: Path) -> subprocess.CompletedProcess[str]:
        return self.lockd(
            "record",
            self.container.name,
            "--key",
            self.keypair[0],
            "--output",
            out,
            "--deep",
            env=self.env,
        )

    def verify(self, *extra: str) -> tuple[int, dict[str, Any]]:
        """``(exit code, JSON report)`` of ``verify --deep`` against ``manifest``."""
        result = self.lockd(
            "verify",
            self.container.name,
            "--manifest",
            self.manifest,
            "--key",
            self.keypair[1],
            "--json",
            "--deep",
            *extra,
            env=self.env,
        )
        assert result.returncode in (0, 1), result.stdout + result.stderr
        return result.returncode, json.loads(result.stdout)


def recorded(deep: Deep) -> Deep:
    made = deep.record(deep.manifest)
    assert made.returncode == 0, made.stdout + made.stderr
    assert not deep.cache_file.exists()  # record keeps nothing
    return deep


@pytest.fixture
def deep_of(lockd: Lockd, keypair: tuple[Path, Path], tmp_path: Path) -> Callable[[Any], Deep]:
    """The container recorded with --deep (the manifest ``deep.manifest``)."""
    return lambda container: recorded(Deep(lockd, keypair, container, tmp_path))


@pytest.fixture
def app(app_image: str, run_container: Callable[..., Any]) -> Any:
    return run_container(app_image)


def message(report: dict[str, Any]) -> str:
    found = check(report, "integrity")["message"]
    assert isinstance(found, str)
    return found


def reused(report: dict[str, Any]) -> bool:
    return "integrity cache" in message(report)


def files(report: dict[str, Any]) -> int:
    return int(message(report).split(" files of ")[0])


def test_a_second_verification_takes_the_result_from_the_cache(
    app: Any, deep_of: Callable[[Any], Deep]
) -> None:
    d = deep_of(app)
    code, first = d.verify()
    assert (code, reused(first), check(first, "integrity")["status"]) == (0, False, "pass")
    kept = json.loads(zlib.decompress(d.cache_file.read_bytes()))
    assert kept["container"] == app.id

    code, second = d.verify()
    assert (code, reused(second), check(second, "integrity")["status"]) == (0, True, "pass")
    assert f"the result of {kept['observed_at']}, {REUSED}" in message(second)
    assert files(second) == files(first) > 500


def test_a_file_modified_in_the_container_is_found_then_found_again_from_the_cache(
    app: Any, deep_of: Callable[[Any], Deep]
) -> None:
    d = deep_of(app)
    d.verify()
    assert reused(d.verify()[1])

    sh(app, f"echo 'x = 1' >> {SITE}/six.py")
    code, report = d.verify()
    assert (code, reused(report)) == (1, False)
    assert findings(report) == [("modified", f"{SITE}/six.py")]

    code, again = d.verify()
    assert (code, reused(again)) == (1, True)
    assert check(again, "integrity")["findings"] == check(report, "integrity")["findings"]
    assert message(again).startswith("1 finding(s) against the RECORDs: 1 modified (")
    assert message(again).split(" (")[0] == message(report).split(" (")[0]


def test_no_cache_never_reuses_nor_keeps(app: Any, deep_of: Callable[[Any], Deep]) -> None:
    d = deep_of(app)
    d.verify()
    kept = d.cache_file.read_bytes()
    for _ in range(2):
        code, report = d.verify("--no-cache")
        assert (code, reused(report), check(report, "integrity")["status"]) == (0, False, "pass")
    assert d.cache_file.read_bytes() == kept
    assert reused(d.verify()[1])


def test_record_after_a_cached_verification_hashes_again(
    app: Any, deep_of: Callable[[Any], Deep]
) -> None:
    d = deep_of(app)
    d.verify()
    assert reused(d.verify()[1])

    out = d.tmp / "again.dsse.json"
    made = d.record(out)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "integrity cache" not in made.stdout + made.stderr
    envelope = json.loads(out.read_text())
    integrity = json.loads(base64.b64decode(envelope["payload"]))["predicate"]["observation"][
        "integrity"
    ]
    assert integrity["files"] > 500
    assert integrity.get("reused_from") is None


# --- a lower layer's file rewritten on the host --------------------------------------------------

DIST = "lockdtamper"


def record_line(site: Path, rel: str) -> str:
    data = (site / rel).read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{rel},sha256={digest},{len(data)}"


@pytest.fixture
def private_image(docker_client: Any, app_image: str, tmp_path: Path) -> Iterator[str]:
    """An image of its own: the app image plus one layer holding a distribution (a module, its
    METADATA and RECORD), since the test rewrites that layer's files on the host. Removed, with
    its containers, at teardown."""
    unique = uuid.uuid4().hex[:10]
    context = tmp_path / "context"
    site = context / "site"
    info = site / f"{DIST}-1.0.dist-info"
    info.mkdir(parents=True)
    (site / f"{DIST}.py").write_text(f"TOKEN = {unique!r}\n")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DIST}\nVersion: 1.0\n")
    (info / "INSTALLER").write_text("pip\n")
    rows = [record_line(site, rel) for rel in (f"{DIST}.py", f"{info.name}/METADATA")]
    rows += [record_line(site, f"{info.name}/INSTALLER"), f"{info.name}/RECORD,,"]
    (info / "RECORD").write_text("\n".join(rows) + "\n")
    (context / "Dockerfile").write_text(f"FROM {app_image}\nCOPY site/ {SITE}/\n")
    tag = f"lockd-test/integrity-tamper-{unique}:latest"
    docker_client.images.build(
        path=str(context),
        tag=tag,
        rm=True,
        forcerm=True,
        pull=False,
        network_mode="none",
        labels={TEST_LABEL: "1"},
    )
    shutil.rmtree(context)
    yield tag
    for container in docker_client.containers.list(all=True, filters={"ancestor": tag}):
        container.remove(force=True)
    docker_client.images.remove(tag, force=True)


def lower_file(docker_client: Any, container: Any, path: str) -> Path:
    """The host path of ``path`` in the container's image layers (the topmost holding it)."""
    data = docker_client.api.inspect_container(container.id)["GraphDriver"]["Data"]
    for layer in data["LowerDir"].split(":"):
        found = Path(layer) / path.lstrip("/")
        if found.is_file():
            return found
    raise AssertionError(f"{path} is in none of {data['LowerDir']}")


def test_a_lower_layer_file_rewritten_on_the_host_is_hashed_again(
    docker_client: Any,
    private_image: str,
    run_container: Callable[..., Any],
    deep_of: Callable[[Any], Deep],
) -> None:
    container = run_container(private_image)
    d = deep_of(container)
    code, first = d.verify()
    assert (code, reused(first)) == (0, False)
    code, second = d.verify()
    assert (code, reused(second)) == (0, True)

    module = lower_file(docker_client, container, f"{SITE}/{DIST}.py")
    assert module.read_text().startswith("TOKEN = ")
    was = module.stat()
    module.write_text(module.read_text().replace("TOKEN", "EVILS"))
    os.utime(module, ns=(was.st_atime_ns, was.st_mtime_ns))
    now = module.stat()
    assert (now.st_size, now.st_mtime_ns, now.st_ino) == (was.st_size, was.st_mtime_ns, was.st_ino)

    code, report = d.verify()
    assert (code, reused(report)) == (1, False)
    assert findings(report) == [("modified", f"{SITE}/{DIST}.py")]
