"""Builders of Observations and Manifests for the pure-core tests (no Docker, no probe)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lockd.model.environment import Distribution, OsInfo, ProbeReport, PythonInfo
from lockd.model.host import FileChange, HostEvidence, KernelView, Mount, TargetInfo
from lockd.model.manifest import Manifest, Observation

if TYPE_CHECKING:
    from lockd.trust.dsse import Envelope
    from lockd.trust.keys import PrivateKey

IMAGE = "sha256:" + "a" * 64
OTHER_IMAGE = "sha256:" + "b" * 64
SITE = "/opt/venv/lib/python3.11/site-packages"


def dist(name: str, version: str, record: str = "1" * 64, files: int = 10) -> Distribution:
    return Distribution(
        name=name,
        version=version,
        installer="pip",
        location=SITE,
        record_sha256=record,
        files=files,
    )


def probe(**changes: Any) -> ProbeReport:
    base: dict[str, Any] = {
        "probe_version": 1,
        "python": PythonInfo(
            version="3.11.2",
            implementation="cpython",
            executable="/opt/venv/bin/python3",
            prefix="/opt/venv",
            base_prefix="/usr",
            path=["/usr/lib/python311.zip", "/usr/lib/python3.11", SITE],
            platform="linux",
        ),
        "distributions": [dist("idna", "3.7"), dist("six", "1.16.0")],
        "os": OsInfo(
            id="debian", version_id="12", pretty_name="Debian 12", glibc="2.36", machine="x86_64"
        ),
        "env": {"CUDA_HOME": "/usr/local/cuda"},
    }
    base.update(changes)
    return ProbeReport(**base)


def host(**changes: Any) -> HostEvidence:
    base: dict[str, Any] = {
        "image_id": IMAGE,
        "repo_tags": ["app:1"],
        "container_id": "c" * 64,
        "changes_source": "overlay",
        "config_env": {"PATH": "/usr/bin", "CUDA_HOME": "/usr/local/cuda"},
        # the kernel's view of a plain container's one process (lockd.evidence.kernel)
        "kernel": KernelView(processes=1, namespaces=1),
    }
    base.update(changes)
    return HostEvidence(**base)


def observation(
    *, host_evidence: HostEvidence | None = None, report: ProbeReport | None = None, **kw: Any
) -> Observation:
    return Observation(
        target=TargetInfo(kind="container", ref="app-1"),
        host=host_evidence if host_evidence is not None else host(),
        probe=report if report is not None else probe(),
        **kw,
    )


def manifest(obs: Observation | None = None) -> Manifest:
    return Manifest(
        lockd_version="0.1.0",
        recorded_at="2026-11-28T07:00:00+00:00",
        observation=obs or observation(),
    )


def signed(key: PrivateKey, recorded: Manifest | None = None) -> Envelope:
    """``recorded`` (default: :func:`manifest`) as lockd record signs it."""
    from lockd.trust.dsse import sign
    from lockd.trust.statement import PAYLOAD_TYPE, make_statement

    return sign(make_statement(recorded or manifest()), PAYLOAD_TYPE, key)


__all__ = ["FileChange", "Mount"]
