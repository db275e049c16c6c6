"""lockd record/verify --deep against the real Docker daemon: every installed file against its
RECORD, read from the container's merged directory, an image's layers, or the Docker API."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

SITE = "/opt/venv/lib/python3.11/site-packages"
Lockd = Callable[..., subprocess.CompletedProcess[str]]  # the `lockd` fixture (tests/conftest.py)


def record(
    lockd: Lockd,
    target: str,
    keypair: tuple[Path, Path],
    out: Path,
    *,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return lockd("record", target, "--key", keypair[0], "--output", out, "--deep", env=env)


def verify_deep(
    lockd: Lockd, target: str, manifest: Path, public: Path, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    result = lockd(
        "verify", target, "--manifest", manifest, "--key", public, "--json", "--deep", env=env
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def check(report: dict[str, Any], check_id: str) -> dict[str, Any]:
    [found] = [c for c in report["checks"] if c["id"] == check_id]
    return found


def findings(report: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f["kind"], f["path"]) for f in check(report, "integrity")["findings"]]


def sh(container: Any, command: str) -> None:
    code, output = container.exec_run(["sh", "-c", command], user="root")
    assert code == 0, output.decode()


@pytest.fixture
def app(app_image: str, run_container: Callable[..., Any]) -> Any:
    return run_container(app_image)


@pytest.fixture
def clean_manifest(app: Any, keypair: tuple[Path, Path], tmp_path: Path, lockd: Lockd) -> Path:
    """The app container recorded with --deep before anything is changed in it."""
    out = tmp_path / "clean.dsse.json"
    result = record(lockd, app.name, keypair, out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "integrity: " in result.stdout
    return out


def test_clean_container_passes_deep(
    app: Any, clean_manifest: Path, keypair: tuple[Path, Path], lockd: Lockd
) -> None:
    code, report = verify_deep(lockd, app.name, clean_manifest, keypair[1])
    assert code == 0, report
    integrity = check(report, "integrity")
    assert (integrity["status"], integrity["evidence"]) == ("pass", "host")
    message = integrity["message"]
    assert "read from the container's overlay merged directory, on the host" in message
    # six, idna, packaging, pip and setuptools: hundreds of hashed files (.pyc have no hash)
    assert int(message.split(" files of ")[0]) > 500


def test_edited_file_is_modified_and_record_deep_refuses(
    app: Any, clean_manifest: Path, keypair: tuple[Path, Path], tmp_path: Path, lockd: Lockd
) -> None:
    sh(app, f"echo 'x = 1' >> {SITE}/six.py")
    code, report = verify_deep(lockd, app.name, clean_manifest, keypair[1])
    assert code == 1
    [finding] = check(report, "integrity")["findings"]
    assert (finding["kind"], finding["name"], finding["path"]) == (
        "modified",
        "six",
        f"{SITE}/six.py",
    )
    assert finding["expected"] != finding["observed"]
    assert check(report, "filesystem")["status"] == "fail"  # the shallow check sees it too

    out = tmp_path / "refused.dsse.json"
    result = record(lockd, app.name, keypair, out)
    assert result.returncode == 1
    assert not out.exists()
    assert "refusing to sign" in result.stderr
    assert f"modified {SITE}/six.py (six)" in " ".join(result.stderr.split())


def test_deleted_file_is_missing(
    app: Any, clean_manifest: Path, keypair: tuple[Path, Path], lockd: Lockd
) -> None:
    sh(app, f"rm {SITE}/idna/codec.py")
    code, report = verify_deep(lockd, app.name, clean_manifest, keypair[1])
    assert code == 1
    assert findings(report) == [("missing", f"{SITE}/idna/codec.py")]


def test_unlisted_module_in_a_package_directory(
    app: Any, clean_manifest: Path, keypair: tuple[Path, Path], lockd: Lockd
) -> None:
    sh(
        app,
        f"echo 'import os' > {SITE}/idna/evil.py"
        f" && echo x > {SITE}/idna/__pycache__/evil.cpython-311.pyc"  # ignored by the policy
        f" && echo x > {SITE}/stray.py",  # in no package's directory
    )
    code, report = verify_deep(lockd, app.name, clean_manifest, keypair[1])
    assert code == 1
    assert findings(report) == [("unlisted", f"{SITE}/idna/evil.py")]
    assert check(report, "integrity")["findings"][0]["name"] == "idna"


def test_malformed_record_line_refuses_naming_the_file_and_line(
    app: Any, keypair: tuple[Path, Path], tmp_path: Path, lockd: Lockd
) -> None:
    record_file = f"{SITE}/six-1.16.0.dist-info/RECORD"
    sh(app, f"echo 'six.py,md5=1B2M2Y8AsgTpgAmY7PhCfg,0' >> {record_file}")
    lines = int(app.exec_run(["sh", "-c", f"wc -l < {record_file}"])[1].decode())
    out = tmp_path / "refused.dsse.json"
    result = record(lockd, app.name, keypair, out)
    assert result.returncode == 1
    assert not out.exists()
    message = " ".join(result.stderr.split())
    assert f"{record_file} line {lines}: unsupported hash algorithm 'md5'" in message


def test_image_layers_show_what_a_later_layer_changed(
    docker_client: Any, app_image: str, keypair: tuple[Path, Path], tmp_path: Path, lockd: Lockd
) -> None:
    """An image whose last layer edits one listed file and deletes another (a whiteout):
    read from its overlay2 layers, no container started."""
    tag = f"lockd-test/tampered-{uuid.uuid4().hex[:8]}:latest"
    dockerfile = (
        f"FROM {app_image}\nRUN echo 'x = 1' >> {SITE}/six.py && rm {SITE}/idna/codec.py\n"
    ).encode()
    docker_client.images.build(
        fileobj=io.BytesIO(dockerfile), tag=tag, rm=True, pull=False, network_mode="none"
    )
    try:
        clean = tmp_path / "image.dsse.json"
        result = record(lockd, f"image:{app_image}", keypair, clean)
        assert result.returncode == 0, result.stderr
        code, report = verify_deep(lockd, f"image:{tag}", clean, keypair[1])
        assert code == 1
        assert findings(report) == [
            ("missing", f"{SITE}/idna/codec.py"),
            ("modified", f"{SITE}/six.py"),
        ]
        assert "the image's overlay2 layers, on the host" in check(report, "integrity")["message"]
        refused = tmp_path / "tampered.dsse.json"
        assert record(lockd, f"image:{tag}", keypair, refused).returncode == 1
        assert not refused.exists()
    finally:
        docker_client.images.remove(tag, force=True)


def test_a_bind_mount_is_checked_as_the_container_sees_it(
    docker_client: Any,
    app_image: str,
    run_container: Callable[..., Any],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    lockd: Lockd,
) -> None:
    """The merged directory does not show mounts: lockd reads the mount's source instead."""
    clean = tmp_path / "image.dsse.json"
    assert record(lockd, f"image:{app_image}", keypair, clean).returncode == 0
    donor = run_container(app_image)
    chunks, _ = donor.get_archive(f"{SITE}/idna")
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        tar.extractall(tmp_path, filter="data")
    (tmp_path / "idna/core.py").write_text("# replaced through a volume\n")
    mounted = run_container(
        app_image, volumes={str(tmp_path / "idna"): {"bind": f"{SITE}/idna", "mode": "ro"}}
    )
    code, report = verify_deep(lockd, mounted.name, clean, keypair[1])
    assert code == 1
    assert findings(report) == [("modified", f"{SITE}/idna/core.py")]
    assert "overlay merged directory" in check(report, "integrity")["message"]


def throwaways(docker_client: Any) -> list[str]:
    from lockd.evidence.targets.image import THROWAWAY_LABEL

    found = docker_client.containers.list(all=True, filters={"label": THROWAWAY_LABEL})
    return sorted(c.id for c in found)


def test_docker_api_when_the_host_side_is_not_used(
    docker_client: Any,
    app: Any,
    app_image: str,
    clean_manifest: Path,
    keypair: tuple[Path, Path],
    tmp_path: Path,
    lockd: Lockd,
) -> None:
    """LOCKD_DEEP_SOURCE=api: the files stream through the daemon's archive API (as for a
    remote daemon, or lockd not root); a script outside site-packages is fetched on its own."""
    api = {"LOCKD_DEEP_SOURCE": "api"}
    before = throwaways(docker_client)
    image_manifest = tmp_path / "image-api.dsse.json"
    result = record(lockd, f"image:{app_image}", keypair, image_manifest, env=api)
    assert result.returncode == 0, result.stderr
    assert throwaways(docker_client) == before  # the created container is gone again

    sh(app, f"echo 'x = 1' >> {SITE}/six.py && echo '#' >> /opt/venv/bin/pip3")
    code, report = verify_deep(lockd, app.name, clean_manifest, keypair[1], env=api)
    assert code == 1
    integrity = check(report, "integrity")
    assert "the Docker daemon's archive API" in integrity["message"]
    assert findings(report) == [
        ("modified", "/opt/venv/bin/pip3"),
        ("modified", f"{SITE}/six.py"),
    ]


@pytest.fixture
def torch_container(torch_cpu_image: str, run_container: Callable[..., Any]) -> Iterator[Any]:
    yield run_container(torch_cpu_image)


def test_torch_cpu_image_records_and_verifies_clean_with_deep(
    torch_cpu_image: str,
    torch_container: Any,
    keypair: tuple[Path, Path],
    tmp_path: Path,
    lockd: Lockd,
) -> None:
    """The realistic heavy image (about 1 GB, 20k+ files): recorded from the image's layers,
    verified in a running container's merged directory."""
    manifest = tmp_path / "torch-cpu.dsse.json"
    result = record(lockd, f"image:{torch_cpu_image}", keypair, manifest)
    assert result.returncode == 0, result.stdout + result.stderr
    code, report = verify_deep(lockd, torch_container.name, manifest, keypair[1])
    assert code == 0, [c for c in report["checks"] if c["status"] == "fail"]
    integrity = check(report, "integrity")
    assert integrity["status"] == "pass"
    # 22k files in site-packages, of which 16k+ carry a hash (compiled .pyc files do not)
    assert int(integrity["message"].split(" files of ")[0]) > 15000
    assert torch_container.exec_run(["id", "-u"])[1].decode().strip() == "1000"
