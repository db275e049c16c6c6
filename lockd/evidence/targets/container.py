"""A running container as a target: host evidence from the daemon and from this host (the
overlay2 upper directory, the kernel's view of its processes), the probe through ``docker
exec``, bounded (a deadline, a cap on its output, killed when it overruns). Its output is
untrusted: validated by ``parse_probe_document``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

from lockd.errors import ProbeError, TargetError
from lockd.evidence import kernel
from lockd.evidence.cache import probe as probecache
from lockd.evidence.docker import DaemonError, Docker, NotFoundError, Stream, failing, read_frames
from lockd.evidence.targets.base import (
    MAX_PROBE_OUTPUT,
    PLAIN,
    PROBE_TIMEOUT,
    Fetch,
    Files,
    Gpus,
    HostFiles,
    ProbeOptions,
    parse_probe_document,
    probe_arguments,
)
from lockd.evidence.targets.changes import changes_from_api, container_changes
from lockd.evidence.targets.files import fetch_archive, overlay_dirs, readable_dir
from lockd.evidence.targets.host import configured_mounts, gpus_requested, image_names, parse_env
from lockd.evidence.targets.runs import (
    NOT_FOUND_EXIT_CODES,
    candidates,
    exited,
    no_python,
    stopped,
)

if TYPE_CHECKING:
    from lockd.evidence.docker import Archive
    from lockd.judgement.policy import Volatile
    from lockd.model.environment import FamilyImports, ProbeReport
    from lockd.model.host import FileChange, HostEvidence, TargetInfo
    from lockd.model.manifest import Observation
    from lockd.model.workload import Workload

__all__ = ["ContainerTarget"]

_EXIT_WAIT = 5.0  # seconds to wait for an exec's exit code once its output has closed


def _mount_namespace(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _wait_dead(pid: int, timeout: float = 2.0) -> None:
    """Wait (a little) until a killed process is gone or a zombie: SIGKILL is delivered
    asynchronously, and "killed" should hold when the caller goes on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                state = handle.read().rpartition(b")")[2].split()[:1]
        except OSError:
            return
        if state in ([b"Z"], [b"X"]):
            return
        time.sleep(0.01)


class ContainerTarget:
    """A running container: host evidence from the daemon and the host's overlay directories,
    the probe through ``docker exec``."""

    def __init__(
        self,
        docker: Docker,
        attrs: dict[str, Any],
        python: str | None = None,
        timeout: float = PROBE_TIMEOUT,
        max_output: int = MAX_PROBE_OUTPUT,
    ) -> None:
        """``attrs``: the daemon's inspect answer for the container."""
        self._docker = docker
        self.attrs = attrs
        self.id = str(attrs["Id"])
        self.python = python
        self.timeout = timeout
        self.max_output = max_output
        self.name: str = str(attrs.get("Name") or "").lstrip("/") or self.id
        self._info: TargetInfo | None = None
        self._source = f"container {self.name}"

    @property
    def info(self) -> TargetInfo:
        """Made on first use: the probe starts before lockd's models are imported."""
        if self._info is None:
            from lockd.model.host import TargetInfo

            self._info = TargetInfo(kind="container", ref=self.name)
        return self._info

    def _gone(self) -> TargetError:
        return TargetError(f"{self._source} no longer exists; list containers with `docker ps -a`")

    def inspect(self) -> dict[str, Any]:
        """The daemon's current inspect answer for the container (also kept in ``attrs``).

        Raises:
            TargetError: the container is gone, or the daemon failed.
        """
        with failing(f"cannot inspect {self._source}"):
            try:
                attrs = self._docker.inspect_container(self.id)
            except NotFoundError as e:
                raise self._gone() from e
        self.attrs = attrs
        return attrs

    def observe(self, options: ProbeOptions = PLAIN) -> Observation:
        """The running workload, host evidence, then the probe's report (or why there is none:
        no Python).

        The workload (what the container's processes run and map, lockd.evidence.workload) is
        read first, before lockd's own probe runs in the container, and on every observation;
        then the probe starts and runs while the host evidence is gathered. With
        ``options.reuse``, the probe's report is taken from the probe cache instead when
        nothing it can see has changed since it was kept (lockd.evidence.cache.probe); the
        workload never is (a kept report carries none).

        Raises:
            TargetError: the container is gone or not running, or the daemon failed.
            ProbeError: the probe failed, hung, flooded its output or printed garbage.
        """
        attrs = self.inspect()
        state = attrs.get("State") or {}
        status = str(state.get("Status", "unknown"))
        if status != "running":
            image = (attrs.get("Config") or {}).get("Image") or attrs.get("Image")
            raise TargetError(
                f"{self._source} is not running (status: {status}); start it or verify its "
                f"image with image:{image}"
            )
        workload = self._workload(attrs, options)  # before lockd's own probe runs in it
        pythons = candidates(self.python)
        cached, keys, kind = self._kept_report(attrs, pythons, options)
        if cached is not None:
            try:
                probe, imports = self._parse(cached.stdout, options)
            except ProbeError:
                pass  # kept by a lockd whose models differ: ask the probe
            else:
                host = self._host_evidence(attrs)
                return self._observation(
                    host, probe, imports, None, workload, reused_from=cached.observed_at
                )
        timeout = self.timeout + options.extra_time
        deadline = time.monotonic() + timeout
        started = self._start(self._probe_argv(pythons[0], options), "the probe", self._source)
        try:
            host = self._host_evidence(attrs)
        except BaseException:
            started[1].close()
            raise
        ran = self._probe(pythons, started, state, deadline, timeout, options)
        if ran is None:
            why = no_python("container", self._source, self.python)
            return self._observation(host, None, None, why, workload)
        stdout, python = ran
        probe, imports = self._parse(stdout, options)
        if keys.own or keys.sibling:  # kept where nothing changed while it ran
            after = probecache.keys(self.inspect(), self._probe_argvs(pythons, options))
            env = (self.attrs.get("Config") or {}).get("Env") or []
            rests_on = probecache.places(probe, env)
            for name, key in probecache.still_standing(self.id, keys, after, self.attrs, rests_on):
                probecache.store(name, key, stdout, python, rests_on, kind=kind)
        return self._observation(host, probe, imports, None, workload)

    def _workload(self, attrs: dict[str, Any], options: ProbeOptions) -> Workload:
        """The container's running workload, read on the host (lockd.evidence.workload) on
        every observation, never kept with a probe report: through ``options.hashes`` (the
        watch agent's), else, with ``options.reuse``, the digests kept across runs
        (lockd.evidence.cache.hashes), else every mapped file read.

        Raises:
            TargetError: the container stopped while lockd read its processes.
        """
        from lockd.evidence.cache import hashes as kept
        from lockd.evidence.workload import read_container_workload

        hashes = options.hashes
        across_runs = hashes is None and options.reuse
        if across_runs:
            hashes = kept.load()
        found = read_container_workload(attrs, self._source, hashes=hashes)
        if across_runs and hashes is not None:
            kept.save(hashes)
        return found

    def _observation(
        self,
        host: HostEvidence,
        probe: ProbeReport | None,
        imports: FamilyImports | None,
        probe_error: str | None,
        workload: Workload,
        *,
        reused_from: str | None = None,
    ) -> Observation:
        from lockd.model.manifest import (
            Observation,  # here: the probe starts before the models load
        )

        return Observation(
            target=self.info,
            host=host,
            probe=probe,
            probe_error=probe_error,
            family_imports=imports,
            probe_reused_from=reused_from,
            workload=workload,
        )

    def _kept_report(
        self, attrs: dict[str, Any], pythons: tuple[str, ...], options: ProbeOptions
    ) -> tuple[probecache.CachedProbe | None, probecache.Keys, str]:
        """(the probe cache's report for the container or None, the fingerprints looked under,
        the probe's variant). Its own fingerprint is tried first; the one it shares with
        identical containers of its image (which hashes the content of the container's own
        files) only when that finds nothing."""
        if not options.reuse:
            return None, probecache.Keys(None, None), ""
        argvs = self._probe_argvs(pythons, options)
        kind = probecache.variant(argvs)

        def load(name: str, key: probecache.KeyFor) -> probecache.CachedProbe | None:
            return probecache.load(name, key, kind=kind)

        found, keys = probecache.first_kept(self.id, attrs, argvs, load)
        return found, keys, kind

    def _probe_argvs(self, pythons: tuple[str, ...], options: ProbeOptions) -> list[list[str]]:
        return [self._probe_argv(python, options) for python in pythons]

    def _parse(
        self, stdout: bytes, options: ProbeOptions
    ) -> tuple[ProbeReport, FamilyImports | None]:
        return parse_probe_document(stdout, self._source, family_imports=options.family_imports)

    @staticmethod
    def _probe_argv(python: str, options: ProbeOptions) -> list[str]:
        return [python, *probe_arguments(options)]

    def _host_evidence(self, attrs: dict[str, Any]) -> HostEvidence:
        from lockd.model.host import HostEvidence

        image_id = str(attrs["Image"])
        repo_digests, repo_tags = image_names(self._docker, image_id)
        changes = container_changes(attrs, self._changes_from_api)
        host_config = attrs.get("HostConfig") or {}
        return HostEvidence(
            image_id=image_id,
            repo_digests=repo_digests,
            repo_tags=repo_tags,
            container_id=str(attrs.get("Id", self.id)),
            **changes.evidence(),
            gpus_requested=gpus_requested(attrs),
            mounts=configured_mounts(attrs),
            config_env=parse_env((attrs.get("Config") or {}).get("Env")),
            kernel=kernel.evidence(kernel.read_view(attrs, self._source)),
            privileged=bool(host_config.get("Privileged")),
            cap_add=sorted(str(c) for c in host_config.get("CapAdd") or [])[:64],
        )

    def _changes_from_api(self, volatile: Volatile, limit: int) -> list[FileChange]:
        return changes_from_api(self._docker, self.id, volatile, limit, source=self._source)

    def _probe(
        self,
        pythons: tuple[str, ...],
        started: tuple[str, Stream],
        state: dict[str, Any],
        deadline: float,
        timeout: float,
        options: ProbeOptions,
    ) -> tuple[bytes, str] | None:
        """(the probe's output, the interpreter that ran it) from the first of ``pythons``
        the container has (``started`` already runs it); None when it has none."""
        for tried, python in enumerate(pythons):
            if tried:
                started = self._start(self._probe_argv(python, options), "the probe", self._source)
            stdout, stderr, code = self._finish(
                started, "the probe", self._source, deadline, timeout, self.max_output, state
            )
            if code is None:
                raise ProbeError(
                    f"{self._source}: probe ({python}) closed its output but did not exit; "
                    "inspect the container"
                )
            if code in NOT_FOUND_EXIT_CODES:
                continue
            if code != 0:
                raise exited(self._source, python, code, stderr)
            return stdout, python
        return None

    def run_script(
        self,
        argv: Sequence[str],
        *,
        what: str,
        source: str,
        timeout: float,
        max_output: int,
        gpus: Gpus = "none",
    ) -> bytes:
        """Run ``argv`` (``[python, ...]``) in the container with ``docker exec`` to
        completion, bounded like the probe, and return its stdout (Target.run_script; the
        container has the GPUs it was started with). ``what`` names the script in errors
        ("the GPU suite"), ``source`` starts every message.

        Raises:
            TargetError: the container is gone, or the daemon failed.
            ProbeError: the script exits non-zero, outlives ``timeout`` seconds or prints more
                than ``max_output`` bytes (it is killed then).
        """
        deadline = time.monotonic() + timeout
        state = self.inspect().get("State") or {}
        started = self._start(argv, what, source)
        stdout, stderr, code = self._finish(
            started, what, source, deadline, timeout, max_output, state
        )
        if code != 0:
            raise exited(source, argv[0], -1 if code is None else code, stderr)
        return stdout

    def _start(self, argv: Sequence[str], what: str, source: str) -> tuple[str, Stream]:
        """Create and start ``argv`` as an exec: (its ID, the stream of its output)."""
        with failing(f"{source}: cannot run {what}"):
            try:
                exec_id = self._docker.exec_create(self.id, argv)
            except NotFoundError as e:
                raise self._gone() from e
            return exec_id, self._docker.exec_start(exec_id)

    def _finish(
        self,
        started: tuple[str, Stream],
        what: str,
        source: str,
        deadline: float,
        timeout: float,
        max_output: int,
        state: dict[str, Any],
    ) -> tuple[bytes, bytes, int | None]:
        """(stdout, stderr tail, exit status) of a started exec; the status is None when it
        closed its output but did not exit (it is killed).

        Raises:
            ProbeError: it outlived the deadline or printed more than ``max_output`` bytes
                (it is killed).
        """
        exec_id, stream = started
        try:
            with failing(f"{source}: lost the output of {what}"):
                stdout, stderr, end = read_frames(stream, deadline, max_output)
        finally:
            stream.close()
        if end != "eof":
            self._kill(exec_id, state)
            raise stopped(source, end, timeout, max_output)
        code = self._exit_code(exec_id)
        if code is None:
            self._kill(exec_id, state)
        return stdout, stderr, code

    def _exit_code(self, exec_id: str) -> int | None:
        give_up = time.monotonic() + _EXIT_WAIT
        with failing(f"{self._source}: cannot read the exit status of {exec_id[:12]}"):
            while True:
                details = self._docker.exec_inspect(exec_id)
                if not details.get("Running") or time.monotonic() > give_up:
                    code = details.get("ExitCode")
                    return int(code) if code is not None else None
                time.sleep(0.02)

    def _kill(self, exec_id: str, state: dict[str, Any]) -> None:
        """Kill the exec'd process by its host pid, when it provably lives in this container
        on this host (same mount namespace as the container's init, not ours); else leave it."""
        pid = self._exec_pid(exec_id)
        init_pid = int(state.get("Pid") or 0)
        if pid <= 0 or init_pid <= 0:
            return
        namespace = _mount_namespace(pid)
        if namespace is None or namespace != _mount_namespace(init_pid):
            return
        if namespace == _mount_namespace("self"):
            return
        with suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            _wait_dead(pid)

    def _exec_pid(self, exec_id: str) -> int:
        """The host pid of a running exec, 0 when it has none (it ended, or the daemon cannot
        say). The daemon reports Pid 0 for a while after an exec started, even while it is
        running and printing: ask again until it names one."""
        give_up = time.monotonic() + _EXIT_WAIT
        while True:
            try:
                details = self._docker.exec_inspect(exec_id)
                pid = int(details.get("Pid") or 0)
            except (DaemonError, ValueError):
                return 0
            if pid > 0 or not details.get("Running") or time.monotonic() > give_up:
                return pid
            time.sleep(0.02)

    def overlay_storage(self) -> tuple[str, str] | None:
        """(merged directory, upper directory) of the container's overlay2 storage, when this
        host can read them: lockd runs beside the daemon, as root, and the container's root
        filesystem is mounted there. The upper directory holds what the container wrote."""
        merged, layers = overlay_dirs(self.attrs)
        if merged is None or not layers or not readable_dir(merged) or not readable_dir(layers[0]):
            return None
        return (merged, layers[0]) if os.path.ismount(merged) else None

    def image_attrs(self) -> dict[str, Any] | None:
        """The daemon's inspect answer for the container's image (its layers, for the layer
        cache of --deep); None when the daemon cannot give it."""
        try:
            return self._docker.inspect_image(str(self.attrs.get("Image") or ""))
        except (DaemonError, OSError):  # the cache is an optimisation: hash everything
            return None

    def mount_sources(self) -> list[tuple[str, str]] | None:
        """(destination, host path) of each of the container's bind mounts and volumes: the
        merged directory does not show them, so what the container sees there is read from
        the source. None when a mount's content is not a path on this host (tmpfs, a volume
        driver's)."""
        found = []
        for mount in self.attrs.get("Mounts") or []:
            source = str(mount.get("Source") or "")
            destination = str(mount.get("Destination") or "")
            if mount.get("Type") not in ("bind", "volume") or not os.path.exists(source):
                return None
            found.append((destination, source))
        return found

    def fetch_archive(self, path: str) -> Archive | None:
        """``path`` in the container as the daemon's tar stream, None when nothing is there.

        Raises:
            TargetError: the daemon failed (also while the stream arrives).
        """
        what = f"{self._source}: cannot read {path} through the Docker API"
        return fetch_archive(self._docker, self.id, path, what)

    @contextmanager
    def _archive(self) -> Iterator[Fetch]:
        """``fetch_archive``, once the container is known to be there (a container gone is a
        TargetError, not its files missing)."""
        self.inspect()
        yield self.fetch_archive

    def files(self) -> Files:
        """The merged directory on this host when lockd can read it there (and every mount's
        source), else the daemon's archive API (Target.files)."""
        storage = self.overlay_storage()
        mounts = self.mount_sources()
        host = None
        if storage is not None and mounts is not None:
            _, layers = overlay_dirs(self.attrs)
            host = HostFiles(
                kind="overlay",
                roots=(storage[0],),
                description=f"the merged directory of container {self.name}",
                upper=storage[1],
                layers=tuple(layers),
                mounts=tuple(mounts),
                image=self.image_attrs,
            )
        return Files(
            host=host,
            archive=self._archive,
            archive_description=f"container {self.name} (Docker API)",
        )

    def running(self) -> ContainerTarget:
        """This container (Target.running)."""
        return self
