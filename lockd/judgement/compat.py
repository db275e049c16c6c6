"""lockd compat: which GPUs and drivers a torch/CUDA build runs on.

A build is the CUDA version and the compiled architectures of a torch, read from a manifest
(what torch reported inside the target) or from a requirements.txt lock (the torch pin, looked
up in lockd's table of torch wheels, and the `nvidia-*` pins). The rules, from the CUDA C
Programming Guide ("Binary Compatibility", "PTX Compatibility") and the CUDA Compatibility
guide ("Minor Version Compatibility"):

- a cubin for `sm_XY` runs on devices of the same major version with minor >= Y;
- PTX for `compute_XY` is JIT-compiled by the driver for any device of capability >= X.Y;
- arch-specific targets (`sm_90a`, `compute_100a`) run on exactly that capability, and
  family-specific ones (`sm_100f`, `compute_100f`) on the same major with minor >= Y;
- with neither, CUDA fails with "no kernel image is available for execution on the device";
- a driver at or above the toolkit's floor runs it; one at or above the minor-version
  compatibility floor runs it too, but cannot JIT PTX produced by a newer toolkit
  (cudaErrorUnsupportedPtxVersion); below that it does not run.

Everything here is pure except load_build(), which reads the one input file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict

from lockd.errors import InputError, ManifestError
from lockd.judgement.compat_data import (
    CUDA_DRIVERS,
    GPUS,
    MINOR_COMPAT_FLOOR,
    TORCH_WHEELS,
    TorchWheel,
)

if TYPE_CHECKING:
    from lockd.model.manifest import Manifest

MAX_SOURCE_BYTES = 64 * 1024 * 1024
"""The largest manifest or lock the compat command reads (the caller reads it: this module
only parses bytes)."""
Capability = tuple[int, int]

# --- compilation targets ----------------------------------------------------------------------


@dataclass(frozen=True)
class ArchTarget:
    """One entry of a build's arch list: a cubin (`sm_XY`) or PTX (`compute_XY`)."""

    kind: Literal["sm", "compute"]
    major: int
    minor: int
    suffix: Literal["", "a", "f"] = ""

    def __str__(self) -> str:
        return f"{self.kind}_{self.major}{self.minor}{self.suffix}"

    @property
    def ptx(self) -> bool:
        return self.kind == "compute"

    def runs_on(self, cc: Capability) -> bool:
        """Whether a device of compute capability `cc` can load code for this target."""
        own = (self.major, self.minor)
        if self.suffix == "a":
            return cc == own
        if self.kind == "sm" or self.suffix == "f":
            return cc[0] == self.major and cc[1] >= self.minor
        return cc >= own


_TARGET = re.compile(r"^(sm|compute)_([1-9]\d?)(\d)([af]?)$")
_ARCH_LIST_ENTRY = re.compile(r"^([1-9]\d?)\.(\d)([af]?)(\+ptx)?$", re.IGNORECASE)
_SEPARATORS = re.compile(r"[\s,;\[\]'\"]+")


def parse_arch_flags(flags: str | Sequence[str], source: str) -> tuple[ArchTarget, ...]:
    """Targets from torch._C._cuda_getArchFlags() output ("sm_50 sm_60 ... compute_90"), a
    list of such entries, or TORCH_CUDA_ARCH_LIST entries ("8.6", "9.0+PTX", "9.0a").

    Sorted and without duplicates. Raises InputError naming `source` and the bad entry.
    """
    text = flags if isinstance(flags, str) else " ".join(flags)
    found: set[ArchTarget] = set()
    for token in _SEPARATORS.split(text):
        if not token:
            continue
        found.update(_parse_target(token, source))
    if not found:
        raise InputError(f"{source}: the arch list is empty: no compiled GPU architecture")
    return tuple(sorted(found, key=_target_order))


def _parse_target(token: str, source: str) -> list[ArchTarget]:
    match = _TARGET.match(token)
    if match:
        kind, major, minor, suffix = match.groups()
        return [ArchTarget(kind, int(major), int(minor), suffix)]  # type: ignore[arg-type]
    match = _ARCH_LIST_ENTRY.match(token)
    if match:
        major, minor, suffix, ptx = match.groups()
        targets = [ArchTarget("sm", int(major), int(minor), suffix)]  # type: ignore[arg-type]
        if ptx:
            targets.append(ArchTarget("compute", int(major), int(minor), suffix))  # type: ignore[arg-type]
        return targets
    raise InputError(
        f"{source}: {token!r} is not a GPU architecture (expected sm_XY, compute_XY, "
        "sm_90a or a TORCH_CUDA_ARCH_LIST entry like 8.6 or 9.0+PTX)"
    )


def _target_order(t: ArchTarget) -> tuple[int, int, str, bool]:
    return (t.major, t.minor, t.suffix, t.ptx)


def kernel_for(targets: Sequence[ArchTarget], cc: Capability) -> ArchTarget | None:
    """The code a device of capability `cc` would run: the closest cubin, else PTX, else None."""
    cubins = [t for t in targets if not t.ptx and t.runs_on(cc)]
    if cubins:
        return max(cubins, key=lambda t: (t.minor, t.suffix != ""))
    ptx = [t for t in targets if t.ptx and t.runs_on(cc)]
    if ptx:
        return max(ptx, key=lambda t: (t.major, t.minor, t.suffix != ""))
    return None


def sm_name(cc: Capability) -> str:
    return f"sm_{cc[0]}{cc[1]}"


def via(kernel: ArchTarget | None, cc: Capability) -> str:
    if kernel is None:
        return f"no kernel image for {sm_name(cc)}"
    if kernel.ptx:
        return f"PTX {kernel} JIT"
    return f"{kernel} cubin"


# --- GPUs and drivers ------------------------------------------------------------------------

_GPU_TARGET = re.compile(r"^sm_([1-9]\d?)(\d)$", re.IGNORECASE)
_GPU_CAPABILITY = re.compile(r"^([1-9]\d?)\.(\d)$")
_NAME_NOISE = {"nvidia", "geforce", "tesla", "quadro"}


@dataclass(frozen=True)
class Gpu:
    name: str  # a known model ("RTX 4090") or the spec itself ("sm_90")
    cc: Capability


def known_gpus() -> list[Gpu]:
    return [Gpu(name, cc) for name, cc in GPUS]


def _name_tokens(name: str) -> list[str]:
    words = re.split(r"[^a-z0-9]+", name.lower())
    return [w for w in words if w and w not in _NAME_NOISE]


def resolve_gpu(spec: str) -> Gpu:
    """A GPU from `sm_XY`, `X.Y` or a model name ("H100", "NVIDIA GeForce RTX 4090",
    "NVIDIA H100 80GB HBM3" as torch reports it). Raises InputError for anything else."""
    text = spec.strip()
    match = _GPU_TARGET.match(text) or _GPU_CAPABILITY.match(text)
    if match:
        cc = (int(match.group(1)), int(match.group(2)))
        return Gpu(sm_name(cc), cc)
    target = _TARGET.match(text)
    if target:
        kind, major, minor, _ = target.groups()
        what = "a PTX target" if kind == "compute" else "an arch- or family-specific target"
        raise InputError(
            f"--gpu {spec!r}: {what}, not a GPU; name a GPU by its model or its compute "
            f"capability (a {major}.{minor} device: --gpu sm_{major}{minor})"
        )
    tokens = _name_tokens(text)
    spans = {
        "".join(tokens[i:j]) for i in range(len(tokens)) for j in range(i + 1, len(tokens) + 1)
    }
    matches = [g for g in known_gpus() if "".join(_name_tokens(g.name)) in spans]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(g.name for g in known_gpus())
    if matches:
        names = ", ".join(g.name for g in matches)
        raise InputError(f"--gpu {spec!r}: names several GPUs ({names}); pass one of them")
    raise InputError(
        f"--gpu {spec!r}: not a known GPU and not sm_XY; known: {known}; "
        "for another GPU pass its compute capability, e.g. --gpu sm_86"
    )


_DRIVER = re.compile(r"^\d+(\.\d+){0,2}$")


def parse_driver(text: str) -> tuple[int, ...]:
    """`535.104.05` -> (535, 104, 5). Raises InputError for anything but a driver release."""
    value = text.strip()
    if not _DRIVER.match(value):
        raise InputError(
            f"--driver {text!r}: not an NVIDIA driver version (expected e.g. 535.104.05, "
            "as nvidia-smi prints it)"
        )
    parts = tuple(int(p) for p in value.split("."))
    if parts[0] < 100:
        raise InputError(
            f"--driver {text!r}: looks like a CUDA version, not a driver release "
            "(driver releases look like 535.104.05)"
        )
    return parts + (0,) * (3 - len(parts))


def _at_least(driver: str, floor: str) -> bool:
    return parse_driver(driver) >= parse_driver(floor)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DriverFloors(Frozen):
    toolkit_min: str | None  # None: this CUDA minor release is not in lockd's table
    minor_compat_min: str | None  # None: this CUDA major release is not in lockd's table


def cuda_minor(version: str, source: str) -> str:
    """`12.4.127` or `12.4` -> `12.4`. Raises InputError naming `source`."""
    match = re.match(r"^(\d+)\.(\d+)(\.\d+)*$", version.strip())
    if not match:
        raise InputError(f"{source}: {version!r} is not a CUDA version like 12.4")
    return f"{int(match.group(1))}.{int(match.group(2))}"


def driver_floors(cuda: str) -> tuple[DriverFloors, list[str]]:
    """The floors for CUDA `cuda` (major.minor) and notes on what lockd does not know."""
    known = CUDA_DRIVERS.get(cuda)
    if known is not None:
        return DriverFloors(toolkit_min=known.toolkit, minor_compat_min=known.minor_compat), []
    major = int(cuda.split(".", maxsplit=1)[0])
    minor_floor = MINOR_COMPAT_FLOOR.get(major)
    notes = [f"CUDA {cuda} is not in lockd's driver table: its toolkit driver floor is unknown"]
    if minor_floor is None:
        notes.append(f"lockd knows no minor-version compatibility floor for CUDA {major}.x")
    return DriverFloors(toolkit_min=None, minor_compat_min=minor_floor), notes


# --- builds: what a manifest or a lock says --------------------------------------------------


@dataclass(frozen=True)
class Binary:
    """The CUDA code of one compiled extension or library, as its fat binaries carry it: the
    distinct target sets of its containers (a GPU runs the file only if every set fits it)."""

    name: str  # as its distribution's RECORD lists it, else the file name
    distribution: str | None
    groups: tuple[tuple[ArchTarget, ...], ...]
    containers: tuple[int, ...]  # how many containers carry each group

    @property
    def targets(self) -> tuple[ArchTarget, ...]:
        every = {t for group in self.groups for t in group}
        return tuple(sorted(every, key=_target_order))

    @property
    def ptx(self) -> bool:
        return any(t.ptx for t in self.targets)


@dataclass(frozen=True)
class Build:
    source: str
    torch: str
    cuda: str  # major.minor
    targets: tuple[ArchTarget, ...]
    cudnn: str | None = None
    nccl: str | None = None
    notes: tuple[str, ...] = ()
    binaries: tuple[Binary, ...] = ()  # the environment's compiled CUDA code (a manifest's)

    @property
    def ptx(self) -> bool:
        return any(t.ptx for t in self.targets)


def _known_wheels() -> str:
    return ", ".join(f"{v} (CUDA {w.cuda})" for v, w in TORCH_WHEELS.items())


def torch_wheel(version: str, source: str) -> TorchWheel:
    """The default wheel of torch `version` (`2.6.0` or `2.6.0+cu124`). Raises InputError."""
    base, _, local = version.strip().partition("+")
    wheel = TORCH_WHEELS.get(base)
    if wheel is None:
        raise InputError(
            f"{source}: torch {version} is not in lockd's table of torch wheels "
            f"(known: {_known_wheels()}); record the environment and run compat on its manifest"
        )
    if local and local != "cu" + wheel.cuda.replace(".", ""):
        what = "a CPU-only build" if local == "cpu" else f"not the default {base} wheel"
        raise InputError(
            f"{source}: torch {version} is {what} (lockd knows {base} with CUDA {wheel.cuda}, "
            f"+cu{wheel.cuda.replace('.', '')}); record the environment and run compat on its "
            "manifest"
        )
    return wheel


def binaries_from_manifest(manifest: Manifest, source: str) -> tuple[Binary, ...]:
    """The CUDA code of every installed shared object the probe read (``extensions``)."""
    probe = manifest.observation.probe
    if probe is None or probe.extensions is None:
        return ()
    found = []
    for binary in probe.extensions.binaries:
        groups, counts = [], []
        for group in binary.groups:
            if group.sass or group.ptx:
                where = f"{source}: {binary.name}"
                groups.append(parse_arch_flags([*group.sass, *group.ptx], where))
                counts.append(group.containers)
        if groups:
            found.append(Binary(binary.name, binary.distribution, tuple(groups), tuple(counts)))
    return tuple(found)


def build_from_manifest(manifest: Manifest, source: str) -> Build:
    """A build from what the probe saw: torch.version.cuda and the arch flags as compiled in,
    and the CUDA code of every installed extension."""
    import dataclasses

    build = _torch_build_from_manifest(manifest, source)
    return dataclasses.replace(build, binaries=binaries_from_manifest(manifest, source))


def _torch_build_from_manifest(manifest: Manifest, source: str) -> Build:
    probe = manifest.observation.probe
    torch = probe.torch if probe is not None else None
    if torch is None:
        raise ManifestError(
            f"{source}: the manifest records no torch (none installed, or no probe report): "
            "nothing to check"
        )
    notes: list[str] = []
    if torch.error is not None or (torch.cuda is not None and torch.arch_flags is None):
        why = (
            f"torch failed to import in the target ({torch.error})"
            if torch.error is not None
            else "the manifest records no arch flags"
        )
        wheel = torch_wheel(torch.version, source)
        notes.append(f"{why}: CUDA and architectures from lockd's table of torch wheels")
        return Build(
            source=source,
            torch=torch.version,
            cuda=wheel.cuda,
            targets=parse_arch_flags(wheel.arch, "lockd's torch table"),
            cudnn=torch.cudnn or wheel.cudnn,
            nccl=torch.nccl or wheel.nccl,
            notes=tuple(notes),
        )
    if torch.cuda is None or torch.arch_flags is None:
        raise InputError(
            f"{source}: torch {torch.version} was built without CUDA (torch.version.cuda is "
            "None): there is no GPU build to check"
        )
    return Build(
        source=source,
        torch=torch.version,
        cuda=cuda_minor(torch.cuda, source),
        targets=parse_arch_flags(torch.arch_flags, f"{source}: arch_flags"),
        cudnn=torch.cudnn,
        nccl=torch.nccl,
    )


_REQUIREMENT = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?P<rest>.*)$"
)
_PIN = re.compile(r"^===?\s*(?P<version>[^\s;,\\]+)\s*(?:;.*)?$")
_DIRECT = re.compile(r"^@\s*(?P<url>\S+)")
_COMMENT = re.compile(r"(^|\s)#.*$")
_NVIDIA = re.compile(r"^nvidia-(?P<what>cuda-runtime|cudnn|nccl)(?:-cu\d+)?$")


def requirement_lines(text: str) -> list[str]:
    """The logical lines of a requirements file: continuations joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = _COMMENT.sub("", raw).rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            lines.append(line)
    if pending.strip():
        lines.append(pending.strip())
    return lines


def _pins(text: str, source: str) -> dict[str, list[tuple[str | None, str]]]:
    """PEP 503 name -> [(pinned version or None, the requirement text)]; options skipped."""
    pins: dict[str, list[tuple[str | None, str]]] = {}
    for line in requirement_lines(text):
        if line.startswith("-"):
            continue  # --hash on its own line, -r, --index-url, -e ...
        requirement = re.split(r"\s--", line, maxsplit=1)[0].strip()
        match = _REQUIREMENT.match(requirement)
        if not match:
            raise InputError(f"{source}: cannot read the requirement {requirement[:80]!r}")
        name = re.sub(r"[-_.]+", "-", match["name"]).lower()
        rest = match["rest"].strip()
        version: str | None = None
        pin = _PIN.match(rest)
        direct = _DIRECT.match(rest)
        if pin:
            version = pin["version"]
        elif direct:
            version = _wheel_version(direct["url"], name)
        pins.setdefault(name, []).append((version, requirement))
    return pins


def _wheel_version(url: str, name: str) -> str | None:
    filename = unquote(url.rsplit("/", 1)[-1].split("#", 1)[0])
    parts = filename.split("-")
    if filename.endswith(".whl") and len(parts) >= 5 and parts[0].lower() == name:
        return parts[1]
    return None


def _single_pin(
    pins: dict[str, list[tuple[str | None, str]]], name: str, source: str
) -> str | None:
    entries = pins.get(name, [])
    versions = sorted({v for v, _ in entries if v is not None})
    if len(versions) > 1:
        raise InputError(
            f"{source}: {name} is pinned to several versions ({', '.join(versions)}): "
            "compat needs one"
        )
    return versions[0] if versions else None


def build_from_requirements(text: str, source: str) -> Build:
    """A build from a lock: `torch==X.Y.Z[+cuXYZ]` (looked up in lockd's torch table) and the
    nvidia-cuda-runtime / nvidia-cudnn / nvidia-nccl pins (`-cu12` or not). Raises InputError."""
    pins = _pins(text, source)
    if "torch" not in pins:
        raise InputError(
            f"{source}: no torch requirement: neither a lockd manifest nor a lock pinning "
            "torch==X.Y.Z"
        )
    version = _single_pin(pins, "torch", source)
    if version is None:
        raise InputError(
            f"{source}: torch is not pinned to one version ({pins['torch'][0][1]!r}): "
            "compat needs torch==X.Y.Z"
        )
    wheel = torch_wheel(version, source)
    nvidia: dict[str, tuple[str, str]] = {}
    for name in sorted(pins):
        match = _NVIDIA.match(name)
        pinned = _single_pin(pins, name, source) if match else None
        if match and pinned is not None:
            nvidia[match["what"]] = (name, pinned)
    notes: list[str] = []
    cuda = wheel.cuda
    if "cuda-runtime" in nvidia:
        name, runtime = nvidia["cuda-runtime"]
        cuda = cuda_minor(runtime, f"{source}: {name}")
        if cuda != wheel.cuda:
            notes.append(
                f"{name} {runtime} is CUDA {cuda} but torch {version} was built with CUDA "
                f"{wheel.cuda}: driver floors are those of CUDA {cuda}, the runtime loaded"
            )
    return Build(
        source=source,
        torch=version,
        cuda=cuda,
        targets=parse_arch_flags(wheel.arch, "lockd's torch table"),
        cudnn=nvidia["cudnn"][1] if "cudnn" in nvidia else wheel.cudnn,
        nccl=nvidia["nccl"][1] if "nccl" in nvidia else wheel.nccl,
        notes=tuple(notes),
    )


def build_from_bytes(data: bytes, source: str) -> Build:
    """A manifest (DSSE envelope, Sigstore bundle or bare Statement, signature not checked) or
    a lock."""
    if data.lstrip()[:1] == b"{":
        from lockd.trust.statement import parse_statement

        payload = data
        if b'"payloadType"' in data:
            from lockd.trust.signed import parse_signed

            payload = parse_signed(data, source).payload_bytes()
        _, manifest = parse_statement(payload, source)
        return build_from_manifest(manifest, source)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{source}: neither a lockd manifest (JSON) nor a requirements file (UTF-8 text)"
        ) from e
    return build_from_requirements(text, source)


# --- the assessment --------------------------------------------------------------------------


class GpuSupport(Frozen):
    name: str
    compute_capability: str
    runs: bool
    via: str


class ExtensionSupport(Frozen):
    """One compiled extension's CUDA code and which known GPUs can run it."""

    name: str
    distribution: str | None
    sass: list[str]
    ptx: list[str]
    containers: int
    judged: bool  # False: NVIDIA's own library, shown but not held against a GPU
    gpus: list[GpuSupport]


class RunsVerdict(Frozen):
    runs: bool
    reasons: list[str]  # when it does not run, only the reasons why not
    driver: str | None = None
    gpus: list[GpuSupport] = []


class Compat(Frozen):
    source: str
    torch: str
    cuda: str
    cudnn: str | None
    nccl: str | None
    arch: list[str]
    ptx: bool
    driver: DriverFloors
    gpus: list[GpuSupport]  # the architecture alone; the verdict adds the driver
    notes: list[str]
    verdict: RunsVerdict | None
    extensions: list[ExtensionSupport] = []  # every compiled extension (from a manifest)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def support(targets: Sequence[ArchTarget], gpu: Gpu) -> GpuSupport:
    kernel = kernel_for(targets, gpu.cc)
    return GpuSupport(
        name=gpu.name,
        compute_capability=f"{gpu.cc[0]}.{gpu.cc[1]}",
        runs=kernel is not None,
        via=via(kernel, gpu.cc),
    )


def binary_support(binary: Binary, gpu: Gpu) -> GpuSupport:
    """Whether a device can run ``binary``'s code: one of its cubins or its PTX must fit
    (lockd.judgement.compat's rules over every target the file carries). ``via`` names the code a
    device would use, and how many kernel sets (containers) have none for it: a library that picks
    kernels by architecture (cuBLASLt's sm_100-only kernels) legitimately has such sets, an
    extension built for one arch list should not."""
    row = {"name": gpu.name, "compute_capability": f"{gpu.cc[0]}.{gpu.cc[1]}"}
    kernel = kernel_for(binary.targets, gpu.cc)
    if kernel is None:
        return GpuSupport(**row, runs=False, via=f"no kernel image for {sm_name(gpu.cc)}")
    lacking = sum(
        count
        for group, count in zip(binary.groups, binary.containers, strict=True)
        if kernel_for(group, gpu.cc) is None
    )
    note = ""
    if lacking:
        note = f"; {lacking} of {sum(binary.containers)} kernel sets have no code for it"
    return GpuSupport(**row, runs=True, via=via(kernel, gpu.cc) + note)


def judged(binary: Binary) -> bool:
    """Whether a file's fat binaries decide if the environment runs on a GPU: not for NVIDIA's
    own libraries (nvidia-* wheels), which dispatch kernels by architecture and keep some
    outside .nv_fatbin (cuFFT 12's holds one sm_75 container: docs/libraries.md)."""
    return not (binary.distribution or "").startswith("nvidia-")


def extension_reason(binary: Binary, gpu: Gpu, row: GpuSupport) -> str:
    """Why ``binary`` does or does not run on ``gpu``, for people."""
    sm = sm_name(gpu.cc)
    if not row.runs:
        ptx = [str(t) for t in binary.targets if t.ptx]
        if not ptx:
            return f"{binary.name} has no code for {sm} and no PTX: fails on {_label(gpu)}"
        return (
            f"{binary.name} has no code for {sm} (its PTX, {' '.join(ptx)}, is for newer "
            f"GPUs): fails on {_label(gpu)}"
        )
    return f"{binary.name} runs via the {row.via.split(';')[0]} on {sm}"


def _extension_rows(build: Build) -> list[ExtensionSupport]:
    return [
        ExtensionSupport(
            name=b.name,
            distribution=b.distribution,
            sass=[str(t) for t in b.targets if not t.ptx],
            ptx=[str(t) for t in b.targets if t.ptx],
            containers=sum(b.containers),
            judged=judged(b),
            gpus=[binary_support(b, g) for g in known_gpus()],
        )
        for b in build.binaries
    ]


def assess(build: Build, *, driver: str | None = None, gpus: Sequence[str] = ()) -> Compat:
    """Which known GPUs `build` runs on, its driver floors and, given a driver and/or GPUs, a
    verdict. Raises InputError for a malformed --driver or --gpu value."""
    requested = [resolve_gpu(g) for g in gpus]
    if driver is not None:
        parse_driver(driver)
    floors, notes = driver_floors(build.cuda)
    verdict = None
    if driver is not None or requested:
        verdict = _verdict(build, floors, driver, requested)
    return Compat(
        source=build.source,
        torch=build.torch,
        cuda=build.cuda,
        cudnn=build.cudnn,
        nccl=build.nccl,
        arch=[str(t) for t in build.targets],
        ptx=build.ptx,
        driver=floors,
        gpus=[support(build.targets, g) for g in known_gpus()],
        notes=[*build.notes, *notes],
        verdict=verdict,
        extensions=_extension_rows(build),
    )


def _label(gpu: Gpu) -> str:
    return gpu.name if gpu.name == sm_name(gpu.cc) else f"{gpu.name}, {sm_name(gpu.cc)}"


def _verdict(
    build: Build, floors: DriverFloors, driver: str | None, requested: Sequence[Gpu]
) -> RunsVerdict:
    good: list[str] = []
    bad: list[str] = []
    rows = [support(build.targets, g) for g in requested]
    for gpu, row in zip(requested, rows, strict=True):
        if row.runs:
            good.append(f"{_label(gpu)}: {row.via}")
        elif gpu.name == sm_name(gpu.cc):
            bad.append(row.via)
        else:
            bad.append(f"{row.via} ({gpu.name})")
    for gpu in requested:
        for binary in filter(judged, build.binaries):
            row = binary_support(binary, gpu)
            if not row.runs:
                bad.append(extension_reason(binary, gpu, row))
            elif not re.match(rf"{sm_name(gpu.cc)}[af]? cubin", row.via):
                good.append(extension_reason(binary, gpu, row))
    if driver is not None:
        good_d, bad_d = _driver_reasons(build, floors, driver, requested, rows)
        good += good_d
        bad += bad_d
    return RunsVerdict(runs=not bad, reasons=bad or good, driver=driver, gpus=rows)


def _driver_reasons(
    build: Build,
    floors: DriverFloors,
    driver: str,
    requested: Sequence[Gpu],
    rows: Sequence[GpuSupport],
) -> tuple[list[str], list[str]]:
    cuda, toolkit, minor = build.cuda, floors.toolkit_min, floors.minor_compat_min
    if toolkit is not None and _at_least(driver, toolkit):
        return [f"driver {driver} >= {toolkit} (CUDA {cuda} toolkit floor)"], []
    if minor is None:
        raise InputError(
            f"{build.source}: lockd has no driver floor for CUDA {cuda}: cannot judge "
            f"driver {driver}"
        )
    if not _at_least(driver, minor):
        return [], [f"driver {driver} < {minor} (CUDA {cuda} minor-version compatibility floor)"]
    above = f"the toolkit floor is {toolkit}" if toolkit else "the toolkit floor is unknown"
    good = [
        f"driver {driver} >= {minor}: runs under minor-version compatibility ({above}; "
        "features that need a newer driver are unavailable)"
    ]
    bad = [
        f"{row.via} on {_label(gpu)} needs driver >= {toolkit}: under minor-version "
        "compatibility the driver cannot JIT PTX from a newer toolkit "
        "(cudaErrorUnsupportedPtxVersion)"
        for gpu, row in zip(requested, rows, strict=True)
        if row.runs and row.via.startswith("PTX") and toolkit is not None
    ]
    if not requested and build.ptx and toolkit is not None:
        good.append(f"PTX JIT (GPUs without a cubin) needs driver >= {toolkit}")
    return good, bad


# --- text output -----------------------------------------------------------------------------


def render_text(result: Compat) -> str:
    """The assessment for people: build, driver floors, the GPU table, the verdict."""
    floors = result.driver
    ptx = [a for a in result.arch if a.startswith("compute_")]
    libs = ", ".join(
        f"{name} {value}"
        for name, value in (("cuDNN", result.cudnn), ("NCCL", result.nccl))
        if value
    )
    if floors.toolkit_min and floors.minor_compat_min:
        driver = (
            f">= {floors.toolkit_min} (CUDA {result.cuda} toolkit), "
            f"or >= {floors.minor_compat_min} under minor-version compatibility"
        )
    elif floors.minor_compat_min:
        driver = f">= {floors.minor_compat_min} under minor-version compatibility"
    else:
        driver = "unknown"
    lines = [
        f"torch   {result.torch} ({result.source})",
        f"CUDA    {result.cuda}" + (f" ({libs})" if libs else ""),
        "arch    " + " ".join(a for a in result.arch if not a.startswith("compute_")),
        "PTX     " + (" ".join(ptx) + " (JIT for newer GPUs)" if ptx else "none"),
        f"driver  {driver}",
    ]
    lines += [f"note: {n}" for n in result.notes]
    verdict = result.verdict
    if result.extensions:
        lines += ["", *_extension_lines(result.extensions)]
    if verdict is None:
        lines += ["", *_gpu_table(result.gpus)]
    else:
        lines += ["", "verdict: " + ("runs" if verdict.runs else "does not run")]
        lines += [f"  {r}" for r in verdict.reasons]
    return "\n".join(lines) + "\n"


def _gpu_table(gpus: Sequence[GpuSupport]) -> list[str]:
    width = max(len(g.name) for g in gpus) + 2
    lines = [f"{'GPU':<{width}}{'capability':<12}{'runs':<6}via"]
    for gpu in gpus:
        runs = "yes" if gpu.runs else "no"
        lines.append(f"{gpu.name:<{width}}{gpu.compute_capability:<12}{runs:<6}{gpu.via}")
    return lines


def _extension_lines(extensions: Sequence[ExtensionSupport]) -> list[str]:
    """One line per compiled extension: its code, and the known GPUs it does not run on."""
    lines = [f"CUDA code in {len(extensions)} installed shared objects:"]
    for ext in extensions:
        ptx = " ".join(ext.ptx) or "no PTX"
        fails = [g.name for g in ext.gpus if not g.runs]
        where = f"not on {', '.join(fails)}" if fails else "runs on every GPU lockd knows"
        if not ext.judged:
            where += " (NVIDIA's library: not judged)"
        lines.append(f"  {ext.name}: {' '.join(ext.sass) or 'no cubin'}; {ptx}; {where}")
    return lines
