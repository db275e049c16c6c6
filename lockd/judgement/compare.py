"""compare(manifest, observation, policy): the heart of lockd. Pure: no I/O.

Runs every check of the registry (lockd.judgement.checks) but ``signature`` in the registry's
order, each by its family's module under lockd.judgement.checks. Each check says which evidence it
rests on: `host` (the Docker daemon and the host's view of the container's filesystem,
trustworthy even if the container is compromised) or `inside` (what the probe running in the
target says about itself).
"""

from __future__ import annotations

from collections.abc import Iterable

from lockd.judgement.checks import COMPARED
from lockd.judgement.checks.coherence import check_coherence
from lockd.judgement.checks.environment import check_env, check_python, check_system
from lockd.judgement.checks.filesystem import check_filesystem
from lockd.judgement.checks.gpu import check_cuda, check_driver, check_gpu
from lockd.judgement.checks.image import check_image
from lockd.judgement.checks.integrity import check_integrity
from lockd.judgement.checks.interface import Runner, inside_check, on_probes
from lockd.judgement.checks.isolation import check_isolation
from lockd.judgement.checks.libraries import check_libraries
from lockd.judgement.checks.lock import check_lock
from lockd.judgement.checks.packages import check_packages
from lockd.judgement.checks.workload import check_workload
from lockd.judgement.policy import Policy
from lockd.model.manifest import Manifest, Observation
from lockd.model.report import Check

RUNNERS: dict[str, Runner] = {
    "image": lambda m, o, p: check_image(m.observation.host, o.host, p),
    "packages": on_probes("packages", check_packages),
    "filesystem": lambda m, o, p: check_filesystem(m, o.host, p),
    "python": on_probes("python", check_python),
    "env": check_env,
    "system": on_probes("system", check_system),
    "lock": check_lock,
    "cuda": on_probes("cuda", check_cuda),
    "driver": lambda m, o, p: inside_check(
        "driver", m.observation.probe, o, lambda _want, _have: check_driver(m, o, p)
    ),
    "gpu": check_gpu,
    "integrity": lambda _m, o, p: check_integrity(o, p),
    "coherence": lambda _m, o, p: check_coherence(o, p),
    "libraries": check_libraries,
    "workload": check_workload,
    "isolation": lambda _m, o, p: check_isolation(o, p),
}
"""How compare() runs each check of the registry (lockd.judgement.checks), by id."""


def compare(manifest: Manifest, observation: Observation, policy: Policy) -> list[Check]:
    """Every check except `signature` (the caller verified the envelope before trusting it), in
    the registry's order."""
    return [RUNNERS[check_id](manifest, observation, policy) for check_id in COMPARED]


def verified(checks: Iterable[Check]) -> bool:
    return all(c.status != "fail" for c in checks)
