"""Docker targets: what a reference names on the daemon, a running container
(lockd.evidence.targets.container) or an image (lockd.evidence.targets.image).

Two kinds of evidence, as the architecture describes:

* from the host (trusted even if the container is not): the image identity the daemon
  reports, the mounts, the configured environment, and the container's filesystem changes
  read from the overlay2 upper directory on this host (or the daemon's changes API);
* from inside: the probe, run by the target's own Python through ``docker exec`` (for a
  container) or as the only process of a throw-away container (for an image). Its output
  is untrusted: read with a deadline and a size cap, then validated by ``parse_probe_document``.

The daemon is asked through lockd's Docker interface (lockd.evidence.docker), which alone knows
how a call travels. Every failure becomes a ``TargetError`` (exit 3) naming the target.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from lockd.errors import InputError, TargetError
from lockd.evidence.docker import Docker, NotFoundError, connect, failing
from lockd.evidence.targets.base import MAX_PROBE_OUTPUT, PROBE_TIMEOUT
from lockd.evidence.targets.container import ContainerTarget
from lockd.evidence.targets.image import ImageTarget, find_image

if TYPE_CHECKING:
    from lockd.evidence.targets.base import Target

__all__ = ["open_docker_target", "resolve"]

_CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


def open_docker_target(
    ref: str,
    *,
    python: str | None = None,
    timeout: float = PROBE_TIMEOUT,
    max_output: int = MAX_PROBE_OUTPUT,
) -> Target:
    """What ``ref`` names on the daemon at DOCKER_HOST, as ``resolve`` finds it.

    Raises:
        InputError: the reference is empty after its prefix (exit 2).
        TargetError: no daemon answers, nothing has that name, or the daemon failed (exit 3).
    """
    return resolve(ref, connect(), python=python, timeout=timeout, max_output=max_output)


def resolve(
    ref: str,
    docker: Docker,
    *,
    python: str | None = None,
    timeout: float = PROBE_TIMEOUT,
    max_output: int = MAX_PROBE_OUTPUT,
) -> Target:
    """The target ``ref`` names on ``docker``: ``container:X``, ``image:X``, or a bare X (a
    container of that name or ID if one exists, else an image).

    Raises:
        InputError: the reference is empty after its prefix (exit 2).
        TargetError: no daemon answers, nothing has that name, or the daemon failed (exit 3).
    """
    kind, name = _split_ref(ref)
    options: dict[str, Any] = {"python": python, "timeout": timeout, "max_output": max_output}
    if kind == "container" and not _CONTAINER_NAME.match(name.removeprefix("/")):
        raise _no_container(name)  # no container can have that name (or ID)
    if _may_be_container(kind, name):
        with failing(f"cannot look up container {name}"):
            try:
                return ContainerTarget(docker, docker.inspect_container(name), **options)
            except NotFoundError:
                pass
    return _image_target(docker, kind, name, options)


def _may_be_container(kind: str, name: str) -> bool:
    return kind == "container" or (not kind and _CONTAINER_NAME.match(name) is not None)


def _no_container(name: str) -> TargetError:
    return TargetError(
        f"no container named {name!r}; list the running ones with `docker ps`, "
        f"or verify an image with image:{name}"
    )


def _image_target(docker: Docker, kind: str, name: str, options: dict[str, Any]) -> ImageTarget:
    """The image ``name``, once no container has that name (``kind``: the ref's prefix)."""
    if kind == "container":
        raise _no_container(name)
    if not kind and find_image(docker, name) is None:
        raise TargetError(
            f"no container or image named {name!r}; list them with `docker ps -a` and "
            "`docker images`, or pull or build the image first"
        )
    return ImageTarget(docker, name, **options)


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
