"""The inside probe, run the way ``lockd verify`` runs it
(lockd.evidence.targets.container.ContainerTarget):
the running workload read on the host, host evidence from the daemon and the overlay
directories, the probe through ``docker exec`` with a deadline, over the agent's Docker
interface (one connection per call, so the agent's worker threads share it). The digests of
the workloads' files are kept in memory for as long as the agent runs (one ``HashCache`` per
host).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lockd.evidence.docker import Docker
    from lockd.model.manifest import Observation

__all__ = ["Prober"]


class Prober:
    def __init__(self, docker: Docker, *, timeout: float, python: str | None = None) -> None:
        from lockd.evidence.cache.hashes import HashCache

        self.docker = docker
        self.timeout = timeout
        self.python = python
        # the digests of the files this host's workloads map, kept while the agent runs and
        # reused while each file's guard holds (lockd.evidence.cache.hashes)
        self.hashes = HashCache()

    def observe(self, attrs: Mapping[str, Any]) -> Observation:
        """Observe the container ``attrs`` (its inspection) describes.

        Raises:
            TargetError: the container is gone or stopped, or the daemon failed.
            ProbeError: the probe failed, hung past the timeout, or printed garbage.
        """
        from lockd.evidence.targets.base import ProbeOptions
        from lockd.evidence.targets.container import ContainerTarget

        target = ContainerTarget(self.docker, dict(attrs), python=self.python, timeout=self.timeout)
        return target.observe(ProbeOptions(hashes=self.hashes))
