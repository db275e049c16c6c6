"""lockd.evidence.docker.engine (the Docker interface's stdlib fast path) and the container target
over the interface, against the real daemon: inspect, exec with stdin, the multiplexed stream, a
container that goes away, output floods; the fast path and the docker SDK answering alike; and
`lockd verify <container>` never importing the docker SDK."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer

from lockd import cli
from lockd.cli.early import start_early
from lockd.errors import InputError, ProbeError, TargetError
from lockd.evidence.docker import DaemonError, Docker, NotFoundError, connect, read_frames
from lockd.evidence.docker.engine import Engine
from lockd.evidence.docker.sdk import Sdk
from lockd.evidence.targets.container import ContainerTarget
from lockd.evidence.targets.docker import open_docker_target
from lockd.evidence.targets.image import ImageTarget

Run = Callable[..., Any]


@pytest.fixture
def engine() -> Engine:
    found = Engine.from_env()
    assert found is not None, "DOCKER_HOST is one the Engine does not speak"
    return found


@pytest.fixture
def docker() -> Docker:
    return connect()


@pytest.fixture
def app(app_image: str, run_container: Run) -> Any:
    return run_container(app_image)


def processes(container: Any) -> str:
    return "\n".join(" ".join(p) for p in container.top(ps_args="-eo pid,args")["Processes"])


def test_inspect_answers_what_the_sdk_sees(docker_client: Any, engine: Engine, app: Any) -> None:
    ours = engine.inspect_container(app.name)
    theirs = docker_client.api.inspect_container(app.id)

    assert (ours["Id"], ours["Name"], ours["Image"]) == (
        theirs["Id"],
        theirs["Name"],
        theirs["Image"],
    )
    assert engine.inspect_image(ours["Image"])["Id"] == ours["Image"]
    engine.ping()


def test_missing_container_and_image_are_not_found(engine: Engine) -> None:
    with pytest.raises(NotFoundError, match=r"^No such container: lockd-no-such-thing$"):
        engine.inspect_container("lockd-no-such-thing")
    with pytest.raises(NotFoundError, match=r"lockd-test/no-such:image"):
        engine.inspect_image("lockd-test/no-such:image")


def test_exec_with_stdin_gives_stdout_stderr_and_exit_status(engine: Engine, app: Any) -> None:
    exec_id = engine.exec_create(app.id, ["sh", "-c", "cat; echo oops >&2; exit 3"], stdin=True)
    stream = engine.exec_start(exec_id["Id"], stdin=b"fed through stdin\n")
    try:
        result = read_frames(stream, time.monotonic() + 30, 1024 * 1024)
    finally:
        stream.close()

    assert result == (b"fed through stdin\n", b"oops\n", "eof")
    give_up = time.monotonic() + 10
    while (details := engine.exec_inspect(exec_id["Id"]))["Running"]:
        assert time.monotonic() < give_up
        time.sleep(0.05)
    assert details["ExitCode"] == 3


def test_large_output_arrives_whole_and_a_flood_stops_at_the_cap(engine: Engine, app: Any) -> None:
    exec_id = engine.exec_create(app.id, ["head", "-c", "3000000", "/dev/zero"])["Id"]
    stream = engine.exec_start(exec_id)
    try:
        stdout, _, end = read_frames(stream, time.monotonic() + 30, 4 * 1024 * 1024)
    finally:
        stream.close()
    assert (len(stdout), end) == (3000000, "eof")

    exec_id = engine.exec_create(app.id, ["sh", "-c", "yes lockd-flood"])["Id"]
    stream = engine.exec_start(exec_id)
    try:
        stdout, _, end = read_frames(stream, time.monotonic() + 30, 64 * 1024)
    finally:
        stream.close()
    assert end == "overflow"
    assert len(stdout) < 64 * 1024 + 64 * 1024 + 8  # one read past the cap at most


def test_a_script_that_floods_is_capped_and_killed(docker: Docker, app: Any) -> None:
    target = ContainerTarget(docker, docker.inspect_container(app.id))

    with pytest.raises(ProbeError) as caught:
        target.run_script(
            ["yes", "lockd-flood"],
            what="the flood",
            source=f"container {app.name} (flood)",
            timeout=30,
            max_output=64 * 1024,
        )

    assert str(caught.value) == (
        f"container {app.name} (flood): probe output exceeds 64 KiB; something in the target "
        "floods stdout (is its python a real Python interpreter?)"
    )
    assert "lockd-flood" not in processes(app)


def test_run_script_returns_stdout_and_quotes_a_failure(docker: Docker, app: Any) -> None:
    target = ContainerTarget(docker, docker.inspect_container(app.id))
    source = f"container {app.name} (script)"

    out = target.run_script(
        ["python3", "-c", "print(6 * 7)"],
        what="a script",
        source=source,
        timeout=30,
        max_output=1024,
    )
    assert out == b"42\n"
    with pytest.raises(ProbeError) as caught:
        target.run_script(
            ["python3", "-c", "import sys; sys.exit('broken')"],
            what="a script",
            source=source,
            timeout=30,
            max_output=1024,
        )
    assert str(caught.value) == f"{source}: probe (python3) exited with status 1: broken"


def test_container_removed_between_inspect_and_exec(
    engine: Engine, docker: Docker, app: Any
) -> None:
    attrs = engine.inspect_container(app.id)
    target = ContainerTarget(docker, attrs)
    app.remove(force=True)

    with pytest.raises(NotFoundError, match=rf"^No such container: {attrs['Id']}$"):
        engine.exec_create(attrs["Id"], ["true"])
    with pytest.raises(TargetError) as caught:
        target._start(["python3", "-V"], "the probe", target._source)
    assert str(caught.value) == (
        f"container {app.name} no longer exists; list containers with `docker ps -a`"
    )
    assert caught.value.exit_code == 3
    with pytest.raises(TargetError, match=r"no longer exists"):
        target.observe()


def test_container_stopped_between_inspect_and_exec(
    engine: Engine, docker: Docker, app: Any
) -> None:
    target = ContainerTarget(docker, engine.inspect_container(app.id))
    app.kill()
    app.wait(timeout=30)

    with pytest.raises(DaemonError) as refused:
        engine.exec_create(app.id, ["true"])
    assert refused.value.status == 409
    with pytest.raises(TargetError) as caught:
        target._start(["python3", "-V"], "the probe", target._source)
    assert str(caught.value).startswith(f"container {app.name}: cannot run the probe: ")
    assert "is not running" in str(caught.value)


def test_the_container_list_and_the_event_stream(
    engine: Engine, app_image: str, run_container: Run
) -> None:
    """What `lockd watch` asks every interval: the running containers a label selects, and
    their events as they happen (the stream is opened before the container starts)."""
    mark = f"lockd.engine-test={uuid.uuid4().hex[:10]}"
    key, _, value = mark.partition("=")
    stream = engine.events({"type": ["container"], "event": ["start", "die"], "label": [mark]})
    stuck = threading.Timer(120, stream.interrupt)  # a failure, not a hang, if none arrives
    stuck.start()
    try:
        container = run_container(app_image, labels={"lockd.test": "1", key: value})
        events = iter(stream)
        started = next(events)
        listed = engine.containers({"status": ["running"], "label": [mark]})
        container.kill()
        died = next(events)
    finally:
        stuck.cancel()
        stream.close()

    assert (started["Action"], started["Actor"]["ID"]) == ("start", container.id)
    assert [(c["Id"], c["Labels"][key]) for c in listed] == [(container.id, value)]
    assert (died["Action"], died["Actor"]["ID"]) == ("die", container.id)
    assert engine.containers({"status": ["running"], "label": [mark]}) == []


def test_observations_through_the_engine_and_the_sdk_agree(engine: Engine, app: Any) -> None:
    """The same calls answered by the stdlib fast path and by the docker SDK (what a
    DOCKER_HOST of ssh:// or TLS gets) give the same observation."""
    fast = Docker(engine.host, engine=engine, sdk=Sdk(engine.host))
    sdk_only = Docker(engine.host, engine=None, sdk=Sdk(engine.host))
    attrs = engine.inspect_container(app.id)

    ours = ContainerTarget(fast, attrs).observe()
    theirs = ContainerTarget(sdk_only, attrs).observe()

    assert ours.host == theirs.host
    assert ours.probe is not None and theirs.probe is not None
    assert ours.probe.distributions == theirs.probe.distributions
    assert ours.probe.python == theirs.probe.python


def test_open_docker_target_reaches_a_container(app: Any) -> None:
    target = open_docker_target(app.name, timeout=7)

    assert isinstance(target, ContainerTarget)
    assert (target.info.kind, target.info.ref, target.timeout) == ("container", app.name, 7)
    assert target.id == app.id
    assert target.running() is target


@pytest.mark.parametrize(
    ("ref", "error", "message"),
    [
        ("lockd-no-such-thing", TargetError, "no container or image named 'lockd-no-such-thing'"),
        ("lockd/no-such:image", TargetError, "no container or image named 'lockd/no-such:image'"),
        ("container:lockd-no-such-thing", TargetError, "no container named 'lockd-no-such-thing'"),
        ("container:../../x", TargetError, "no container named '../../x'"),
        ("image:lockd-no-such-thing", TargetError, "no image named 'lockd-no-such-thing'"),
        ("container:", InputError, "names no container"),
    ],
)
def test_open_docker_target_unknown_references(
    ref: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message) as caught:
        open_docker_target(ref)

    assert type(caught.value) is error


def test_open_docker_target_gives_an_image_to_the_sdk(app_image: str) -> None:
    assert isinstance(open_docker_target(app_image), ImageTarget)


def test_open_docker_target_without_a_daemon(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    host = f"unix://{tmp_path}/no-docker.sock"
    monkeypatch.setenv("DOCKER_HOST", host)

    with pytest.raises(TargetError) as caught:
        open_docker_target("web-1")

    assert str(caught.value) == (
        f"cannot reach the Docker daemon ({host}): No such file or directory. Start it (e.g. "
        "`sudo systemctl start docker`, or `dockerd &` as root) or set DOCKER_HOST."
    )
    assert caught.value.exit_code == 3


# --- the command line ---------------------------------------------------------------------------


def test_verify_of_a_container_never_imports_the_docker_sdk(
    app: Any,
    keypair: tuple[Path, Path],
    tmp_path: Path,
    lockd: Callable[..., subprocess.CompletedProcess[str]],
    repo_root: Path,
) -> None:
    manifest = tmp_path / "m.dsse.json"
    recorded = lockd("record", app.name, "--key", keypair[0], "--output", manifest)
    assert recorded.returncode == 0, recorded.stderr
    args = ["verify", app.name, "--manifest", str(manifest), "--key", str(keypair[1]), "--json"]
    code = (
        "import sys\nfrom lockd.cli import main\n"
        f"try:\n    main({args!r})\nfinally:\n"
        "    found = sorted(m for m in ('docker', 'requests', 'urllib3') if m in sys.modules)\n"
        "    print('imported:', found, file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(repo_root)}

    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr
    assert '"verified": true' in result.stdout
    assert "imported: []" in result.stderr


@pytest.fixture
def given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory, with the files `verify` is given: m.json and k.pub (what they
    hold is verify's business; an early start only looks for them)."""
    (tmp_path / "m.json").write_text("{}")
    (tmp_path / "k.pub").write_text("")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_main_starts_the_probe_before_typer_converts_the_arguments(app: Any, given: Path) -> None:
    command = typer.main.get_command(cli.app)

    started = start_early(command, ["verify", "--key", "k.pub", app.name, "--manifest=m.json"])

    assert started is not None and started.request.serves(app.name, None, False)
    _, observation = started.observation.result(timeout=60)
    assert observation.target.ref == app.name
    assert observation.probe is not None


@pytest.mark.parametrize(
    "args",
    [
        ["verify", "web-1", "--key", "k.pub"],  # no --manifest: the service or a registry
        ["verify", "web-1", "--manifest", "m.json", "--key", "k.pub", "--key", "typo.pub"],
        ["verify", "web-1", "--manifest", "typo.json", "--key", "k.pub"],
        ["verify", "web-1", "--manifest", "m.json", "--key", "k.pub", "--deep"],
        ["verify", "web-1", "--manifest", "m.json", "--key", "k.pub", "--registry"],
        ["verify", "web-1", "--manifest", "m.json", "--help"],
        ["verify", "web-1", "extra", "--manifest", "m.json"],
        ["verify", "web-1", "--manifest", "m.json", "--no-such-option"],
        ["verify", "web-1", "--manifest"],
        ["verify", "web-1", "--manifest", "m.json"],  # no --key: Typer says so, nothing waits
        ["record", "web-1", "--key", "k.key"],
    ],
)
def test_main_starts_nothing_early_for_other_commands(args: list[str], given: Path) -> None:
    command = typer.main.get_command(cli.app)

    assert start_early(command, args) is None


@pytest.mark.parametrize("typo", ["manifest", "key"])
def test_a_mistyped_file_fails_verify_before_any_probe_runs(
    app: Any,
    docker_client: Any,
    keypair: tuple[Path, Path],
    tmp_path: Path,
    lockd: Callable[..., subprocess.CompletedProcess[str]],
    typo: str,
) -> None:
    manifest = tmp_path / "m.dsse.json"
    assert lockd("record", app.name, "--key", keypair[0], "--output", manifest).returncode == 0
    files = {"manifest": manifest, "key": keypair[1]}
    files[typo] = tmp_path / "typo"
    time.sleep(1.05 - time.time() % 1)  # the daemon's events are filtered by whole seconds
    since = int(time.time())

    result = lockd("verify", app.name, "--manifest", files["manifest"], "--key", files["key"])

    assert (result.returncode, result.stdout) == (2, "")
    what = "manifest" if typo == "manifest" else "key file"
    assert f"{tmp_path / 'typo'}" in result.stderr and what in result.stderr
    events = docker_client.events(
        since=since,
        until=int(time.time()) + 1,
        decode=True,
        filters={"container": app.id, "event": "exec_create"},
    )
    assert list(events) == []  # no probe was started (its thread would hold up the exit)
