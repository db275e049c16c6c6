"""`lockd watch` on the real daemon, with real containers and a real `lockd serve` (SQLite, in a
child process) that has a manifest for the test image and a webhook receiver behind it.

Each test watches only its own containers (a label unique to the test), so containers of other
work on this daemon are never looked at. Waits poll for a state with a generous deadline; no
assertion is about how long something took.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sigstore_assets import ISSUER, ROOT, WHO

from lockd.client import Client
from lockd.model.fleet import FleetBatch
from lockd.trust.signed import Trust
from lockd.trust.sigstore_bundle import SigstoreBundle
from lockd.watch.agent import Agent
from lockd.watch.options import Selector, WatchOptions
from lockd.watch.run import open_agent
from lockd.watch.verifier import ManifestCache

Lockd = Callable[..., subprocess.CompletedProcess[str]]
LABEL = "lockd.watch-test"
TEST_LABEL = "lockd.test"
DEADLINE = 240.0  # seconds a wait may take on a loaded machine before the test fails
INSTALL = ["pip", "install", "--no-index", "--find-links", "/wheels", "tomli==2.0.1"]


def _service_helpers() -> Any:
    """tests/service/service_helpers.py (its ``Server`` runs `lockd serve` in a child)."""
    module = sys.modules.get("service_helpers")
    if module is None:
        path = Path(__file__).resolve().parents[1] / "service" / "service_helpers.py"
        spec = importlib.util.spec_from_file_location("service_helpers", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["service_helpers"] = module
        spec.loader.exec_module(module)
    return module


def wait_for(what: str, check: Callable[[], bool], deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            pytest.fail(f"waited {deadline:g} s for {what}")
        time.sleep(0.2)


# --- the webhook's receiver ----------------------------------------------------------------------


class Receiver:
    """An HTTP endpoint on loopback that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        received = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append(json.loads(body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def transitions(self) -> list[tuple[str, str, str]]:
        return [(e["container"]["name"], e["from"], e["to"]) for e in list(self.events)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the service -------------------------------------------------------------------------------


@dataclass
class Service:
    url: str
    token: str
    server: Any
    receiver: Receiver
    log: Path
    clients: list[Client] = field(default_factory=list)

    def client(self) -> Client:
        return Client(self.url, self.token)

    def fleet(self, host: str) -> dict[str, Any]:
        """name -> container view of ``host``."""
        view = self.client().fleet(host=host)
        return {c.name: c for h in view.hosts for c in h.containers}

    def verdicts(self, host: str) -> dict[str, str]:
        return {name: c.verdict for name, c in self.fleet(host).items()}

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as answer:
            return str(answer.read().decode())

    def restart(self) -> None:
        self.server.start()


@pytest.fixture(scope="session")
def recorded_app(
    app_image: str,
    keypair: tuple[Path, Path],
    lockd: Lockd,
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., Path]:
    """``recorded_app(*flags)``: the app image recorded with the session's key and ``flags``
    (``--bundle``: a Sigstore bundle), once a session for each."""
    made: dict[tuple[str, ...], Path] = {}

    def _record(*flags: str) -> Path:
        if flags not in made:
            name = "app.sigstore.json" if "--bundle" in flags else "app.dsse.json"
            out = tmp_path_factory.mktemp("watch-manifest") / name
            ran = lockd("record", f"image:{app_image}", "--key", keypair[0], *flags, "-o", out)
            assert ran.returncode == 0, ran.stderr
            made[flags] = out
        return made[flags]

    return _record


@pytest.fixture(scope="session")
def app_envelope(recorded_app: Callable[..., Path]) -> Path:
    return recorded_app()


@contextlib.contextmanager
def serving(
    tmp_path: Path, keypair: tuple[Path, Path], manifest: Path, lockd: Lockd
) -> Iterator[Service]:
    """`lockd serve` (SQLite, trusting the session's key) holding ``manifest``, pushed to it."""
    helpers = _service_helpers()
    receiver = Receiver()
    env = {
        "LOCKD_DATABASE_URL": f"sqlite:///{tmp_path / 'lockd.db'}",
        "LOCKD_TRUSTED_KEYS": str(keypair[1]),
        "LOCKD_WEBHOOK_URL": receiver.url,
        "LOCKD_WEBHOOK_BACKOFF_S": "0.2",
    }
    log_path = tmp_path / "service.log"
    with log_path.open("ab") as log:
        server = helpers.Server(env, log=log).start()
        try:
            made = lockd("token", "create", "watch-agent", "--role", "recorder", env=env)
            assert made.returncode == 0, made.stderr
            token = made.stdout.strip()
            pushed = lockd("push", manifest, "--server", server.url, env={"LOCKD_TOKEN": token})
            assert pushed.returncode == 0, pushed.stderr
            yield Service(server.url, token, server, receiver, log_path)
        finally:
            server.stop()
            receiver.close()


@pytest.fixture
def service(
    tmp_path: Path, keypair: tuple[Path, Path], app_envelope: Path, lockd: Lockd
) -> Iterator[Service]:
    with serving(tmp_path, keypair, app_envelope, lockd) as running:
        yield running


@pytest.fixture
def label() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
def start(run_container: Callable[..., Any], label: str) -> Callable[[str], Any]:
    """``start(image)``: a running container of ``image`` that this test's agent watches."""

    def _start(image: str) -> Any:
        return run_container(
            image, name_prefix="lockd-watch", labels={TEST_LABEL: "1", LABEL: label}
        )

    return _start


def options(service: Service, label: str, tmp_path: Path, **changes: Any) -> WatchOptions:
    base: dict[str, Any] = {
        "server": service.url,
        "host": f"watch-{label}",
        "spool": tmp_path / "spool",
        "interval_s": 2.0,
        "selectors": (Selector(LABEL, label),),
        "probe_timeout_s": 60.0,
        "flush_after_s": 0.5,
        "settle_s": 0.2,
    }
    base.update(changes)
    return WatchOptions(**base)


Watch = Callable[..., AbstractContextManager[Agent]]


@pytest.fixture
def watch(service: Service, label: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Watch:
    """``watch(**changes)``: an agent in this process on the test's containers (``options``
    with ``changes``), with the service's token, as ``open_agent`` gives it."""
    monkeypatch.setenv("LOCKD_TOKEN", service.token)
    return lambda **changes: open_agent(options(service, label, tmp_path, **changes))


def spooled(agent: Agent, sequences: list[int]) -> list[FleetBatch]:
    """The batches ``sequences`` as the agent spooled them, left in the spool for its courier."""
    batches = []
    for sequence in sequences:
        batch = agent.spool.load(sequence)
        agent.spool.release()
        assert batch is not None
        batches.append(batch)
    return batches


class Clock:
    """The agent's clock, moved by the test: a pass is 'one interval later' exactly."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def install_tomli(container: Any) -> None:
    code, output = container.exec_run(INSTALL)
    assert code == 0, output.decode()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} in the metrics:\n{text}")


# --- the tests ---------------------------------------------------------------------------------


def test_drift_is_found_by_the_next_pass_reported_and_alerted_once(
    service: Service,
    app_image: str,
    start: Callable[[str], Any],
    label: str,
    watch: Watch,
) -> None:
    drifting, steady = start(app_image), start(app_image)
    host = f"watch-{label}"
    with watch() as agent:
        clock = Clock()
        agent.clock = clock
        first = agent.run_pass(force=False)
        assert first.containers == {drifting.name: "pass", steady.name: "pass"}
        assert first.probes == 2
        assert agent.courier.deliver()
        assert service.verdicts(host) == {drifting.name: "pass", steady.name: "pass"}

        install_tomli(drifting)
        clock.now += 2.0  # one interval later: the next pass
        second = agent.run_pass(force=False)
        assert second.containers == {drifting.name: "fail", steady.name: "pass"}
        assert second.probes == 1  # the unchanged container was not probed again
        assert agent.courier.deliver()

        clock.now += 2.0
        third = agent.run_pass(force=False)
        assert third.probes == 0  # nothing changed: nothing probed, a heartbeat batch only
        [heartbeat] = third.batches
        assert agent.courier.deliver()
        agent_metrics = agent.metrics.render().decode()

    rows = service.fleet(host)
    assert rows[drifting.name].verdict == "fail"
    assert "packages: tomli 2.0.1 (added)" in rows[drifting.name].findings
    assert rows[drifting.name].verification_id is not None
    assert rows[steady.name].verdict == "pass"
    assert rows[steady.name].since < rows[drifting.name].since
    assert metric(agent_metrics, 'lockd_agent_containers{verdict="fail"}') == 1
    assert metric(agent_metrics, 'lockd_agent_containers{verdict="pass"}') == 1
    assert metric(agent_metrics, "lockd_agent_probes_total") == 3
    assert metric(agent_metrics, 'lockd_agent_deliveries_total{outcome="delivered"}') == heartbeat
    assert metric(agent_metrics, "lockd_agent_spool_batches") == 0
    service_metrics = service.metrics()
    assert metric(service_metrics, 'lockd_fleet_containers{verdict="fail"}') == 1
    assert metric(service_metrics, 'lockd_fleet_containers{verdict="pass"}') == 1
    # one transition to fail: one webhook call (pass is not alerted)
    wait_for("the webhook", lambda: len(service.receiver.events) >= 1)
    assert service.receiver.transitions() == [(drifting.name, "pass", "fail")]
    [event] = service.receiver.events
    assert "packages: tomli 2.0.1 (added)" in event["findings"]
    assert metric(service.metrics(), 'lockd_webhook_deliveries_total{outcome="delivered"}') == 1

    # lockd status shows it, and fails
    status = subprocess.run(
        [sys.executable, "-m", "lockd", "status", "--server", service.url, "--host", host],
        capture_output=True,
        text=True,
        env={**os.environ, "LOCKD_TOKEN": service.token, "COLUMNS": "200"},
        timeout=120,
        check=False,
    )
    assert status.returncode == 1, status.stderr
    assert drifting.name in status.stdout and "fail" in status.stdout


def test_a_mount_made_inside_makes_the_container_due_and_fails(
    service: Service,
    app_image: str,
    run_container: Callable[..., Any],
    label: str,
    watch: Watch,
) -> None:
    """The agent probes a container again only when its fingerprint changes: a tmpfs mounted
    inside (CAP_SYS_ADMIN) over a package directory, with nothing written to the upper
    directory, must change it (the kernel's view of the container's mounts is part of it), and
    the verdict must fail on the mount; the container beside it stays unprobed."""
    labels = {TEST_LABEL: "1", LABEL: label}
    mounting = run_container(
        app_image, name_prefix="lockd-watch", labels=labels, cap_add=["SYS_ADMIN"]
    )
    steady = run_container(app_image, name_prefix="lockd-watch", labels=labels)
    with watch() as agent:
        clock = Clock()
        agent.clock = clock
        first = agent.run_pass(force=False)
        assert first.containers == {mounting.name: "pass", steady.name: "pass"}
        clock.now += 2.0
        assert agent.run_pass(force=False).probes == 0  # unchanged: nothing probed

        site = "/opt/venv/lib/python3.11/site-packages"
        code, output = mounting.exec_run(["sh", "-c", f"mount -t tmpfs tmpfs {site}/idna"])
        assert code == 0, output.decode()
        clock.now += 2.0
        after = agent.run_pass(force=False)
        assert after.containers == {mounting.name: "fail", steady.name: "pass"}
        assert after.probes == 1
        assert agent.courier.deliver()
    findings = service.fleet(f"watch-{label}")[mounting.name].findings
    assert any(f"{site}/idna" in line and "tmpfs" in line for line in findings), findings


def test_the_agent_follows_events_and_survives_a_service_restart(
    service: Service,
    app_image: str,
    start: Callable[[str], Any],
    label: str,
    tmp_path: Path,
) -> None:
    """`lockd watch` as a process: containers that start and go are followed from the daemon's
    events; while the service is down the agent keeps judging (cached manifests) and spools; the
    service back, every batch arrives once, in order, and each transition alerts once."""
    first = start(app_image)
    host = f"watch-{label}"
    port = _service_helpers().free_port()
    agent_log = tmp_path / "agent.log"
    command = [
        sys.executable, "-m", "lockd", "watch",
        "--server", service.url,
        "--interval", "2s",
        "--label-selector", f"{LABEL}={label}",
        "--host", host,
        "--spool", str(tmp_path / "spool"),
        "--metrics-addr", f"127.0.0.1:{port}",
        "--probe-timeout", "60",
    ]  # fmt: skip
    env = {**os.environ, "LOCKD_TOKEN": service.token}

    def agent_metrics() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
                return str(answer.read().decode())
        except OSError:
            return ""

    def agent_metric(name: str) -> float:
        text = agent_metrics()
        return metric(text, name) if text else -1.0

    with agent_log.open("ab") as log:
        agent = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for("the first verdict", lambda: service.verdicts(host) == {first.name: "pass"})
        second = start(app_image)  # found through the start event
        wait_for(
            "the started container",
            lambda: service.verdicts(host) == {first.name: "pass", second.name: "pass"},
        )
        install_tomli(second)
        wait_for("the drift", lambda: service.verdicts(host).get(second.name) == "fail")
        second.remove(force=True)  # gone: out of the fleet view
        wait_for("the removal", lambda: service.verdicts(host) == {first.name: "pass"})

        service.server.stop()
        install_tomli(first)  # drift while the service is away: judged from the cached manifest
        wait_for(
            "the drift judged and spooled",
            lambda: (
                agent_metric('lockd_agent_containers{verdict="fail"}') == 1
                and agent_metric("lockd_agent_spool_batches") >= 2
            ),
        )
        assert agent_metric('lockd_agent_deliveries_total{outcome="failed"}') >= 1
        service.restart()
        wait_for("the spool delivered", lambda: agent_metric("lockd_agent_spool_batches") == 0)
        assert service.verdicts(host) == {first.name: "fail"}
        assert agent_metric('lockd_agent_deliveries_total{outcome="duplicate"}') == 0
        assert agent_metric('lockd_agent_deliveries_total{outcome="rejected"}') == 0
        assert agent_metric("lockd_agent_spool_quarantined_total") == 0
        wait_for("both alerts", lambda: len(service.receiver.events) >= 2)
        assert service.receiver.transitions() == [
            (second.name, "pass", "fail"),
            (first.name, "pass", "fail"),
        ]
        assert (tmp_path / "spool" / "manifests").is_dir()
    finally:
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=120)
    assert code == 0, agent_log.read_text()[-3000:]


def test_a_hung_probe_does_not_hold_back_the_other_verdicts(
    service: Service,
    app_image: str,
    build_image: Callable[..., str],
    start: Callable[[str], Any],
    label: str,
    watch: Watch,
) -> None:
    hanging = start(build_image("hangprobe", BASE=app_image))
    apps = [start(app_image), start(app_image)]
    with watch(probe_timeout_s=20.0) as agent:
        summary = agent.run_pass(force=True)
        batches = spooled(agent, summary.batches)
        assert agent.courier.deliver()
    assert summary.containers == {hanging.name: "error", **{a.name: "pass" for a in apps}}
    spooled_in = {r.container.name: i for i, b in enumerate(batches) for r in b.results}
    # the others' verdicts were batched while the hung probe still ran
    assert max(spooled_in[a.name] for a in apps) < spooled_in[hanging.name]
    [error] = [r.error for b in batches for r in b.results if r.container.name == hanging.name]
    assert error is not None and "probe timed out after 20s" in error
    assert service.verdicts(f"watch-{label}") == summary.containers
    assert "probe timed out after 20s" in (
        service.fleet(f"watch-{label}")[hanging.name].error or ""
    )


def test_a_container_removed_mid_probe(
    service: Service,
    app_image: str,
    build_image: Callable[..., str],
    start: Callable[[str], Any],
    label: str,
    watch: Watch,
) -> None:
    doomed = start(build_image("hangprobe", BASE=app_image))
    survivor = start(app_image)
    with watch(probe_timeout_s=120.0) as agent:
        done: dict[str, Any] = {}
        passing = threading.Thread(target=lambda: done.update(summary=agent.run_pass(force=True)))
        passing.start()
        wait_for("the probe to start", lambda: doomed.id in agent.in_flight())
        doomed.remove(force=True)
        passing.join(timeout=DEADLINE)
        assert not passing.is_alive()
        summary = done["summary"]
        batches = spooled(agent, summary.batches)
        assert agent.courier.deliver()
    assert summary.containers == {survivor.name: "pass"}
    results = {r.container.name: r for b in batches for r in b.results}
    assert results[doomed.name].verdict == "error"
    assert f"container {doomed.name} vanished mid-probe" in (results[doomed.name].error or "")
    assert doomed.id not in batches[-1].running and survivor.id in batches[-1].running
    assert service.verdicts(f"watch-{label}") == {survivor.name: "pass"}


# --- the daemon going away: a proxy in front of its socket --------------------------------------


class SocketProxy:
    """A Unix socket that forwards every connection to the daemon's; ``stop()`` is the daemon
    going away (every connection cut, none accepted), ``start()`` it coming back."""

    def __init__(self, path: Path, target: str = "/var/run/docker.sock") -> None:
        self.path = path
        self.target = target
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(64)
        listener.settimeout(0.2)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            with self._lock:
                self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            for sock in (source, sink):
                sock.close()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self.path.unlink(missing_ok=True)
        with self._lock:
            opened, self._open = self._open, []
        for sock in opened:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def flip(change: Callable[[], object]) -> bool:
    """Pause or unpause: whether it did (one event). The daemon updates a container's state
    after it answers, so a quick pause after an unpause can be refused as "already paused",
    and an unpause as "not paused" although inspect said paused a moment ago."""
    from docker.errors import APIError

    try:
        change()
    except APIError as e:
        if "paused" not in str(e):
            raise
        return False
    return True


def test_the_daemon_going_away_and_a_flood_of_events(
    service: Service,
    app_image: str,
    start: Callable[[str], Any],
    label: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    watch: Watch,
) -> None:
    proxy = SocketProxy(tmp_path / "docker.sock")
    proxy.start()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{proxy.path}")
    before = start(app_image)
    with watch() as agent:
        running = threading.Thread(target=agent.run)
        running.start()
        try:
            wait_for("the first verdict", lambda: agent.verdicts() == {before.name: "pass"})
            errors = agent.metrics.daemon_errors
            proxy.stop()  # the daemon goes away: the agent keeps going, and says so
            wait_for("the agent to notice", lambda: agent.metrics.daemon_errors > errors)
            meanwhile = start(app_image)  # its start event is never seen
            proxy.start()  # back: the agent reconnects, lists again, finds it
            wait_for(
                "the container started meanwhile",
                lambda: (
                    agent.verdicts() == {before.name: "pass", meanwhile.name: "pass"}
                    and agent.idle()
                ),
            )
            assert running.is_alive()

            # a flood of events: renamed 30 times, paused and unpaused 10 times; none of it
            # changes what a probe would see, so nothing is probed again and the verdict stands
            probes, events = agent.metrics.probes, agent.metrics.events
            flood = 30
            for n in range(30):
                meanwhile.rename(f"{meanwhile.name.rsplit('-v', 1)[0]}-v{n}")
                meanwhile.reload()
            for _ in range(10):
                flood += flip(meanwhile.pause) + flip(meanwhile.unpause)

            def runs() -> bool:
                nonlocal flood
                meanwhile.reload()
                if meanwhile.status == "paused":
                    flood += flip(meanwhile.unpause)
                return meanwhile.status == "running"

            wait_for("the container to run again", runs)
            wait_for(
                "the flood to be taken in",
                lambda: (
                    agent.metrics.events >= events + flood
                    and agent.verdicts().get(meanwhile.name) == "pass"
                    and agent.idle()
                ),
            )
            assert agent.metrics.probes == probes
        finally:
            agent.stop()
            running.join(timeout=DEADLINE)
            proxy.stop()
    assert not running.is_alive()
    wait_for(
        "the fleet view",
        lambda: service.verdicts(f"watch-{label}") == {before.name: "pass", meanwhile.name: "pass"},
    )


DLOPEN_LATER = """
import ctypes, os, time
print('ready', flush=True)
while not os.path.exists('/tmp/go'):
    time.sleep(0.05)
library = ctypes.CDLL('/tmp/libextra.so.1')
print('loaded', flush=True)
time.sleep(1e6)
"""


def test_a_library_mapped_mid_run_makes_the_container_due_and_fails(
    service: Service,
    app_image: str,
    run_container: Callable[..., Any],
    label: str,
    watch: Watch,
) -> None:
    """The workload is part of the watch fingerprint (#17): a write to /tmp (a volatile place)
    makes no container due; the job then maps the library it wrote there, and only that makes
    it due: its verdict turns to fail, naming the library; the container beside it is not
    probed again."""
    labels = {TEST_LABEL: "1", LABEL: label}
    job = run_container(
        app_image,
        name_prefix="lockd-watch",
        labels=labels,
        command=["python3", "-c", DLOPEN_LATER],
    )
    steady = run_container(app_image, name_prefix="lockd-watch", labels=labels)
    wait_for("the job to start", lambda: b"ready" in job.logs())
    with watch() as agent:
        clock = Clock()
        agent.clock = clock
        first = agent.run_pass(force=False)
        assert first.containers == {job.name: "pass", steady.name: "pass"}
        code, output = job.exec_run(
            ["sh", "-c", "cp /usr/lib/x86_64-linux-gnu/libz.so.1 /tmp/libextra.so.1"]
        )
        assert code == 0, output.decode()
        clock.now += 2.0
        assert agent.run_pass(force=False).probes == 0  # a write to /tmp: nothing is due

        code, output = job.exec_run(["touch", "/tmp/go"])
        assert code == 0, output.decode()
        wait_for("the job to map the library", lambda: b"loaded" in job.logs())
        clock.now += 2.0
        after = agent.run_pass(force=False)
        assert after.probes == 1
        assert after.containers == {job.name: "fail", steady.name: "pass"}
        assert agent.courier.deliver()
        code, output = job.exec_run(["sha256sum", "/tmp/libextra.so.1"])
        assert code == 0, output.decode()
    digest = output.decode().split()[0]
    assert service.fleet(f"watch-{label}")[job.name].findings == [
        f"workload: libextra.so.1 sha256:{digest} (not-in-image)",
        "workload: no-record",  # the manifest was recorded from the image
    ]


def test_a_manifest_pushed_as_a_bundle_passes_checked_on_the_host(
    tmp_path: Path,
    keypair: tuple[Path, Path],
    recorded_app: Callable[..., Path],
    app_image: str,
    start: Callable[[str], Any],
    label: str,
    lockd: Lockd,
) -> None:
    """`record --bundle`, `push`; `lockd watch --once` with --key and a keyless identity (the
    trust verify takes) fetches the bundle, checks it here and passes; the cache keeps the
    bundle as served, and one gone bad is dropped and fetched again."""
    app_bundle = recorded_app("--bundle")
    with serving(tmp_path, keypair, app_bundle, lockd) as service:
        container = start(app_image)
        spool, host = tmp_path / "spool", f"watch-{label}"
        trust = [
            *("--key", keypair[1], "--certificate-identity", WHO),
            *("--certificate-oidc-issuer", ISSUER, "--trusted-root", ROOT),
        ]
        ran = lockd(
            *("watch", "--once", "--server", service.url, "--host", host, "--spool", spool),
            *("--label-selector", f"{LABEL}={label}", *trust),
            env={"LOCKD_TOKEN": service.token},
        )
        assert (ran.returncode, ran.stdout) == (0, f"{container.name}\tpass\n"), ran.stderr
        assert service.verdicts(host) == {container.name: "pass"}
        [cached] = (spool / "manifests").iterdir()
        entry = json.loads(cached.read_bytes())
        assert json.loads(entry["signed"]) == json.loads(app_bundle.read_bytes())

        cached.write_text(json.dumps(dict(entry, signed=entry["signed"][:100])))
        cache = ManifestCache(spool / "manifests", service.client(), Trust(), service.url)
        image_id = "sha256:" + cached.stem
        known = cache.refresh(image_id)  # the entry is dropped: the service is asked again
        assert isinstance(known.signed, SigstoreBundle)
        assert json.loads(cached.read_bytes())["signed"] == entry["signed"]
