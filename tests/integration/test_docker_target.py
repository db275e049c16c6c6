"""The Docker targets (lockd.evidence.targets.docker, .container, .image) against the real Docker
daemon: host evidence, the probe, its limits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lockd.errors import InputError, ProbeError, TargetError
from lockd.evidence.docker import Docker, connect
from lockd.evidence.targets.changes import changes_from_api
from lockd.evidence.targets.container import ContainerTarget
from lockd.evidence.targets.docker import resolve
from lockd.evidence.targets.image import THROWAWAY_LABEL, ImageTarget
from lockd.model.host import FileChange, Mount
from lockd.model.manifest import Observation

SITE = "/opt/venv/lib/python3.11/site-packages"
NO_PYTHON = "no Python interpreter found in the container (tried python3, python)"

Run = Callable[..., Any]


def sh(container: Any, command: str) -> str:
    code, output = container.exec_run(["sh", "-c", command])
    assert code == 0, output.decode()
    return str(output.decode())


def changes(observation: Observation) -> dict[str, str]:
    assert observation.host is not None
    return {c.path: c.kind for c in observation.host.changes}


def versions(observation: Observation) -> dict[str, str]:
    assert observation.probe is not None
    return {d.name: d.version for d in observation.probe.distributions}


def throwaways(docker_client: Any) -> list[Any]:
    found: list[Any] = docker_client.containers.list(all=True, filters={"label": THROWAWAY_LABEL})
    return found


def processes(container: Any) -> str:
    return "\n".join(" ".join(p) for p in container.top(ps_args="-eo pid,args")["Processes"])


@pytest.fixture
def docker() -> Docker:
    return connect()


@pytest.fixture
def app(app_image: str, run_container: Run) -> Any:
    return run_container(app_image)


@pytest.fixture(scope="session")
def hang_image(build_image: Callable[..., str], app_image: str) -> str:
    return build_image("hangprobe", BASE=app_image)


@pytest.fixture(scope="session")
def flood_image(build_image: Callable[..., str], app_image: str) -> str:
    return build_image("floodprobe", BASE=app_image)


@pytest.fixture(scope="session")
def nopython_image(build_image: Callable[..., str]) -> str:
    return build_image("nopython")


@pytest.fixture(autouse=True)
def no_throwaway_left(docker_client: Any) -> Iterator[None]:
    yield
    assert throwaways(docker_client) == []


# --- a running container --------------------------------------------------------------------


def test_clean_container_has_its_image_and_no_changes(
    docker_client: Any,
    app: Any,
    app_image: str,
    docker: Docker,
) -> None:
    observation = ContainerTarget(docker, app.attrs).observe()

    assert observation.target.kind == "container"
    assert observation.target.ref == app.name
    host = observation.host
    assert host is not None
    assert host.image_id == docker_client.images.get(app_image).id
    assert app_image in host.repo_tags
    assert host.container_id == app.id
    assert host.changes == []
    assert host.changes_source == "overlay"
    assert host.mounts == []
    assert observation.probe_error is None
    assert versions(observation)["six"] == "1.16.0"
    assert versions(observation)["idna"] == "3.7"
    assert observation.probe is not None
    assert observation.probe.python.executable.startswith("/opt/venv/bin/python")


def test_pip_install_shows_as_added_files_and_a_new_distribution(docker: Docker, app: Any) -> None:
    sh(app, "pip install -q --no-index --find-links /wheels tomli")

    observation = ContainerTarget(docker, app.attrs).observe()

    assert observation.host is not None
    assert observation.host.changes_source == "overlay"
    found = changes(observation)
    tomli = {path: kind for path, kind in found.items() if path.startswith(f"{SITE}/tomli/")}
    assert f"{SITE}/tomli/__init__.py" in tomli
    assert set(tomli.values()) == {"added"}
    assert f"{SITE}/tomli-2.0.1.dist-info/RECORD" in found
    assert not any(path.endswith("/tomli") for path in found), "directories are not listed"
    assert versions(observation)["tomli"] == "2.0.1"

    # The daemon's changes API sees the same install, its bytecode included (volatile by
    # default, but read: a stricter policy judges it).
    from_api = {c.path: c.kind for c in changes_from_api(docker, app.id)}
    tomli_api = {p: k for p, k in from_api.items() if p.startswith(f"{SITE}/tomli/")}
    assert tomli_api == tomli
    assert set(found) <= set(from_api)


def test_edited_file_is_changed_and_removed_file_is_deleted(docker: Docker, app: Any) -> None:
    sh(app, f"echo '# edited' >> {SITE}/six.py && rm {SITE}/idna/codec.py")

    observation = ContainerTarget(docker, app.attrs).observe()

    found = changes(observation)
    assert found[f"{SITE}/six.py"] == "changed"
    assert found[f"{SITE}/idna/codec.py"] == "deleted"
    assert observation.host is not None
    assert observation.host.changes == sorted(observation.host.changes, key=lambda c: c.path)
    from_api = changes_from_api(docker, app.id)
    assert FileChange(path=f"{SITE}/six.py", kind="changed") in from_api
    assert FileChange(path=f"{SITE}/idna/codec.py", kind="deleted") in from_api


def test_replaced_directory_lists_the_files_it_hides_as_deleted(docker: Docker, app: Any) -> None:
    # rm -rf then mkdir: overlayfs makes the new directory opaque over the image's one
    sh(app, f"rm -rf {SITE}/idna && mkdir {SITE}/idna && echo '' > {SITE}/idna/__init__.py")

    found = changes(ContainerTarget(docker, app.attrs).observe())

    assert found[f"{SITE}/idna/__init__.py"] == "changed"
    assert found[f"{SITE}/idna/core.py"] == "deleted"
    assert found[f"{SITE}/idna/codec.py"] == "deleted"
    assert f"{SITE}/idna" not in found


def test_bind_mount_and_configured_environment_are_host_evidence(
    docker: Docker, app_image: str, run_container: Run, tmp_path: Path
) -> None:
    container = run_container(
        app_image,
        volumes={str(tmp_path): {"bind": "/data", "mode": "ro"}},
        environment={"LOCKD_TEST_VAR": "hello=world"},
    )

    host = ContainerTarget(docker, container.attrs).observe().host

    assert host is not None
    assert Mount(destination="/data", source=str(tmp_path), type="bind", rw=False) in host.mounts
    assert host.config_env["LOCKD_TEST_VAR"] == "hello=world"
    assert host.config_env["PATH"].startswith("/opt/venv/bin:")


def test_explicit_interpreter_is_used(docker: Docker, app: Any) -> None:
    observation = ContainerTarget(docker, app.attrs, python="/usr/bin/python3").observe()

    assert observation.probe is not None
    assert observation.probe.python.executable == "/usr/bin/python3"
    assert "six" not in versions(observation)


def test_explicit_interpreter_that_is_missing_is_an_error(docker: Docker, app: Any) -> None:
    with pytest.raises(TargetError, match=r"no interpreter /nowhere/python there; check --python"):
        ContainerTarget(docker, app.attrs, python="/nowhere/python").observe()


def test_container_without_python_still_gives_host_evidence(
    docker_client: Any,
    nopython_image: str,
    run_container: Run,
    docker: Docker,
) -> None:
    container = run_container(nopython_image)

    observation = ContainerTarget(docker, container.attrs).observe()

    assert observation.probe is None
    assert observation.probe_error == NO_PYTHON
    assert observation.host is not None
    assert observation.host.image_id == docker_client.images.get(nopython_image).id


def test_hanging_probe_times_out_and_is_killed(
    docker: Docker, hang_image: str, run_container: Run
) -> None:
    container = run_container(hang_image)
    start = time.monotonic()

    with pytest.raises(ProbeError, match=rf"container {container.name}: .*timed out after 2s"):
        ContainerTarget(docker, container.attrs, timeout=2).observe()

    assert time.monotonic() - start < 10
    assert "sleep 1000" not in processes(container)


def test_flooding_probe_hits_the_output_cap_and_is_killed(
    docker: Docker, flood_image: str, run_container: Run
) -> None:
    container = run_container(flood_image)

    with pytest.raises(ProbeError, match=r"output exceeds 64 KiB"):
        ContainerTarget(docker, container.attrs, max_output=64 * 1024).observe()

    assert "yes" not in processes(container).split()


def test_probe_that_fails_quotes_its_stderr(docker: Docker, app: Any) -> None:
    sh(app, "printf '#!/bin/sh\\necho broken >&2\\nexit 3\\n' > /tmp/py && chmod +x /tmp/py")

    with pytest.raises(ProbeError, match=r"exited with status 3: broken"):
        ContainerTarget(docker, app.attrs, python="/tmp/py").observe()


def test_stopped_container_is_not_inspected(docker: Docker, app: Any, app_image: str) -> None:
    app.kill()

    with pytest.raises(TargetError, match=r"is not running \(status: exited\)") as caught:
        ContainerTarget(docker, app.attrs).observe()

    assert f"image:{app_image}" in str(caught.value)
    assert caught.value.exit_code == 3


def test_removed_container_is_a_target_error(docker: Docker, app: Any) -> None:
    target = ContainerTarget(docker, app.attrs)
    app.remove(force=True)

    with pytest.raises(TargetError, match=r"no longer exists"):
        target.observe()


# --- an image -------------------------------------------------------------------------------


def test_image_is_probed_in_a_throwaway_container(
    docker_client: Any, app_image: str, docker: Docker
) -> None:
    observation = ImageTarget(docker, app_image).observe()

    assert observation.target.kind == "image"
    assert observation.target.ref == app_image
    host = observation.host
    assert host is not None
    assert host.image_id == docker_client.images.get(app_image).id
    assert app_image in host.repo_tags
    assert host.changes == []
    assert host.changes_source == "none"
    assert host.container_id is None
    assert host.config_env["PIP_NO_CACHE_DIR"] == "1"
    assert versions(observation)["idna"] == "3.7"
    assert throwaways(docker_client) == []


def test_image_without_python(docker: Docker, nopython_image: str) -> None:
    observation = ImageTarget(docker, nopython_image).observe()

    assert observation.probe is None
    assert observation.probe_error == NO_PYTHON.replace("container", "image")


def test_image_probe_timeout_leaves_no_container(
    docker_client: Any, hang_image: str, docker: Docker
) -> None:
    start = time.monotonic()

    with pytest.raises(ProbeError, match=rf"image {hang_image}: .*timed out after 2s"):
        ImageTarget(docker, hang_image, timeout=2).observe()

    assert time.monotonic() - start < 15
    assert throwaways(docker_client) == []


def test_image_probe_flood_leaves_no_container(
    docker_client: Any, flood_image: str, docker: Docker
) -> None:
    with pytest.raises(ProbeError, match=r"output exceeds 64 KiB"):
        ImageTarget(docker, flood_image, max_output=64 * 1024).observe()

    assert throwaways(docker_client) == []


def test_missing_image(docker: Docker) -> None:
    with pytest.raises(TargetError, match=r"no image named 'lockd-test/nothing:here'") as caught:
        ImageTarget(docker, "lockd-test/nothing:here")

    assert caught.value.exit_code == 3


# --- resolving a reference ------------------------------------------------------------------


@pytest.fixture
def twin(docker_client: Any, app_image: str, run_container: Run) -> Iterator[str]:
    """A name that is both a running container and an image tag."""
    name = f"lockd-twin-{uuid.uuid4().hex[:10]}"
    docker_client.images.get(app_image).tag(name, "latest")
    run_container(app_image, name=name)
    yield name
    docker_client.images.remove(f"{name}:latest")


def test_bare_name_prefers_the_container(docker: Docker, twin: str) -> None:
    target = resolve(twin, docker)

    assert isinstance(target, ContainerTarget)
    assert target.info.ref == twin


@pytest.mark.parametrize(
    ("prefix", "kind"), [("container:", ContainerTarget), ("image:", ImageTarget)]
)
def test_prefix_forces_the_kind(docker: Docker, twin: str, prefix: str, kind: type) -> None:
    target = resolve(prefix + twin, docker, timeout=7)

    assert isinstance(target, kind)
    assert target.timeout == 7  # type: ignore[attr-defined]


def test_bare_image_reference_and_container_id(docker: Docker, app: Any, app_image: str) -> None:
    assert isinstance(resolve(app_image, docker), ImageTarget)
    assert isinstance(resolve(app.id[:12], docker), ContainerTarget)


@pytest.mark.parametrize(
    ("ref", "error", "message"),
    [
        ("lockd-no-such-thing", TargetError, "no container or image named 'lockd-no-such-thing'"),
        ("lockd/no-such:image", TargetError, "no container or image named 'lockd/no-such:image'"),
        ("Not A Reference", TargetError, "no container or image named 'Not A Reference'"),
        ("container:lockd-no-such-thing", TargetError, "no container named 'lockd-no-such-thing'"),
        ("image:lockd-no-such-thing", TargetError, "no image named 'lockd-no-such-thing'"),
        ("container:", InputError, "names no container"),
        ("image:", InputError, "names no image"),
    ],
)
def test_unknown_references(docker: Docker, ref: str, error: type[Exception], message: str) -> None:
    start = time.monotonic()

    with pytest.raises(error, match=message) as caught:
        resolve(ref, docker)

    assert type(caught.value) is error
    assert time.monotonic() - start < 5


# --- the daemon -----------------------------------------------------------------------------


def test_connect_reaches_the_daemon() -> None:
    connect().ping()


def test_unreachable_daemon_is_a_target_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    host = f"unix://{tmp_path}/no-docker.sock"
    monkeypatch.setenv("DOCKER_HOST", host)

    with pytest.raises(TargetError, match=rf"cannot reach the Docker daemon \({host}\)") as caught:
        connect().ping()

    assert caught.value.exit_code == 3
    assert "set DOCKER_HOST" in str(caught.value)


def test_importing_the_target_does_not_import_the_docker_sdk(repo_root: Path) -> None:
    code = "import sys, lockd.evidence.targets.docker; sys.exit('docker' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    assert subprocess.run([sys.executable, "-c", code], env=env, check=False).returncode == 0


def test_interrupted_image_probe_removes_its_container(
    docker_client: Any,
    hang_image: str,
    repo_root: Path,
) -> None:
    code = (
        # A job a shell starts in the background ignores SIGINT, and so do its children:
        # give this one Ctrl-C back, whatever runs the tests.
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from lockd.evidence.docker import connect\n"
        "from lockd.evidence.targets.image import ImageTarget\n"
        f"ImageTarget(connect(), {hang_image!r}, timeout=60).observe()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    try:
        give_up = time.monotonic() + 20
        while not [c for c in throwaways(docker_client) if c.status == "running"]:
            assert time.monotonic() < give_up, "no throw-away container started"
            assert process.poll() is None, process.communicate()[1]
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
    finally:
        process.kill()
    assert b"KeyboardInterrupt" in stderr
    assert throwaways(docker_client) == []


def test_an_interrupt_while_the_daemon_creates_the_throwaway_still_removes_it(
    docker_client: Any,
    app_image: str,
    monkeypatch: pytest.MonkeyPatch,
    docker: Docker,
) -> None:
    """The daemon made the container but its answer never arrived (Ctrl-C in between): the
    container was named before it existed, so it is removed by that name."""
    target = ImageTarget(docker, app_image)
    create = docker.create_container

    def created_then_interrupted(*args: Any, **kwargs: Any) -> Any:
        create(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(docker, "create_container", created_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        target.observe()
    assert throwaways(docker_client) == []
