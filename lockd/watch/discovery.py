"""Containers as the daemon lists and inspects them, reduced to what the agent tracks. Pure:
the daemon's JSON in, frozen values out (``lockd.evidence.docker`` does the asking)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lockd.evidence.hashing import json_sha256
from lockd.evidence.targets.image import THROWAWAY_LABEL
from lockd.model.fleet import MAX_LABELS, FleetContainer
from lockd.watch.options import Selector

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

__all__ = ["Inspected", "Seen", "docker_filters", "from_inspect", "from_list", "selected"]


@dataclass(frozen=True)
class Seen:
    """A running container: who it is and the parts of its configuration the list shows."""

    id: str
    name: str
    image: str
    image_id: str
    labels: tuple[tuple[str, str], ...]
    mounts: tuple[tuple[str, str, str, bool], ...]  # (destination, source, type, rw), sorted

    def fleet(self) -> FleetContainer:
        """The container as a batch names it (cut to the contract's limits)."""
        labels = [(k, v[:4096]) for k, v in self.labels if 0 < len(k) <= 256][:MAX_LABELS]
        return FleetContainer(
            id=self.id,
            name=_line(self.name, 256) or self.id[:12],
            image=_line(self.image, 1024) or self.image_id,
            image_id=self.image_id,
            labels=dict(labels),
        )


@dataclass(frozen=True)
class Inspected:
    """A container as ``inspect`` shows it: what it is, its overlay upper directory, and a
    digest of the configuration a probe depends on (a restart changes it too; a rename not)."""

    seen: Seen
    config_key: str
    upper_dir: str | None
    started_at: str
    attrs: Mapping[str, Any]


def docker_filters(selectors: Sequence[Selector]) -> dict[str, list[str]]:
    """The daemon-side filter for running containers that carry every selected label."""
    filters: dict[str, list[str]] = {"status": ["running"]}
    if selectors:
        filters["label"] = [s.docker_filter() for s in selectors]
    return filters


def selected(seen: Seen, selectors: Sequence[Selector]) -> bool:
    """Whether the agent watches ``seen``: every selector matches, and it is not lockd's own."""
    labels = dict(seen.labels)
    # lockd's own throw-away probe containers (ImageTarget labels them) are never watched
    return THROWAWAY_LABEL not in labels and all(s.matches(labels) for s in selectors)


def _line(text: str, limit: int) -> str:
    return _CONTROL.sub("?", text)[:limit]


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _labels(raw: object) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict):
        return ()
    return tuple(sorted((str(k), str(v)) for k, v in raw.items()))


def _mounts(raw: object) -> tuple[tuple[str, str, str, bool], ...]:
    if not isinstance(raw, list):
        return ()
    found = {
        (
            str(m.get("Destination", "")),
            str(m.get("Source", "")),
            str(m.get("Type", "")),
            bool(m.get("RW", False)),
        )
        for m in raw
        if isinstance(m, dict)
    }
    return tuple(sorted(found))


def from_list(entry: Mapping[str, Any]) -> Seen | None:
    """One entry of ``GET /containers/json``; None when it is not a usable container (no id,
    an image id that is not ``sha256:<hex>``)."""
    container_id = str(entry.get("Id", ""))
    image_id = str(entry.get("ImageID", ""))
    if not _HEX64.match(container_id) or not _DIGEST.match(image_id):
        return None
    names = entry.get("Names") or []
    name = str(names[0]).lstrip("/") if isinstance(names, list) and names else container_id[:12]
    return Seen(
        id=container_id,
        name=name,
        image=str(entry.get("Image") or image_id),
        image_id=image_id,
        labels=_labels(entry.get("Labels")),
        mounts=_mounts(entry.get("Mounts")),
    )


def from_inspect(attrs: Mapping[str, Any]) -> Inspected | None:
    """``GET /containers/{id}/json``; None when it is not usable or not running."""
    container_id = str(attrs.get("Id", ""))
    image_id = str(attrs.get("Image", ""))
    state = _dict(attrs.get("State"))
    if not _HEX64.match(container_id) or not _DIGEST.match(image_id):
        return None
    if state.get("Status") != "running":
        return None
    config = _dict(attrs.get("Config"))
    seen = Seen(
        id=container_id,
        name=str(attrs.get("Name") or container_id[:12]).lstrip("/"),
        image=str(config.get("Image") or image_id),
        image_id=image_id,
        labels=_labels(config.get("Labels")),
        mounts=_mounts(attrs.get("Mounts")),
    )
    driver = _dict(attrs.get("GraphDriver"))
    data = _dict(driver.get("Data"))
    upper = data.get("UpperDir") if driver.get("Name") == "overlay2" else None
    started_at = str(state.get("StartedAt", ""))
    relevant = {
        "env": config.get("Env"),
        "cmd": config.get("Cmd"),
        "entrypoint": config.get("Entrypoint"),
        "user": config.get("User"),
        "workdir": config.get("WorkingDir"),
        "image": image_id,
        "mounts": seen.mounts,
        "upper": upper,
        "started_at": started_at,
    }
    return Inspected(
        seen=seen,
        config_key=json_sha256(relevant),
        upper_dir=str(upper) if upper else None,
        started_at=started_at,
        attrs=attrs,
    )
