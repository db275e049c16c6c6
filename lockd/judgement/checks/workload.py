"""``workload`` (host evidence): what the target's running processes mapped and were started
with (lockd.evidence.workload, read on the host), judged against the image and the manifest
(#17). Pure: no I/O.

Code is what a process maps executable (its executable included); data mapped read-only (model
weights, Arrow files, the locale archive) is listed with its hash and not judged. Findings, each
naming the file or variable and the processes (pid, group):

Needing no manifest:

* ``deleted``: code deleted or replaced on disk after it was mapped (the bytes still run);
* ``not-in-image``: code from a memfd or shared memory, from a file the container added since
  its image (the overlay upper directory), from a mount that is not the NVIDIA toolkit's
  driver injection, or from under a volatile place lockd's filesystem walk does not read;
* ``altered``: code from a file the container changed since its image, or another file than
  the recorded one at that path;
* ``jit``: code under a place the policy's ``workload.jit`` names (torch.compile, Triton, CUDA's
  JIT cache), reported with its hash at ``workload.jit_level`` (``warn``);
* ``env-added``, ``env-changed``: a tracked variable (``tracked_env``) in a process's
  environment that the manifest does not have, or with another value (the recorded group's
  variables where it was recorded, else the container's configured environment and the probe's);
  ``env-removed``: one the recorded group had. The policy's ``env.ignore`` and
  ``workload.launcher_env`` are not judged;
* ``cuda-library``: a CUDA library (libcudnn, libnccl...) at another path or with other bytes
  than recorded (the recorded group's, else any recorded group's, else the probe's record of
  what ``import torch`` mapped);
* ``unverified``: code whose content could not be read; ``unreadable``: a process that could
  not be read (another user's, or part of it); ``not-examined``: the mapped files could not be
  read at all (not root, no map_files); ``incomplete``: more than lockd reads.

Needing the manifest's workload: ``executable`` (a group's executable differs),
``group-added`` (a group runs that was not recorded), ``group-gone`` (a recorded group no
longer runs). Code outside the image that the manifest's workload recorded with the same
content at the same path is not drift.

Without an image (a ``process:PID`` target: the observation has no host evidence) there are no
image, changes or mounts to judge by: the manifest alone vouches for code. Code at a path the
manifest's workload (or its probe's and GPU suite's library records) holds with the same bytes
passes; at a recorded path with other bytes it is ``altered``; anywhere else it is
``not-in-image``, naming the recorded paths of the same bytes where there are any (a copy of a
library loaded from another directory). With no workload in the manifest, only what needs none
is judged.

Notes (listed, never failing): ``vanished`` and ``zombie`` processes, a ``docker exec`` in
``transit``, an ``exec-session`` (a process tree started beside the init process: an
operator's shell), ``unread-data`` (a data file not read), ``no-record`` (the manifest holds no
workload: only what needs none was judged).
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from lockd.judgement.checks.environment import selected_env
from lockd.judgement.checks.interface import skipped
from lockd.judgement.policy import Policy, Volatile, volatile_places
from lockd.model.host import HostEvidence
from lockd.model.manifest import Manifest, Observation
from lockd.model.report import Check, Finding
from lockd.model.workload import MappedFile, Workload, WorkloadProcess

CHECK = "workload"
MAX_FINDINGS = 1000
_TRACKED_PREFIXES = ("LD_", "PYTHON")


def tracked_env(name: str) -> bool:
    """The variables a workload's processes are read for: those the ``env`` check tracks
    (``selected_env``) and every ``LD_*`` and ``PYTHON*``."""
    return selected_env(name) or name.startswith(_TRACKED_PREFIXES)


@dataclass
class Judged:
    """Findings that fail the check (at its level), that warn (``jit`` at ``jit_level``), and
    notes that never fail."""

    failing: list[Finding] = field(default_factory=list)
    warning: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)


def _pids(processes: Iterable[WorkloadProcess]) -> str:
    pids = sorted({p.pid for p in processes})
    shown = ", ".join(str(p) for p in pids[:8])
    return f"pid {shown}" + (f" and {len(pids) - 8} more" if len(pids) > 8 else "")


def _digest(sha256: str | None) -> str | None:
    return None if sha256 is None else f"sha256:{sha256}"


def _label(entry: MappedFile) -> str:
    version = f" {entry.library_version}" if entry.library_version else ""
    return f"{entry.path}{version} {_digest(entry.sha256) or '(not read)'}"


def _recorded(manifest: Manifest) -> Workload | None:
    found = manifest.observation.workload
    return found if found is not None and found.not_examined is None else None


class _Context:
    """What judging one workload needs of the manifest, the observation and the policy."""

    def __init__(self, manifest: Manifest, observation: Observation, p: Policy) -> None:
        host = observation.host
        env = host.config_env if host is not None else {}
        self.host: HostEvidence | None = host
        self.recorded = _recorded(manifest)
        self.jit: Volatile = volatile_places(p.workload.jit, env)
        self.volatile: Volatile = p.filesystem.places(env)
        self.changes = {c.path: c for c in host.changes} if host is not None else {}
        self.mounts = _mounts(host)
        self.ignore = set(p.env.ignore)
        self.launchers = list(p.workload.launcher_env)
        self.recorded_files: dict[str, set[tuple[str | None, bool]]] = {}
        if self.recorded is not None:
            for entry in self.recorded.files:
                self.recorded_files.setdefault(entry.path, set()).add((entry.sha256, entry.deleted))
        recorded_host = manifest.observation.host
        recorded_probe = manifest.observation.probe
        base: dict[str, str] = {}
        if recorded_probe is not None:
            base.update(recorded_probe.env)
        if recorded_host is not None:
            base.update(recorded_host.config_env)
        self.manifest_env = {k: v for k, v in base.items() if tracked_env(k)}
        self.probe_libraries = _probe_libraries(manifest)
        # without an image: the code the manifest vouches for, by path and by content
        self.vouched: dict[str, set[str | None]] = {}
        self.recorded_at: dict[str, set[str]] = {}
        if host is None and self.recorded is not None:
            self.vouched, self.recorded_at = _vouched(self.recorded, manifest)

    def judged_env(self, name: str) -> bool:
        """Whether a variable is judged: not in ``env.ignore``, not a launcher's."""
        return name not in self.ignore and not any(
            fnmatch.fnmatchcase(name, pattern) for pattern in self.launchers
        )


def _mounts(host: HostEvidence | None) -> list[tuple[str, str, str | None]]:
    """(mount point, what, why declared) of the target's mounts but its root: the kernel's
    view where there is one, else the daemon's."""
    if host is None:
        return []
    if host.kernel is not None:
        found = [(m.mount_point, m.fstype, m.declared) for m in host.kernel.mounts]
    else:
        found = [(m.destination, m.type, "daemon") for m in host.mounts]
    return sorted((m for m in found if m[0] != "/"), key=lambda m: -len(m[0]))


def _mount_of(path: str, mounts: Sequence[tuple[str, str, str | None]]) -> tuple[str, str] | None:
    """(mount point, type) of the innermost mount ``path`` lies on, None for the root; a mount
    of the NVIDIA toolkit's driver injection is the driver's (the ``driver`` check's)."""
    for point, kind, declared in mounts:
        if path == point or path.startswith(point.rstrip("/") + "/"):
            return None if declared == "gpu" else (point, kind)
    return None


def _probe_libraries(manifest: Manifest) -> dict[str, list[tuple[str, str | None, str | None]]]:
    """The CUDA libraries the manifest's probe (and GPU suite) saw mapped, by name."""
    from lockd.judgement.libraries import identity, records

    found: dict[str, list[tuple[str, str | None, str | None]]] = {}
    for record in records(manifest.observation):
        for library in record.libraries:
            if library.role == "cuda":
                found.setdefault(identity(library), []).append(
                    (library.path, library.sha256, library.version)
                )
    return found


def _vouched(
    recorded: Workload, manifest: Manifest
) -> tuple[dict[str, set[str | None]], dict[str, set[str]]]:
    """(the digests the manifest holds for each path, the paths it holds for each digest): its
    workload's files (not deleted ones), and the libraries its probe and GPU suite mapped."""
    from lockd.judgement.libraries import manifest_records

    found: list[tuple[str, str | None]] = [
        (entry.path, entry.sha256) for entry in recorded.files if not entry.deleted
    ]
    for record in manifest_records(manifest):
        found += [(lib.path, lib.sha256) for lib in record.libraries if not lib.deleted]
    by_path: dict[str, set[str | None]] = {}
    by_digest: dict[str, set[str]] = {}
    for path, sha256 in found:
        by_path.setdefault(path, set()).add(sha256)
        if sha256 is not None:
            by_digest.setdefault(sha256, set()).add(path)
    return by_path, by_digest


def _without_image(entry: MappedFile, ctx: _Context) -> tuple[str, str, str | None] | None:
    """Provenance where there is no image (a process on this host): the manifest alone vouches
    for code (see the module's text). Unread code is ``unverified`` already."""
    if ctx.recorded is None or entry.sha256 is None:
        return None
    digests = ctx.vouched.get(entry.path)
    if digests is not None:
        if entry.sha256 in digests:
            return None
        shown = sorted(_digest(d) or "(not read)" for d in digests)
        return "altered", "not the file the manifest recorded at that path", ", ".join(shown)
    same = sorted(ctx.recorded_at.get(entry.sha256, ()))
    place = "under a volatile place (tmp, caches), " if entry.path in ctx.volatile else ""
    why = (
        f"code {place}at a path where the manifest recorded none, with no image to vouch for "
        "it (a process on this host)"
    )
    if same:
        why += f"; the same bytes were recorded at {', '.join(same)}"
    expected = "; ".join(f"{path} {_digest(entry.sha256)}" for path in same) or None
    return "not-in-image", why, expected


def _provenance(entry: MappedFile, ctx: _Context) -> tuple[str, str, str | None] | None:
    """(kind, why, expected) when code is not the image's (or the recorded) file at its path."""
    if entry.deleted:
        return (
            "deleted",
            "deleted or replaced on disk after it was mapped: the process runs bytes that are "
            "no longer at that path",
            None,
        )
    if entry.kind != "file":
        return "not-in-image", f"code mapped from {entry.kind} (memory, not a file)", None
    if entry.path in ctx.jit:
        return "jit", "code generated at run time (workload.jit)", None
    if ctx.host is None:
        return _without_image(entry, ctx)
    change = ctx.changes.get(entry.path)
    if change is not None and change.kind == "added":
        return "not-in-image", "a file the container added since its image", None
    if change is not None and change.kind == "changed":
        return "altered", "a file the container changed since its image", _digest(change.sha256)
    mount = _mount_of(entry.path, ctx.mounts)
    if mount is not None:
        return (
            "not-in-image",
            f"on a {mount[1]} mount at {mount[0]}, not the image's filesystem",
            None,
        )
    if entry.path in ctx.volatile:
        return (
            "not-in-image",
            "under a volatile place, whose changes lockd's filesystem walk does not read: not "
            "the image's file as far as lockd can tell",
            None,
        )
    recorded = ctx.recorded_files.get(entry.path)
    if recorded and entry.sha256 is not None and (entry.sha256, False) not in recorded:
        digests = sorted(_digest(d) or "(not read)" for d, _ in recorded)
        return "altered", "not the file the manifest recorded at that path", ", ".join(digests)
    return None


def _file_findings(workload: Workload, ctx: _Context, judged: Judged, jit_level: str) -> None:
    users: dict[int, list[WorkloadProcess]] = {}
    for process in workload.processes:
        for index in process.files:
            users.setdefault(index, []).append(process)
    for index, entry in enumerate(workload.files):
        processes = users.get(index, [])
        where = _pids(processes)
        if not entry.executable:
            if entry.unread is not None:
                judged.notes.append(
                    Finding(kind="unread-data", path=entry.path, message=f"{where}: {entry.unread}")
                )
            continue
        if entry.sha256 is None:
            judged.failing.append(
                Finding(
                    kind="unverified",
                    path=entry.path,
                    message=f"{where}: mapped code whose content lockd could not read: "
                    f"{entry.unread or 'not read'}",
                )
            )
        found = _provenance(entry, ctx)
        if found is None:
            continue
        kind, why, expected = found
        recorded = ctx.recorded_files.get(entry.path, set())
        if kind != "jit" and entry.sha256 is not None and (entry.sha256, entry.deleted) in recorded:
            continue  # recorded with the same content: how the environment was recorded
        finding = Finding(
            kind=kind,
            name=entry.library or posixpath.basename(entry.path),
            path=entry.path,
            expected=expected,
            observed=_digest(entry.sha256),
            message=f"{where} ({', '.join(sorted({p.group for p in processes}))}): {why}",
        )
        if kind != "jit" or jit_level == "required":
            judged.failing.append(finding)
        elif jit_level == "warn":
            judged.warning.append(finding)


def _env_findings(
    group: str,
    processes: Sequence[WorkloadProcess],
    expected: Mapping[str, set[str]],
    ctx: _Context,
    removed: bool,
) -> list[Finding]:
    where = "the recorded group" if removed else "the manifest"
    seen: dict[tuple[str, str, str | None], list[WorkloadProcess]] = {}
    for process in processes:
        env = {k: v for k, v in process.env.items() if ctx.judged_env(k)}
        for name, value in env.items():
            wanted = expected.get(name)
            if wanted is None:
                seen.setdefault(("env-added", name, value), []).append(process)
            elif value not in wanted:
                seen.setdefault(("env-changed", name, value), []).append(process)
        if removed:
            for name in expected:
                if name not in env and ctx.judged_env(name):
                    seen.setdefault(("env-removed", name, None), []).append(process)
    return [
        Finding(
            kind=kind,
            name=name,
            expected=", ".join(sorted(expected[name])) if name in expected else None,
            observed=value,
            message=f"{_pids(users)} ({group}), read from the process's own memory: not as "
            f"{where} has it",
        )
        for (kind, name, value), users in sorted(seen.items(), key=lambda i: (i[0][1], i[0][0]))
    ]


def _group_env(processes: Iterable[WorkloadProcess]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for process in processes:
        for name, value in process.env.items():
            found.setdefault(name, set()).add(value)
    return found


def _libraries(
    workload: Workload, processes: Iterable[WorkloadProcess]
) -> dict[str, list[MappedFile]]:
    found: dict[str, list[MappedFile]] = {}
    indexes = sorted({i for p in processes for i in p.files})
    for index in indexes:
        entry = workload.files[index]
        if entry.library is not None and entry.library_role == "cuda" and entry.executable:
            found.setdefault(entry.library, []).append(entry)
    return found


def _library_findings(
    group: str,
    mapped: Mapping[str, list[MappedFile]],
    reference: Mapping[str, list[tuple[str, str | None, str | None]]],
    whose: str,
) -> list[Finding]:
    findings = []
    for name, entries in sorted(mapped.items()):
        wanted = reference.get(name)
        if not wanted:
            continue  # a library the reference did not map (loaded lazily): judged as a file
        for entry in entries:
            if any(path == entry.path and sha == entry.sha256 for path, sha, _ in wanted):
                continue
            same_bytes = entry.sha256 is not None and any(
                sha == entry.sha256 for _, sha, _ in wanted
            )
            why = (
                "the same bytes at another path"
                if same_bytes
                else "another version or build than recorded"
            )
            findings.append(
                Finding(
                    kind="cuda-library",
                    name=name,
                    path=entry.path,
                    expected="; ".join(
                        f"{path}{f' {version}' if version else ''} {_digest(sha) or '(not read)'}"
                        for path, sha, version in sorted(wanted, key=lambda w: w[0])
                    ),
                    observed=_label(entry),
                    message=f"{group}: {why} ({whose})",
                )
            )
    return findings


def _reference(
    recorded: Workload, processes: Iterable[WorkloadProcess]
) -> dict[str, list[tuple[str, str | None, str | None]]]:
    return {
        name: [(e.path, e.sha256, e.library_version) for e in entries]
        for name, entries in _libraries(recorded, processes).items()
    }


def _group_findings(workload: Workload, ctx: _Context, judged: Judged) -> None:
    recorded = ctx.recorded
    recorded_groups = recorded.groups() if recorded is not None else {}
    everything = _reference(recorded, recorded.processes) if recorded is not None else {}
    for group, processes in workload.groups().items():
        exec_only = all(p.origin == "exec" for p in processes)
        if exec_only:
            judged.notes.append(
                Finding(
                    kind="exec-session",
                    name=group,
                    observed=_pids(processes),
                    message="started beside the target's init process (docker exec): an "
                    "operator's session or another tool",
                )
            )
        before = recorded_groups.get(group)
        if before is None:
            judged.failing += _env_findings(group, processes, _manifest_env(ctx), ctx, False)
            if recorded is not None and not exec_only:
                judged.failing.append(
                    Finding(
                        kind="group-added",
                        name=group,
                        observed=_pids(processes),
                        message="a program runs that the manifest's workload did not record",
                    )
                )
            reference = everything or ctx.probe_libraries
            whose = "the recorded workload" if everything else "the probe's record"
            judged.failing += _library_findings(
                group, _libraries(workload, processes), reference, whose
            )
            continue
        judged.failing += _env_findings(group, processes, _group_env(before), ctx, True)
        executables = {(p.executable, p.executable_sha256) for p in before}
        for process in processes:
            if (process.executable, process.executable_sha256) not in executables:
                judged.failing.append(
                    Finding(
                        kind="executable",
                        name=group,
                        path=process.executable,
                        expected="; ".join(
                            f"{path} {_digest(sha) or '(not read)'}"
                            for path, sha in sorted(executables, key=lambda e: e[0])
                        ),
                        observed=f"{process.executable} "
                        f"{_digest(process.executable_sha256) or '(not read)'}",
                        message=f"pid {process.pid}: another executable than the recorded group's",
                    )
                )
        judged.failing += _library_findings(
            group,
            _libraries(workload, processes),
            _reference(recorded, before) if recorded is not None else {},
            "the recorded group",
        )
    current = workload.groups()
    for group, processes in recorded_groups.items():
        if group not in current and not all(p.origin == "exec" for p in processes):
            judged.failing.append(
                Finding(
                    kind="group-gone",
                    name=group,
                    expected=f"{len(processes)} process(es)",
                    message="a program the manifest's workload recorded no longer runs",
                )
            )


def _manifest_env(ctx: _Context) -> dict[str, set[str]]:
    return {name: {value} for name, value in ctx.manifest_env.items()}


def _process_findings(workload: Workload, judged: Judged) -> None:
    if workload.not_examined is not None:
        judged.failing.append(
            Finding(
                kind="not-examined",
                message=f"the workload's mapped files were not examined: {workload.not_examined}",
            )
        )
    if workload.incomplete is not None:
        judged.failing.append(Finding(kind="incomplete", message=workload.incomplete))
    for skip in workload.skipped:
        if skip.reason == "excluded":
            continue
        finding = Finding(kind=skip.reason, observed=f"pid {skip.pid}", message=skip.message)
        (judged.failing if skip.reason in ("unreadable", "limit") else judged.notes).append(finding)
    for process in workload.processes:
        if process.unread is not None:
            judged.failing.append(
                Finding(
                    kind="unreadable",
                    name=process.group,
                    observed=f"pid {process.pid}",
                    message=process.unread,
                )
            )
        if process.executable_deleted and workload.not_examined is not None:
            judged.failing.append(
                Finding(
                    kind="deleted",
                    name=process.group,
                    path=process.executable,
                    observed=f"pid {process.pid}",
                    message="the executable was deleted or replaced on disk after it started",
                )
            )


def judge_workload(manifest: Manifest, observation: Observation, p: Policy) -> Judged:
    """The findings on the observation's workload (see the module's text)."""
    judged = Judged()
    workload = observation.workload
    if workload is None:
        return judged
    ctx = _Context(manifest, observation, p)
    _process_findings(workload, judged)
    _file_findings(workload, ctx, judged, p.workload.jit_level)
    _group_findings(workload, ctx, judged)
    if ctx.recorded is None:
        judged.notes.append(
            Finding(
                kind="no-record",
                message="the manifest holds no workload: only what needs none was judged "
                "(deleted, outside the image, altered, variables, CUDA libraries against the "
                "probe's record)",
            )
        )
    return judged


def check_workload(manifest: Manifest, observation: Observation, p: Policy) -> Check:
    """``workload`` (host evidence): see the module's text."""
    if observation.workload is None:
        return skipped(
            CHECK,
            "host",
            "the target's processes were not read (only a running container or process has a "
            "workload)",
        )
    level = p.level(CHECK)
    if level == "ignore":
        return skipped(CHECK, "host", "ignored by policy")
    judged = judge_workload(manifest, observation, p)
    findings = judged.failing + judged.warning + judged.notes
    if len(findings) > MAX_FINDINGS:
        omitted = len(findings) - MAX_FINDINGS
        findings = [
            *findings[:MAX_FINDINGS],
            Finding(kind="omitted", message=f"{omitted} more finding(s) not listed"),
        ]
    workload = observation.workload
    groups = len(workload.groups())
    summary = (
        f"{len(workload.processes)} process(es) in {groups} group(s), "
        f"{len(workload.files)} mapped file(s)"
    )
    if judged.failing:
        status = "fail" if level == "required" else "warn"
        message = f"{len(judged.failing)} finding(s) on the running workload ({summary})"
    elif judged.warning:
        status = "warn"
        message = f"code generated at run time is mapped ({summary})"
    else:
        status = "pass"
        whose = (
            "the image's and the manifest's" if observation.host is not None else "the manifest's"
        )
        message = f"the running workload is {whose} ({summary})"
    return Check(id=CHECK, status=status, evidence="host", message=message, findings=findings)
