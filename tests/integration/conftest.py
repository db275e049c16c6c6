"""Fixtures for tests against the real Docker daemon: a client, test images, containers.

Everything here needs what scripts/setup prepares (a running daemon, the base image
lockd/base:bookworm and the wheels in $LOCKD_WHEELS). When something is missing the tests
fail (red, never skipped) with a message that says to run scripts/setup.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

IMAGES = Path(__file__).resolve().parent.parent / "assets" / "images"
BASE_IMAGE = "lockd/base:bookworm"
DEFAULT_WHEELS = "/var/cache/lockd/wheels"
TEST_LABEL = "lockd.test"
SETUP = "run scripts/setup (as root) to prepare this machine"

_HERE = Path(__file__).resolve().parent


# Every test here, and every test anywhere that asks for docker_client, is marked
# ``integration`` by tests/conftest.py.


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A docker SDK client; fails (not skips) when the daemon cannot be reached."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except (DockerException, OSError) as e:
        pytest.fail(f"cannot reach the Docker daemon: {e}; {SETUP}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def wheels_dir() -> Path:
    """The folder of wheels the test images install from: $LOCKD_WHEELS, else the default."""
    path = Path(os.environ.get("LOCKD_WHEELS") or DEFAULT_WHEELS)
    if not path.is_dir() or not any(path.glob("*.whl")):
        pytest.fail(f"no wheels in {path} (LOCKD_WHEELS); {SETUP}")
    return path


@pytest.fixture(scope="session")
def build_image(
    docker_client: Any, wheels_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., str]:
    """``build_image(name, **buildargs)``: build tests/assets/images/<name>/ (with the wheels in
    its context, as ``wheels/``) as ``lockd-test/<name>:latest`` and return that tag. Builds
    are cached for the session and by the daemon; they never pull nor reach the network."""
    from docker.errors import BuildError, ImageNotFound

    try:
        docker_client.images.get(BASE_IMAGE)
    except ImageNotFound:
        pytest.fail(f"the base image {BASE_IMAGE} is missing; {SETUP}")
    built: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}

    def _build(name: str, **buildargs: str) -> str:
        key = (name, tuple(sorted(buildargs.items())))
        if key in built:
            return built[key]
        source = IMAGES / name
        if not (source / "Dockerfile").is_file():
            pytest.fail(f"no test image {name!r}: {source}/Dockerfile does not exist")
        context = tmp_path_factory.mktemp(f"image-{name}")
        shutil.copytree(source, context, dirs_exist_ok=True)
        shutil.copytree(wheels_dir, context / "wheels")
        tag = f"lockd-test/{name}:latest"
        try:
            docker_client.images.build(
                path=str(context),
                tag=tag,
                buildargs=buildargs or None,
                pull=False,
                rm=True,
                forcerm=True,
                network_mode="none",
                labels={TEST_LABEL: "1"},
            )
        except BuildError as e:
            log = "".join(str(line.get("stream", line.get("error", ""))) for line in e.build_log)
            pytest.fail(f"building the test image {name} failed: {e.msg}\n{log[-4000:]}")
        built[key] = tag
        return tag

    return _build


@pytest.fixture(scope="session")
def app_image(build_image: Callable[..., str]) -> str:
    """The small test image: /opt/venv with six, idna 3.7 and packaging; wheels in /wheels."""
    return build_image("app")


@pytest.fixture(scope="session")
def torch_cpu_image(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """locks/torch-cpu/Dockerfile built once per session (the daemon caches it across sessions)
    as ``lockd-test/torch-cpu:latest``: torch 2.13.0 CPU and numpy in /opt/venv (about 1 GB,
    20k+ files), non-root, from the locked wheels in $LOCKD_TORCH_WHEELS (default: torch-cpu/
    beside $LOCKD_WHEELS). The first build takes a few minutes."""
    from docker.errors import BuildError, ImageNotFound

    try:
        docker_client.images.get(BASE_IMAGE)
    except ImageNotFound:
        pytest.fail(f"the base image {BASE_IMAGE} is missing; {SETUP}")
    lock = _HERE.parent.parent / "locks" / "torch-cpu"
    default = Path(os.environ.get("LOCKD_WHEELS") or DEFAULT_WHEELS).parent / "torch-cpu"
    wheels = Path(os.environ.get("LOCKD_TORCH_WHEELS") or default)
    if not any(wheels.glob("torch-2.13.0+cpu-*.whl")):
        pytest.fail(f"no torch 2.13.0 CPU wheel in {wheels} (LOCKD_TORCH_WHEELS); {SETUP}")
    context = tmp_path_factory.mktemp("image-torch-cpu")
    shutil.copytree(lock, context, dirs_exist_ok=True)

    def link_or_copy(source: str, destination: str) -> None:
        try:
            os.link(source, destination)
        except OSError:
            shutil.copy2(source, destination)

    shutil.copytree(wheels, context / "wheels", copy_function=link_or_copy)
    tag = "lockd-test/torch-cpu:latest"
    try:
        docker_client.images.build(
            path=str(context),
            tag=tag,
            pull=False,
            rm=True,
            forcerm=True,
            network_mode="none",
            labels={TEST_LABEL: "1"},
            timeout=1800,
        )
    except BuildError as e:
        log = "".join(str(line.get("stream", line.get("error", ""))) for line in e.build_log)
        pytest.fail(f"building {lock}/Dockerfile failed: {e.msg}\n{log[-4000:]}")
    return tag


@pytest.fixture
def run_container(docker_client: Any) -> Iterator[Callable[..., Any]]:
    """``run_container(image, *, name_prefix="lockd-test", **kwargs)``: start a detached
    container (``containers.run`` keyword arguments pass through) and return it; every
    container started this way is removed at teardown."""
    started: list[Any] = []

    def _run(image: str, *, name_prefix: str = "lockd-test", **kwargs: Any) -> Any:
        kwargs.setdefault("name", f"{name_prefix}-{uuid.uuid4().hex[:10]}")
        kwargs.setdefault("labels", {TEST_LABEL: "1"})
        container = docker_client.containers.run(image, detach=True, **kwargs)
        started.append(container)
        return container

    yield _run

    from docker.errors import NotFound

    for container in started:
        with contextlib.suppress(NotFound):
            container.remove(force=True)
