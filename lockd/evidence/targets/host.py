"""Host evidence from the daemon's inspect answers (trusted, but only as complete as the
daemon's records): an image's names, a container's configured mounts and environment, whether
it asked for GPUs. Every text is fitted to the models' limits (``fit``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lockd.evidence.docker import Docker, NotFoundError, failing

if TYPE_CHECKING:
    from lockd.model.host import Mount

__all__ = ["configured_mounts", "fit", "gpus_requested", "image_names", "parse_env"]

_TEXT_LIMIT = 4096  # the model's longest string


def fit(text: str) -> str:
    """``text`` within the model's string limit; an over-long value keeps a digest of itself
    so that a change in it still shows."""
    if len(text) <= _TEXT_LIMIT:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{text[: _TEXT_LIMIT - 90]}...(sha256:{digest})"


def parse_env(env: Sequence[str] | None) -> dict[str, str]:
    """``["K=V", ...]`` as a dict; an entry without ``=`` maps to the empty string."""
    result: dict[str, str] = {}
    for entry in env or ():
        key, _, value = entry.partition("=")
        result[fit(key)] = fit(value)
    return result


def image_names(docker: Docker, image_id: str) -> tuple[list[str], list[str]]:
    """(repo digests, repo tags) of an image; none when the image has gone (untagged and
    removed while a container still uses it)."""
    with failing(f"cannot look up image {image_id}"):
        try:
            attrs = docker.inspect_image(image_id)
        except NotFoundError:
            return [], []
    return sorted(attrs.get("RepoDigests") or []), sorted(attrs.get("RepoTags") or [])


def configured_mounts(attrs: dict[str, Any]) -> list[Mount]:
    from lockd.model.host import Mount

    mounts = [
        Mount(
            destination=fit(str(m.get("Destination", ""))),
            source=fit(str(m.get("Source", ""))),
            type=str(m.get("Type", "")),
            rw=bool(m.get("RW", False)),
        )
        for m in attrs.get("Mounts") or []
    ]
    return sorted(mounts, key=lambda m: m.destination)


def gpus_requested(attrs: dict[str, Any]) -> bool:
    """Whether the container asked for GPUs: ``--gpus`` or a CDI device (DeviceRequests), the
    nvidia runtime."""
    host_config = attrs.get("HostConfig") or {}
    runtime = str(host_config.get("Runtime") or "")
    return bool(host_config.get("DeviceRequests")) or "nvidia" in runtime
