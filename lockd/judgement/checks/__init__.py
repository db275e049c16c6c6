"""Every check a verification reports, in the order a report lists them: one registry keyed by
check id. compare() runs the checks in this order, the policy's `checks` section has a level for
each (defaulting to the registry's), an untrusted manifest's report skips every one after
`signature`, and every Report builder (lockd.judgement.reporting) takes its ids from here.

The checks themselves live beside this registry, one module per family (image, packages,
filesystem, isolation, environment: python/env/system, lock, gpu: cuda/driver/gpu, integrity,
coherence, libraries, workload) over what they share (interface); lockd.judgement.compare maps
each id to its family's function (RUNNERS).

Pure data: this module imports nothing of lockd's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Level = Literal["required", "warn", "ignore"]
"""How a policy treats a check: a failure fails verification, only warns, or is not looked at."""


@dataclass(frozen=True)
class CheckKind:
    id: str
    evidence: str  # what it rests on, as reports say: host, inside, host+inside, signature
    fails_when: str  # one line, for people
    default: Level = "required"  # its level in the strict default policy


SIGNATURE = "signature"

REGISTRY: Mapping[str, CheckKind] = {
    kind.id: kind
    for kind in (
        CheckKind(
            SIGNATURE,
            "signature",
            "the envelope's signature does not verify against a trusted key (then nothing else "
            "is compared)",
        ),
        CheckKind("image", "host", "the target's image is not a subject of the manifest"),
        CheckKind("packages", "inside", "a distribution was added, removed, changed or modified"),
        CheckKind(
            "filesystem",
            "host",
            "a file changed since the image differs from the record, or a mount shadows one",
        ),
        CheckKind("python", "inside", "the interpreter or its sys.path differ"),
        CheckKind("env", "host+inside", "a variable that shapes a CUDA process differs"),
        CheckKind("system", "inside", "the OS, glibc or machine differ"),
        CheckKind("lock", "inside", "the installed distributions break the recorded lock"),
        CheckKind("cuda", "inside", "torch's CUDA, cuDNN or NCCL differ"),
        CheckKind("driver", "inside", "the NVIDIA driver is too old for the CUDA runtime"),
        CheckKind("gpu", "inside", "the GPU validation suite's results moved"),
        CheckKind("integrity", "host", "an installed file differs from its RECORD (--deep)"),
        CheckKind("coherence", "inside", "the PyTorch family does not work together"),
        CheckKind("libraries", "inside", "the process loaded other libraries than recorded"),
        CheckKind(
            "workload",
            "host",
            "a running process maps code that is not the image's or the recorded, or runs with "
            "a variable the manifest does not have (#17)",
        ),
        CheckKind(
            "isolation",
            "host",
            "a process runs under another root (chroot, pivot_root), or the container is "
            "privileged or has CAP_SYS_ADMIN",
            default="warn",
        ),
    )
}
"""Every check, in report order; ``signature`` first."""

CHECK_IDS: tuple[str, ...] = tuple(REGISTRY)
COMPARED: tuple[str, ...] = tuple(c for c in CHECK_IDS if c != SIGNATURE)
"""The checks compare() runs: all but ``signature``, which is checked on the envelope first."""
