"""An image as a target: host evidence from the daemon, the probe (or a script) as the only
process of a throw-away container: no network, no log kept, removed in every case, even when
lockd is interrupted while the daemon creates it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lockd.errors import ProbeError, TargetError
from lockd.evidence.docker import (
    Archive,
    DaemonError,
    Docker,
    NotFoundError,
    cause,
    failing,
    read_frames,
)
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
from lockd.evidence.targets.files import fetch_archive, overlay_dirs, readable_dir
from lockd.evidence.targets.host import parse_env
from lockd.evidence.targets.runs import (
    NOT_FOUND_EXIT_CODES,
    candidates,
    exited,
    no_python,
    stopped,
)

if TYPE_CHECKING:
    from lockd.model.manifest import Observation

__all__ = ["THROWAWAY_LABEL", "ImageTarget", "find_image"]

THROWAWAY_LABEL = "lockd.throwaway"
"""Label on the containers ImageTarget starts (and always removes): find leftovers with it."""


def find_image(docker: Docker, ref: str) -> dict[str, Any] | None:
    """The daemon's inspect answer for the image ``ref``, None when there is none."""
    with failing(f"cannot look up image {ref}"):
        try:
            return docker.inspect_image(ref)
        except NotFoundError:
            return None
        except DaemonError as e:
            if e.status == 400:  # not a valid reference: nothing can have that name
                return None
            raise


@dataclass(frozen=True)
class _Bounds:
    """What runs in a throw-away container (named in errors), the ``source`` that starts each
    message, its time and output limits, and the monotonic deadline."""

    purpose: str
    source: str
    timeout: float
    max_output: int
    deadline: float


class ImageTarget:
    """An image: host evidence from the daemon, the probe as the only process of a throw-away
    container (no network, removed in every case)."""

    def __init__(
        self,
        docker: Docker,
        image_ref: str,
        python: str | None = None,
        timeout: float = PROBE_TIMEOUT,
        max_output: int = MAX_PROBE_OUTPUT,
    ) -> None:
        """Raises TargetError when there is no such image (exit 3)."""
        from lockd.model.host import TargetInfo

        self._docker = docker
        self.image_ref = image_ref
        self.python = python
        self.timeout = timeout
        self.max_output = max_output
        self.info = TargetInfo(kind="image", ref=image_ref)
        self._source = f"image {image_ref}"
        attrs = find_image(docker, image_ref)
        if attrs is None:
            raise TargetError(
                f"no image named {image_ref!r}; list images with `docker images`, or pull or "
                "build it first"
            )
        self.attrs = attrs
        """The daemon's inspect answer for the image."""
        self.image_id = str(attrs["Id"])

    def observe(self, options: ProbeOptions = PLAIN) -> Observation:
        """Host evidence from the image, then the probe's report (or why there is none).

        Raises:
            TargetError: the daemon failed, or the throw-away container could not be removed.
            ProbeError: the probe failed, hung, flooded its output or printed garbage.
        """
        from lockd.model.host import HostEvidence
        from lockd.model.manifest import Observation

        attrs = self.attrs
        host = HostEvidence(
            image_id=self.image_id,
            repo_digests=sorted(attrs.get("RepoDigests") or []),
            repo_tags=sorted(attrs.get("RepoTags") or []),
            changes=[],
            changes_source="none",
            mounts=[],
            config_env=parse_env((attrs.get("Config") or {}).get("Env")),
        )
        timeout = self.timeout + options.extra_time
        deadline = time.monotonic() + timeout
        bounds = _Bounds("the probe", self._source, timeout, self.max_output, deadline)
        for python in candidates(self.python):
            stdout = self._run_throwaway(python, probe_arguments(options), bounds, gpus=False)
            if stdout is not None:
                probe, imports = parse_probe_document(
                    stdout, self._source, family_imports=options.family_imports
                )
                return Observation(target=self.info, host=host, probe=probe, family_imports=imports)
        return Observation(
            target=self.info, host=host, probe_error=no_python("image", self._source, self.python)
        )

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
        """Run ``argv`` (``[python, ...]``) as the only process of a throw-away container of
        the image (no network; ``gpus`` as lockd.evidence.targets.base.Gpus says) to completion,
        bounded like the probe, and return its stdout; the container is removed in every case.

        Raises:
            TargetError: the daemon failed, or the container could not be removed.
            ProbeError: there is no such interpreter, or the script exits non-zero, outlives
                ``timeout`` seconds or prints more than ``max_output`` bytes.
        """
        wanted = self._wants_gpus(gpus, source)
        python = argv[0]
        bounds = _Bounds(what, source, timeout, max_output, time.monotonic() + timeout)
        stdout = self._run_throwaway(python, list(argv[1:]), bounds, gpus=wanted)
        if stdout is None:
            raise ProbeError(f"{source}: there is no interpreter {python} in the image")
        return stdout

    def _wants_gpus(self, gpus: Gpus, source: str) -> bool:
        if gpus != "auto":
            return gpus == "all"
        with failing(f"{source}: cannot ask the daemon for its runtimes"):
            runtimes = self._docker.info().get("Runtimes") or {}
        return "nvidia" in runtimes

    def _run_throwaway(
        self, python: str, arguments: list[str], bounds: _Bounds, *, gpus: bool
    ) -> bytes | None:
        """Run ``python arguments`` in a throw-away container, removed in every case; its
        stdout, or None when the image has no ``python``."""
        container_id = self._create_throwaway(
            f"to run {bounds.purpose}",
            entrypoint=[python],
            command=arguments,
            runs=True,
            gpus=gpus,
        )
        try:
            result = self._run_in(container_id, python, bounds)
        except BaseException:
            self._remove(container_id, quiet=True)
            raise
        self._remove(container_id, quiet=False)
        return result

    def _run_in(self, container_id: str, python: str, bounds: _Bounds) -> bytes | None:
        docker = self._docker
        purpose, source, deadline = bounds.purpose, bounds.source, bounds.deadline
        what = f"{source}: cannot run {purpose}"
        with failing(what):
            stream = docker.attach(container_id)
        try:
            with failing(what):
                try:
                    docker.start(container_id)
                except DaemonError as e:
                    if e.status is None:  # no answer from the daemon: nothing to ask it
                        raise
                    state = docker.inspect_container(container_id).get("State") or {}
                    if state.get("ExitCode") in NOT_FOUND_EXIT_CODES:
                        return None
                    raise TargetError(f"{what}: {cause(e)}") from e
            with failing(f"{source}: lost the output of {purpose}"):
                stdout, stderr, end = read_frames(stream, deadline, bounds.max_output)
        finally:
            stream.close()
        if end != "eof":
            raise stopped(source, end, bounds.timeout, bounds.max_output)
        with failing(f"{source}: {purpose} did not exit"):
            code = docker.wait(container_id, timeout=max(deadline - time.monotonic(), 1.0))
        if code in NOT_FOUND_EXIT_CODES:
            return None
        if code != 0:
            raise exited(source, python, code, stderr)
        return stdout

    def files(self) -> Files:
        """The image's layer directories on this host when lockd can read them there, else
        the daemon's archive API through a throw-away container (Target.files)."""
        layers = self.layer_dirs()
        host = None
        if layers:
            host = HostFiles(
                kind="layers",
                roots=tuple(layers),
                description=f"the layers of image {self.image_ref}",
                image=lambda: self.attrs,
            )
        return Files(
            host=host,
            archive=self.archive_container,
            archive_description=f"image {self.image_ref} (Docker API)",
        )

    def running(self) -> None:
        """An image is no running container: nothing is kept for it."""

    def layer_dirs(self) -> list[str] | None:
        """The image's overlay2 layer directories, top first, when this host can read them
        (lockd runs beside the daemon, as root); else None."""
        _, layers = overlay_dirs(self.attrs)
        if not layers or not all(readable_dir(layer) for layer in layers):
            return None
        return layers

    @contextmanager
    def archive_container(self) -> Iterator[Fetch]:
        """A throw-away container of the image, created and never started, to read files
        from through the daemon's archive API: yields ``fetch(path)``; always removed.

        Raises:
            TargetError: the daemon failed.
        """
        container_id = self._create_throwaway(
            "to read its files", entrypoint=["/lockd-reads-files-never-runs"]
        )

        def fetch(path: str) -> Archive | None:
            what = f"{self._source}: cannot read {path} through the Docker API"
            return fetch_archive(self._docker, container_id, path, what)

        try:
            yield fetch
        except BaseException:
            self._remove(container_id, quiet=True)
            raise
        self._remove(container_id, quiet=False)

    def _create_throwaway(
        self,
        purpose: str,
        *,
        entrypoint: list[str],
        command: list[str] | None = None,
        runs: bool = False,
        gpus: bool = False,
    ) -> str:
        """Create (not start) a throw-away container of the image, without a network; its ID.

        It is named before it exists: an interrupt while the daemon answers (the container made,
        its ID not yet known here) still removes it by that name."""
        name = f"lockd-throwaway-{os.urandom(8).hex()}"
        with failing(f"{self._source}: cannot create a container {purpose}"):
            try:
                return self._docker.create_container(
                    self.image_id,
                    name=name,
                    labels={THROWAWAY_LABEL: "1"},
                    entrypoint=entrypoint,
                    command=command,
                    runs=runs,
                    gpus=gpus,
                )
            except BaseException:
                self._remove(name, quiet=True)
                raise

    def _remove(self, container_id: str, *, quiet: bool) -> None:
        try:
            self._docker.remove_container(container_id)
        except NotFoundError:
            pass
        except (DaemonError, OSError) as e:
            if not quiet:
                raise TargetError(
                    f"{self._source}: cannot remove the throw-away container "
                    f"{container_id[:12]}: {cause(e)}; remove it with "
                    f"`docker rm -f {container_id[:12]}`"
                ) from e
