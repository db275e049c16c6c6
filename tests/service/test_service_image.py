"""The service image (top-level Dockerfile): it builds here without the network (wheels
installed with --require-hashes from the lock), runs as a non-root user, reports healthy, serves
the API over HTTPS, and is recorded and verified with lockd itself."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from certificates import Certificates, make_certificates

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "lockd/base:bookworm"
TAG = "lockd-test/service:latest"
SETUP = "run scripts/setup (as root) to prepare this machine"
Lockd = Callable[..., subprocess.CompletedProcess[str]]  # the `lockd` fixture (tests/conftest.py)


def run(*argv: str | Path, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    result = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, argv))[:200]} exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result.stdout


@pytest.fixture(scope="module")
def service_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Build the image on the debootstrap base from a context of the Dockerfile, the lock and
    a wheel folder (downloaded here, with hashes checked, for the base's Python)."""
    if (
        subprocess.run(
            ["docker", "image", "inspect", BASE_IMAGE], capture_output=True, check=False
        ).returncode
        != 0
    ):
        pytest.fail(f"the base image {BASE_IMAGE} is missing; {SETUP}")
    version = run(
        "docker",
        "run",
        "--rm",
        "--entrypoint",
        "python3",
        BASE_IMAGE,
        "-c",
        "import sys; print('%d.%d' % sys.version_info[:2])",
    ).strip()
    cache = Path(os.environ.get("LOCKD_SERVICE_WHEELS", "/var/cache/lockd/service-wheels"))
    wheels = cache / f"cp{version.replace('.', '')}"
    wheels.mkdir(parents=True, exist_ok=True)
    platforms = [
        "manylinux_2_28_x86_64",
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
        "manylinux_2_5_x86_64",
        "manylinux1_x86_64",
    ]
    run(
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--disable-pip-version-check",
        "--require-hashes",
        "--no-deps",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        version,
        *(f"--platform={p}" for p in platforms),
        "-r",
        REPO / "locks/lockd/requirements.txt",
        "-d",
        wheels,
    )
    context = tmp_path_factory.mktemp("image-context")
    shutil.copy(REPO / "Dockerfile", context / "Dockerfile")
    (context / "locks/lockd").mkdir(parents=True)
    shutil.copy(REPO / "locks/lockd/requirements.txt", context / "locks/lockd/requirements.txt")
    shutil.copytree(wheels, context / "build/wheels")
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--disable-pip-version-check",
        "--no-deps",
        "-w",
        context / "build/wheels",
        REPO,
    )
    run("docker", "build", "-q", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", TAG, context)
    return TAG


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    """The serving certificate, as the image expects it: /etc/lockd/tls/tls.crt and tls.key,
    readable by the image's user."""
    made = make_certificates(tmp_path / "tls")
    shutil.copy(made.server.cert, tmp_path / "tls" / "tls.crt")
    shutil.copy(made.server.key, tmp_path / "tls" / "tls.key")
    for path in (tmp_path / "tls", tmp_path / "tls" / "tls.crt", tmp_path / "tls" / "tls.key"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return made


@pytest.fixture
def container(
    service_image: str, keypair: tuple[Path, Path], certificates: Certificates
) -> Iterator[tuple[str, str]]:
    """The service running from the image: (container name, base URL on loopback, HTTPS)."""
    name = f"lockd-test-service-{uuid.uuid4().hex[:8]}"
    keys_dir = keypair[1].parent
    os.chmod(keys_dir, 0o755)
    run(
        "docker",
        "run",
        "-d",
        "--name",
        name,
        "--label",
        "lockd.test=1",
        "-p",
        "127.0.0.1::8080",
        "-v",
        f"{keys_dir}:/keys:ro",
        "-v",
        f"{certificates.server.cert.parent}:/etc/lockd/tls:ro",
        "-e",
        f"LOCKD_TRUSTED_KEYS=/keys/{keypair[1].name}",
        service_image,
    )
    try:
        port = run("docker", "port", name, "8080/tcp").splitlines()[0].rsplit(":", 1)[1]
        yield name, f"https://127.0.0.1:{port}"
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True, check=False)


def _health(name: str) -> str:
    return run("docker", "inspect", "--format", "{{.State.Health.Status}}", name).strip()


def test_the_image_serves_and_verifies_itself(
    container: tuple[str, str],
    keypair: tuple[Path, Path],
    certificates: Certificates,
    tmp_path: Path,
    lockd: Lockd,
) -> None:
    name, url = container
    deadline = time.monotonic() + 120
    while _health(name) != "healthy":
        assert time.monotonic() < deadline, f"{name} never became healthy: {_health(name)}"
        time.sleep(1)
    uid = run("docker", "exec", name, "id", "-u").strip()
    assert uid != "0"
    context = ssl.create_default_context(cafile=str(certificates.ca))
    with urllib.request.urlopen(url + "/readyz", timeout=10, context=context) as answer:
        assert json.loads(answer.read())["status"] == "ready"

    token = run(
        "docker", "exec", name, "lockd", "token", "create", "ci", "--role", "recorder"
    ).strip()
    assert token.startswith("lockd_")

    # Record the service's own image with lockd (its venv's Python), push the envelope to the
    # service inside that image, then verify the running container against it via the service.
    envelope = tmp_path / "service.dsse.json"
    recorded = lockd(
        "record",
        f"image:{TAG}",
        "--key",
        keypair[0],
        "--python",
        "/opt/lockd/bin/python",
        "-o",
        envelope,
    )
    assert recorded.returncode == 0, recorded.stderr
    client_env = {"LOCKD_TOKEN": token, "SSL_CERT_FILE": str(certificates.ca)}
    pushed = lockd(
        "push", envelope, "--server", url, "--label", "component=lockd-service", env=client_env
    )
    assert pushed.returncode == 0, pushed.stderr
    verified = lockd(
        "verify",
        f"container:{name}",
        "--server",
        url,
        "--key",
        keypair[1],
        "--python",
        "/opt/lockd/bin/python",
        "--json",
        env=client_env,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert report["verified"] is True
    statuses = {c["id"]: c["status"] for c in report["checks"]}
    assert statuses["image"] == "pass"
    assert statuses["packages"] == "pass"
    assert statuses["filesystem"] == "pass"

    audit = lockd("audit", "verify", "--server", url, "--json", env=client_env)
    assert audit.returncode == 0, audit.stderr
    assert json.loads(audit.stdout)["entries"] == 3  # token, manifest, report
