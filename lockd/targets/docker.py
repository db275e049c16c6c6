"""Docker targets: running containers and images, through the Docker Engine API.

Two kinds of evidence, as the architecture describes:

* from the host (trusted even if the container is not): the image identity the daemon
  reports, the mounts, the configured environment, and the container's filesystem changes
  read from the overlay2 upper directory on this host (or the daemon's changes API);
* from inside: the probe, run by the target's own Python through ``docker exec`` (for a
  container) or as the only process of a throw-away container (for an image). Its output
  is untrusted: read with a deadline and a size cap, then validated by ``parse_probe_output``.

The docker SDK is imported lazily: ``lockd verify`` should not pay for it before it needs it.
Everything the SDK raises becomes a ``TargetError`` (exit 3) that names the target.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import select
import signal
import stat
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any, Literal

from lockd.errors import InputError, ProbeError, TargetError
from lockd.model import ChangeKind, FileChange, HostEvidence, Mount, Observation, TargetInfo
from lockd.probe import probe_source
from lockd.targets.base import (
    MAX_PROBE_OUTPUT,
    PROBE_TIMEOUT,
    _stderr_tail,
    parse_probe_output,
)

if TYPE_CHECKING:
    from docker import DockerClient
    from docker.models.containers import Container
    from docker.models.images import Image

    from lockd.model import ProbeReport
    from lockd.targets.base import Target

__all__ = [
    "THROWAWAY_LABEL",
    "ContainerTarget",
    "ImageTarget",
    "changes_from_api",
    "changes_from_overlay",
    "connect",
    "container_changes",
    "overlay_dirs",
    "resolve",
]

THROWAWAY_LABEL = "lockd.throwaway"
"""Label on the containers ImageTarget starts (and always removes): find leftovers with it."""

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
PYTHONS = ("python3", "python")
"""Interpreters tried, in order, when no --python is given."""

_NOT_FOUND_EXIT_CODES = (126, 127)  # the runtime could not find or run the interpreter
_CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
_FRAME_HEADER = struct.Struct(">BxxxL")  # stream (1 stdout, 2 stderr), 3 zero bytes, size
_READ_CHUNK = 64 * 1024
_STDERR_KEEP = 16 * 1024
_EXIT_WAIT = 5.0  # seconds to wait for an exec's exit code once its output has closed
_TEXT_LIMIT = 4096  # the model's longest string
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
_CHANGE_KINDS: dict[int, ChangeKind] = {0: "changed", 1: "added", 2: "deleted"}


# --- the daemon ---------------------------------------------------------------------------------


def _docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def _cause(error: BaseException) -> str:
    """One line that says why the SDK failed, without its URL noise."""
    explanation = getattr(error, "explanation", None)
    text = str(explanation) if explanation else (str(error) or type(error).__name__)
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:300] + "..."


@contextmanager
def _docker_errors(what: str) -> Iterator[None]:
    """Turn what the docker SDK and requests raise into a TargetError that starts with ``what``."""
    from docker.errors import DockerException

    try:
        yield
    except (DockerException, OSError) as e:  # requests' exceptions are OSErrors
        raise TargetError(f"{what}: {_cause(e)}") from e


def connect() -> DockerClient:
    """A client for the daemon at DOCKER_HOST (or the default socket), checked with a ping.

    Raises:
        TargetError: the daemon cannot be reached (exit 3).
    """
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except (DockerException, OSError) as e:
        raise TargetError(
            f"cannot reach the Docker daemon ({_docker_host()}): {_cause(e)}. Start it "
            "(e.g. `sudo systemctl start docker`, or `dockerd &` as root) or set DOCKER_HOST."
        ) from e
    return client


def resolve(
    ref: str,
    client: DockerClient,
    *,
    python: str | None = None,
    timeout: float = PROBE_TIMEOUT,
    max_output: int = MAX_PROBE_OUTPUT,
) -> Target:
    """The target ``ref`` names: ``container:X``, ``image:X``, or a bare X (a container of that
    name or ID if one exists, else an image).

    Raises:
        InputError: the reference is empty after its prefix (exit 2).
        TargetError: nothing has that name, or the daemon failed (exit 3).
    """
    kind, name = _split_ref(ref)
    options: dict[str, Any] = {"python": python, "timeout": timeout, "max_output": max_output}
    if kind == "image":
        return ImageTarget(client, name, **options)
    container = _find_container(client, name) if kind or _CONTAINER_NAME.match(name) else None
    if container is not None:
        return ContainerTarget(client, container, **options)
    if kind == "container":
        raise TargetError(
            f"no container named {name!r}; list the running ones with `docker ps`, "
            f"or verify an image with image:{name}"
        )
    if _find_image(client, name) is None:
        raise TargetError(
            f"no container or image named {name!r}; list them with `docker ps -a` and "
            "`docker images`, or pull or build the image first"
        )
    return ImageTarget(client, name, **options)


def _split_ref(ref: str) -> tuple[Literal["container", "image", ""], str]:
    for prefix in ("container", "image"):
        if ref.startswith(prefix + ":"):
            name = ref[len(prefix) + 1 :]
            if not name:
                raise InputError(f"target {ref!r} names no {prefix}; write {prefix}:NAME")
            return prefix, name
    if not ref:
        raise InputError("the target is empty; name a container, an image, or local")
    return "", ref


def _find_container(client: DockerClient, name: str) -> Container | None:
    from docker.errors import NotFound

    with _docker_errors(f"cannot look up container {name}"):
        try:
            return client.containers.get(name)
        except NotFound:
            return None


def _find_image(client: DockerClient, ref: str) -> Image | None:
    from docker.errors import APIError, ImageNotFound

    with _docker_errors(f"cannot look up image {ref}"):
        try:
            return client.images.get(ref)
        except ImageNotFound:
            return None
        except APIError as e:
            if e.status_code == 400:  # not a valid reference: nothing can have that name
                return None
            raise


# --- host evidence ------------------------------------------------------------------------------


def _fit(text: str) -> str:
    """``text`` within the model's string limit; an over-long value keeps a digest of itself
    so that a change in it still shows."""
    if len(text) <= _TEXT_LIMIT:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{text[: _TEXT_LIMIT - 90]}...(sha256:{digest})"


def _parse_env(env: Sequence[str] | None) -> dict[str, str]:
    """``["K=V", ...]`` as a dict; an entry without ``=`` maps to the empty string."""
    result: dict[str, str] = {}
    for entry in env or ():
        key, _, value = entry.partition("=")
        result[_fit(key)] = _fit(value)
    return result


def _image_names(client: DockerClient, image_id: str) -> tuple[list[str], list[str]]:
    """(repo digests, repo tags) of an image; none when the image has gone (untagged and
    removed while a container still uses it)."""
    image = _find_image(client, image_id)
    if image is None:
        return [], []
    attrs = image.attrs
    return sorted(attrs.get("RepoDigests") or []), sorted(attrs.get("RepoTags") or [])


def _mounts(attrs: dict[str, Any]) -> list[Mount]:
    mounts = [
        Mount(
            destination=_fit(str(m.get("Destination", ""))),
            source=_fit(str(m.get("Source", ""))),
            type=str(m.get("Type", "")),
            rw=bool(m.get("RW", False)),
        )
        for m in attrs.get("Mounts") or []
    ]
    return sorted(mounts, key=lambda m: m.destination)


# --- filesystem changes -------------------------------------------------------------------------


def _is_whiteout(st: os.stat_result) -> bool:
    """overlayfs marks a deleted entry with a character device 0:0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    """overlayfs marks a directory that hides everything below it in lower layers."""
    for name in _OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


_Entry = Literal["missing", "whiteout", "file", "dir", "opaque"]


class _LowerLayers:
    """The image's layers, top first, as overlayfs merges them (whiteouts, opaque dirs)."""

    def __init__(self, lowers: Sequence[str]) -> None:
        self.lowers = list(lowers)
        self._dirs: dict[tuple[str, str], _Entry] = {}

    def _entry(self, layer: str, rel: str, cache: bool) -> _Entry:
        key = (layer, rel)
        if cache and key in self._dirs:
            return self._dirs[key]
        path = os.path.join(layer, rel)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            entry: _Entry = "missing"
        else:
            if _is_whiteout(st):
                entry = "whiteout"
            elif stat.S_ISDIR(st.st_mode):
                entry = "opaque" if _is_opaque(path) else "dir"
            else:
                entry = "file"
        if cache:
            self._dirs[key] = entry
        return entry

    def contains(self, rel: str) -> bool:
        """Whether the image (all lower layers merged) has something at ``rel``."""
        parts = rel.split("/")
        for layer in self.lowers:
            hides_lower = False
            for depth in range(1, len(parts) + 1):
                last = depth == len(parts)
                entry = self._entry(layer, "/".join(parts[:depth]), cache=not last)
                if entry == "missing":
                    break
                if entry == "whiteout":
                    return False
                if last:
                    return True
                if entry == "file":  # a file where a parent directory should be
                    return False
                if entry == "opaque":
                    hides_lower = True
            if hides_lower:
                return False
        return False

    def files_under(self, rel: str) -> set[str]:
        """Every non-directory the image shows below the directory ``rel``."""
        found: set[str] = set()
        for layer in self.lowers:
            top = os.path.join(layer, rel)
            for path in _walk_files(top):
                candidate = rel + "/" + os.path.relpath(path, top)
                if candidate not in found and self.contains(candidate):
                    found.add(candidate)
        return found


def _lstat(entry: os.DirEntry[str]) -> os.stat_result | None:
    try:
        return entry.stat(follow_symlinks=False)
    except FileNotFoundError:  # removed while we walk: the container is running
        return None


def _walk_files(top: str) -> Iterator[str]:
    """Every non-directory, non-whiteout path below ``top`` (not following links)."""
    stack = [top]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as entries:
                listed = list(entries)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in listed:
            st = _lstat(entry)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
            elif not _is_whiteout(st):
                yield entry.path


def changes_from_overlay(upper_dir: str, lower_dirs: Sequence[str]) -> list[FileChange]:
    """A container's filesystem changes, read from its overlay2 directories on this host.

    Every non-directory in the upper directory is a change: a whiteout is ``deleted``, an entry
    the image has is ``changed``, anything else ``added``; the files an opaque directory hides
    are ``deleted``. Directories themselves are not listed. Paths are container-absolute.

    Raises:
        OSError: a directory cannot be read (the caller falls back to the daemon's API).
    """
    layers = _LowerLayers(lower_dirs)
    changes: dict[str, ChangeKind] = {}
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        directory = os.path.join(upper_dir, rel_dir) if rel_dir else upper_dir
        try:
            with os.scandir(directory) as entries:
                listed = list(entries)
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed while we walk: the container is running
        for entry in listed:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            st = _lstat(entry)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                if _is_opaque(entry.path):
                    for hidden in layers.files_under(rel):
                        if not os.path.lexists(os.path.join(upper_dir, hidden)):
                            changes["/" + hidden] = "deleted"
                stack.append(rel)
            elif _is_whiteout(st):
                changes["/" + rel] = "deleted"
            else:
                changes["/" + rel] = "changed" if layers.contains(rel) else "added"
    return [FileChange(path=_fit(path), kind=changes[path]) for path in sorted(changes)]


def changes_from_api(container: Container) -> list[FileChange]:
    """A container's filesystem changes as the daemon reports them (``docker diff``).

    The daemon also lists the directories above each change; those are dropped, to match
    ``changes_from_overlay`` (an empty directory that was added still shows).

    Raises:
        TargetError: the daemon failed.
    """
    with _docker_errors(f"cannot read the filesystem changes of container {container.name}"):
        diff = container.diff() or []
    kinds = {str(item["Path"]): _CHANGE_KINDS.get(int(item["Kind"]), "changed") for item in diff}
    parents: set[str] = set()
    for path in kinds:
        parent = posixpath.dirname(path)
        while parent not in parents and parent != "/":
            parents.add(parent)
            parent = posixpath.dirname(parent)
    return [
        FileChange(path=_fit(path), kind=kinds[path])
        for path in sorted(kinds)
        if path not in parents
    ]


def container_changes(
    container: Container,
) -> tuple[list[FileChange], Literal["overlay", "api"]]:
    """The container's changes from its overlay2 upper directory when this host can read it
    (lockd runs beside the daemon, as root), else from the daemon's changes API.

    Raises:
        TargetError: the daemon failed.
    """
    driver = container.attrs.get("GraphDriver") or {}
    data = driver.get("Data") or {}
    upper = data.get("UpperDir")
    lowers = [p for p in str(data.get("LowerDir") or "").split(":") if p]
    if driver.get("Name") == "overlay2" and upper and os.path.isdir(upper):
        try:
            return changes_from_overlay(upper, lowers), "overlay"
        except OSError:
            pass  # not ours to read after all (permissions, another host's path)
    return changes_from_api(container), "api"


# --- files, for lockd.integrity (--deep) ---------------------------------------------------------

Archive = tuple[Iterable[bytes], dict[str, Any]]
"""The daemon's tar stream of a path (``docker cp``) and the path's stat."""

ARCHIVE_CHUNK = 1024 * 1024


def overlay_dirs(attrs: dict[str, Any]) -> tuple[str | None, list[str]]:
    """(merged directory, layer directories top first) of a container's or an image's
    overlay2 storage as the daemon reports them; (None, []) for another storage driver."""
    driver = attrs.get("GraphDriver") or {}
    if driver.get("Name") != "overlay2":
        return None, []
    data = driver.get("Data") or {}
    layers = [str(data["UpperDir"])] if data.get("UpperDir") else []
    layers += [p for p in str(data.get("LowerDir") or "").split(":") if p]
    merged = data.get("MergedDir")
    return (str(merged) if merged else None), layers


def _readable_dir(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.R_OK | os.X_OK)


def _archive_stream(chunks: Iterable[bytes], what: str) -> Iterator[bytes]:
    """The chunks, with what the SDK raises while they arrive made a TargetError."""
    from docker.errors import DockerException

    try:
        yield from chunks
    except (DockerException, OSError) as e:
        raise TargetError(f"{what}: {_cause(e)}") from e


def _fetch_archive(fetch: Callable[[], Archive], what: str) -> Archive | None:
    from docker.errors import NotFound

    with _docker_errors(what):
        try:
            chunks, info = fetch()
        except NotFound:
            return None
    return _archive_stream(chunks, what), info


# --- reading a multiplexed stream from the daemon -----------------------------------------------


def _recv(sock: Any, size: int) -> bytes | None:
    if hasattr(sock, "recv"):
        data: bytes = sock.recv(size)
        return data
    result: bytes | None = sock.read(size)  # socket.SocketIO (a Unix socket)
    return result


def _close_socket(sock: Any) -> None:
    for closable in (sock, getattr(sock, "_sock", None)):
        if closable is not None:
            with suppress(OSError):
                closable.close()


def _read_frames(
    sock: Any, deadline: float, max_output: int
) -> tuple[bytes, bytes, Literal["eof", "timeout", "overflow"]]:
    """Read a hijacked attach/exec stream to its end: (stdout, stderr tail, how it ended).

    Stops early at the deadline or when stdout exceeds ``max_output`` bytes.
    """
    stdout = bytearray()
    stderr = bytearray()
    header = bytearray()
    stream = 1
    left = 0  # bytes of the current frame still to come
    while True:
        pending = getattr(sock, "pending", None)  # TLS sockets may hold decrypted bytes
        if not (pending and pending()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(stdout), bytes(stderr), "timeout"
            readable, _, _ = select.select([sock], [], [], remaining)
            if not readable:
                continue
        chunk = _recv(sock, _READ_CHUNK)
        if chunk is None:
            continue
        if not chunk:
            return bytes(stdout), bytes(stderr), "eof"
        view = memoryview(chunk)
        while view:
            if left == 0:
                need = _FRAME_HEADER.size - len(header)
                header += view[:need]
                view = view[need:]
                if len(header) == _FRAME_HEADER.size:
                    stream, left = _FRAME_HEADER.unpack(header)
                    header.clear()
                continue
            part = view[:left]
            view = view[left:]
            left -= len(part)
            if stream == 2:
                stderr += part
                del stderr[:-_STDERR_KEEP]
            else:
                stdout += part
        if len(stdout) > max_output:
            return bytes(stdout), bytes(stderr), "overflow"


def _size(n: int) -> str:
    for unit, factor in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} bytes"


def _stopped(source: str, status: str, timeout: float, max_output: int) -> ProbeError:
    if status == "timeout":
        return ProbeError(
            f"{source}: probe timed out after {timeout:g}s; the target may be overloaded or "
            "stuck importing a library (torch?): retry, or inspect it"
        )
    return ProbeError(
        f"{source}: probe output exceeds {_size(max_output)}; something in the target floods "
        "stdout (is its python a real Python interpreter?)"
    )


def _exited(source: str, python: str, code: int, stderr: bytes) -> ProbeError:
    return ProbeError(
        f"{source}: probe ({python}) exited with status {code}: {_stderr_tail(stderr)}"
    )


def _candidates(python: str | None) -> tuple[str, ...]:
    return (python,) if python else PYTHONS


def _no_python(kind: str, source: str, python: str | None) -> str:
    """Why there is no probe report: no interpreter found. An explicit --python that is not
    there is the user's mistake: an error, not an observation.

    Raises:
        TargetError: ``python`` was given and is not in the target.
    """
    if python:
        raise TargetError(f"{source}: there is no interpreter {python} there; check --python")
    return f"no Python interpreter found in the {kind} (tried {', '.join(PYTHONS)})"


# --- a running container ------------------------------------------------------------------------


def _mount_namespace(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


class ContainerTarget:
    """A running container: host evidence from the daemon and the host's overlay directories,
    the probe through ``docker exec``."""

    def __init__(
        self,
        client: DockerClient,
        container: Container,
        python: str | None = None,
        timeout: float = PROBE_TIMEOUT,
        max_output: int = MAX_PROBE_OUTPUT,
    ) -> None:
        self.client = client
        self.container = container
        self.python = python
        self.timeout = timeout
        self.max_output = max_output
        self.name: str = container.name or container.id
        self.info = TargetInfo(kind="container", ref=self.name)
        self._source = f"container {self.name}"

    def observe(self) -> Observation:
        """Host evidence, then the probe's report (or why there is none: no Python).

        Raises:
            TargetError: the container is gone or not running, or the daemon failed.
            ProbeError: the probe failed, hung, flooded its output or printed garbage.
        """
        from docker.errors import NotFound

        with _docker_errors(f"cannot inspect {self._source}"):
            try:
                self.container.reload()
            except NotFound as e:
                raise TargetError(
                    f"{self._source} no longer exists; list containers with `docker ps -a`"
                ) from e
        attrs = self.container.attrs
        state = attrs.get("State") or {}
        status = str(state.get("Status", "unknown"))
        if status != "running":
            image = (attrs.get("Config") or {}).get("Image") or attrs.get("Image")
            raise TargetError(
                f"{self._source} is not running (status: {status}); start it or verify its "
                f"image with image:{image}"
            )
        host = self._host_evidence(attrs)
        probe, probe_error = self._probe(state)
        return Observation(target=self.info, host=host, probe=probe, probe_error=probe_error)

    def _host_evidence(self, attrs: dict[str, Any]) -> HostEvidence:
        image_id = str(attrs["Image"])
        repo_digests, repo_tags = _image_names(self.client, image_id)
        changes, changes_source = container_changes(self.container)
        return HostEvidence(
            image_id=image_id,
            repo_digests=repo_digests,
            repo_tags=repo_tags,
            container_id=str(attrs.get("Id", self.container.id)),
            changes=changes,
            changes_source=changes_source,
            mounts=_mounts(attrs),
            config_env=_parse_env((attrs.get("Config") or {}).get("Env")),
        )

    def _probe(self, state: dict[str, Any]) -> tuple[ProbeReport | None, str | None]:
        deadline = time.monotonic() + self.timeout
        for python in _candidates(self.python):
            stdout = self._exec(python, deadline, state)
            if stdout is not None:
                return parse_probe_output(stdout, source=self._source), None
        return None, _no_python("container", self._source, self.python)

    def _exec(self, python: str, deadline: float, state: dict[str, Any]) -> bytes | None:
        """The probe's stdout, or None when the container has no ``python``."""
        api = self.client.api
        with _docker_errors(f"{self._source}: cannot run the probe"):
            exec_id = api.exec_create(
                self.container.id, [python, "-c", probe_source()], stdin=False, tty=False
            )["Id"]
            sock = api.exec_start(exec_id, socket=True)
        try:
            with _docker_errors(f"{self._source}: lost the probe's output"):
                stdout, stderr, end = _read_frames(sock, deadline, self.max_output)
        finally:
            _close_socket(sock)
        if end != "eof":
            self._kill(exec_id, state)
            raise _stopped(self._source, end, self.timeout, self.max_output)
        code = self._exit_code(exec_id)
        if code is None:
            self._kill(exec_id, state)
            raise ProbeError(
                f"{self._source}: probe ({python}) closed its output but did not exit; inspect "
                "the container"
            )
        if code in _NOT_FOUND_EXIT_CODES:
            return None
        if code != 0:
            raise _exited(self._source, python, code, stderr)
        return stdout

    def _exit_code(self, exec_id: str) -> int | None:
        api = self.client.api
        give_up = time.monotonic() + _EXIT_WAIT
        with _docker_errors(f"{self._source}: cannot read the probe's exit status"):
            while True:
                details = api.exec_inspect(exec_id)
                if not details.get("Running") or time.monotonic() > give_up:
                    code = details.get("ExitCode")
                    return int(code) if code is not None else None
                time.sleep(0.02)

    def _kill(self, exec_id: str, state: dict[str, Any]) -> None:
        """Kill the exec'd probe by its host pid, when it provably lives in this container on
        this host (same mount namespace as the container's init, not ours); else leave it."""
        from docker.errors import DockerException

        try:
            pid = int(self.client.api.exec_inspect(exec_id).get("Pid") or 0)
        except (DockerException, OSError, ValueError):
            return
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

    def overlay_storage(self) -> tuple[str, str] | None:
        """(merged directory, upper directory) of the container's overlay2 storage, when this
        host can read them: lockd runs beside the daemon, as root, and the container's root
        filesystem is mounted there. The upper directory holds what the container wrote."""
        merged, layers = overlay_dirs(self.container.attrs)
        if (
            merged is None
            or not layers
            or not _readable_dir(merged)
            or not _readable_dir(layers[0])
        ):
            return None
        return (merged, layers[0]) if os.path.ismount(merged) else None

    def mount_sources(self) -> list[tuple[str, str]] | None:
        """(destination, host path) of each of the container's bind mounts and volumes: the
        merged directory does not show them, so what the container sees there is read from
        the source. None when a mount's content is not a path on this host (tmpfs, a volume
        driver's)."""
        found = []
        for mount in self.container.attrs.get("Mounts") or []:
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
        return _fetch_archive(
            lambda: self.container.get_archive(path, chunk_size=ARCHIVE_CHUNK), what
        )


# --- an image -----------------------------------------------------------------------------------


class ImageTarget:
    """An image: host evidence from the daemon, the probe as the only process of a throw-away
    container (no network, removed in every case)."""

    def __init__(
        self,
        client: DockerClient,
        image_ref: str,
        python: str | None = None,
        timeout: float = PROBE_TIMEOUT,
        max_output: int = MAX_PROBE_OUTPUT,
    ) -> None:
        """Raises TargetError when there is no such image (exit 3)."""
        self.client = client
        self.image_ref = image_ref
        self.python = python
        self.timeout = timeout
        self.max_output = max_output
        self.info = TargetInfo(kind="image", ref=image_ref)
        self._source = f"image {image_ref}"
        image = _find_image(client, image_ref)
        if image is None:
            raise TargetError(
                f"no image named {image_ref!r}; list images with `docker images`, or pull or "
                "build it first"
            )
        self.image: Image = image

    def observe(self) -> Observation:
        """Host evidence from the image, then the probe's report (or why there is none).

        Raises:
            TargetError: the daemon failed, or the throw-away container could not be removed.
            ProbeError: the probe failed, hung, flooded its output or printed garbage.
        """
        attrs = self.image.attrs
        host = HostEvidence(
            image_id=str(self.image.id),
            repo_digests=sorted(attrs.get("RepoDigests") or []),
            repo_tags=sorted(attrs.get("RepoTags") or []),
            changes=[],
            changes_source="none",
            mounts=[],
            config_env=_parse_env((attrs.get("Config") or {}).get("Env")),
        )
        deadline = time.monotonic() + self.timeout
        for python in _candidates(self.python):
            stdout = self._run(python, deadline)
            if stdout is not None:
                probe = parse_probe_output(stdout, source=self._source)
                return Observation(target=self.info, host=host, probe=probe)
        return Observation(
            target=self.info, host=host, probe_error=_no_python("image", self._source, self.python)
        )

    def _run(self, python: str, deadline: float) -> bytes | None:
        """Run the probe in a throw-away container; its stdout, or None without ``python``."""
        api = self.client.api
        with _docker_errors(f"{self._source}: cannot create a container to run the probe"):
            created = api.create_container(
                str(self.image.id),
                command=["-c", probe_source()],
                entrypoint=[python],
                network_disabled=True,
                labels={THROWAWAY_LABEL: "1"},
                host_config=api.create_host_config(
                    network_mode="none", log_config={"Type": "none", "Config": {}}
                ),
            )
        container_id = str(created["Id"])
        try:
            result = self._run_in(container_id, python, deadline)
        except BaseException:
            self._remove(container_id, quiet=True)
            raise
        self._remove(container_id, quiet=False)
        return result

    def _run_in(self, container_id: str, python: str, deadline: float) -> bytes | None:
        from docker.errors import APIError

        api = self.client.api
        what = f"{self._source}: cannot run the probe"
        with _docker_errors(what):
            sock = api.attach_socket(container_id, params={"stdout": 1, "stderr": 1, "stream": 1})
        try:
            with _docker_errors(what):
                try:
                    api.start(container_id)
                except APIError as e:
                    state = api.inspect_container(container_id).get("State") or {}
                    if state.get("ExitCode") in _NOT_FOUND_EXIT_CODES:
                        return None
                    raise TargetError(f"{what}: {_cause(e)}") from e
            with _docker_errors(f"{self._source}: lost the probe's output"):
                stdout, stderr, end = _read_frames(sock, deadline, self.max_output)
        finally:
            _close_socket(sock)
        if end != "eof":
            raise _stopped(self._source, end, self.timeout, self.max_output)
        with _docker_errors(f"{self._source}: the probe did not exit"):
            status = api.wait(container_id, timeout=max(deadline - time.monotonic(), 1.0))
        code = int(status.get("StatusCode", -1))
        if code in _NOT_FOUND_EXIT_CODES:
            return None
        if code != 0:
            raise _exited(self._source, python, code, stderr)
        return stdout

    def layer_dirs(self) -> list[str] | None:
        """The image's overlay2 layer directories, top first, when this host can read them
        (lockd runs beside the daemon, as root); else None."""
        _, layers = overlay_dirs(self.image.attrs)
        if not layers or not all(_readable_dir(layer) for layer in layers):
            return None
        return layers

    @contextmanager
    def archive_container(self) -> Iterator[Callable[[str], Archive | None]]:
        """A throw-away container of the image, created and never started, to read files
        from through the daemon's archive API: yields ``fetch(path)``; always removed.

        Raises:
            TargetError: the daemon failed.
        """
        api = self.client.api
        with _docker_errors(f"{self._source}: cannot create a container to read its files"):
            created = api.create_container(
                str(self.image.id),
                entrypoint=["/lockd-reads-files-never-runs"],
                network_disabled=True,
                labels={THROWAWAY_LABEL: "1"},
            )
        container_id = str(created["Id"])

        def fetch(path: str) -> Archive | None:
            what = f"{self._source}: cannot read {path} through the Docker API"
            return _fetch_archive(
                lambda: api.get_archive(container_id, path, chunk_size=ARCHIVE_CHUNK), what
            )

        try:
            yield fetch
        except BaseException:
            self._remove(container_id, quiet=True)
            raise
        self._remove(container_id, quiet=False)

    def _remove(self, container_id: str, *, quiet: bool) -> None:
        from docker.errors import DockerException, NotFound

        try:
            self.client.api.remove_container(container_id, force=True)
        except NotFound:
            pass
        except (DockerException, OSError) as e:
            if not quiet:
                raise TargetError(
                    f"{self._source}: cannot remove the throw-away container "
                    f"{container_id[:12]}: {_cause(e)}; remove it with "
                    f"`docker rm -f {container_id[:12]}`"
                ) from e
