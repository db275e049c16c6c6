"""Compiling a lock (``compile_lock``): a resolver in a subprocess with a clean configuration:
the machine's pip configuration (constraints, extra indexes, find-links) must not leak into a
lock. Two resolvers write the same format (a pip-tools-style ``requirements.txt`` with hashes):
uv (``uv pip compile --generate-hashes --python-version --python-platform``), the default when
it is installed (seconds, where pip-tools takes minutes on a torch stack), and pip-tools
(``pip-compile --generate-hashes --strip-extras --allow-unsafe``), which can only resolve for the
running interpreter: its markers and tags, whatever ``--pip-args`` say (see docs/locks.md).
lockd writes the header itself, so the same inputs give the same bytes.

The PyTorch family is held to its torch (lockd.judgement.coherence): family members the ``.in``
leaves free get the release built for the pinned torch as a constraint, an explicit pin that cannot
fit is refused, and a resolution that still pairs a member with another torch (the index's
metadata allowed it) is resolved again with the constraint. The header lists what was added.
"""

from __future__ import annotations

import hashlib
import os
import platform as platform_module
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lockd import __version__
from lockd.errors import InputError
from lockd.fileio import read_capped, write_atomic
from lockd.judgement.locks import MAX_LOCK_BYTES, logical_lines, parse_lock, require_hashes
from lockd.model.base import normalise_name

if TYPE_CHECKING:
    from lockd.judgement.coherence import Constraints, Problem


PIP_TOOLS_OPTIONS = ("--generate-hashes", "--strip-extras", "--allow-unsafe")
# pip settings that say how to reach an index, not what to resolve: kept from the environment.
_PIP_TRANSPORT = frozenset(
    {
        "PIP_CERT",
        "PIP_CLIENT_CERT",
        "PIP_DEFAULT_TIMEOUT",
        "PIP_TIMEOUT",
        "PIP_RETRIES",
        "PIP_PROXY",
        "PIP_CACHE_DIR",
        "PIP_DISABLE_PIP_VERSION_CHECK",
    }
)
_UV_KEPT = frozenset({"UV_CACHE_DIR", "UV_NATIVE_TLS", "UV_HTTP_TIMEOUT"})
_VERSION = re.compile(r"^3\.\d{1,2}$")
_TAG = re.compile(r"^[a-z0-9_]+$")
_STDERR_TAIL = 3000


@dataclass(frozen=True)
class LockRequest:
    requirements_in: Path
    output: Path | None = None  # default: requirements.txt beside the .in
    python_version: str | None = None  # X.Y; default: the host interpreter's
    platform: str | None = None  # a wheel platform tag; default: the host's
    index_url: str | None = None  # default: the resolver's default index
    extra_index_urls: tuple[str, ...] = ()
    timeout: float | None = None
    resolver: str | None = None  # "uv" or "pip-tools"; default: uv when installed

    @property
    def destination(self) -> Path:
        return self.output or self.requirements_in.with_name("requirements.txt")


@dataclass(frozen=True)
class Compiled:
    path: Path
    text: str
    resolver: str
    python_version: str
    platform: str
    pins: int
    constraints: tuple[str, ...] = ()  # what lockd added to hold the PyTorch family to torch
    reasons: tuple[str, ...] = ()  # why, one per constraint


def host_python() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def host_platforms() -> list[str]:
    from packaging import tags

    return list(tags.platform_tags())


def _most_specific(platforms: Sequence[str]) -> str:
    """The host's own manylinux tag (its glibc) when it has one, else its first tag."""
    return next((t for t in platforms if t.startswith("manylinux_")), platforms[0])


def uv_platform(tag: str) -> str:
    """A wheel platform tag as uv's ``--python-platform`` names it. Raises InputError."""
    manylinux = re.match(r"^(manylinux_\d+_\d+|manylinux2014)_(x86_64|aarch64)$", tag)
    if manylinux is not None:
        return f"{manylinux.group(2)}-{manylinux.group(1)}"
    fixed = {
        "linux_x86_64": "x86_64-unknown-linux-gnu",
        "linux_aarch64": "aarch64-unknown-linux-gnu",
        "musllinux_1_2_x86_64": "x86_64-unknown-linux-musl",
        "musllinux_1_2_aarch64": "aarch64-unknown-linux-musl",
        "win_amd64": "x86_64-pc-windows-msvc",
        "win_arm64": "aarch64-pc-windows-msvc",
    }
    if tag in fixed:
        return fixed[tag]
    mac = re.match(r"^macosx_\d+_\d+_(x86_64|arm64|universal2)$", tag)
    if mac is not None:
        return "x86_64-apple-darwin" if mac.group(1) == "x86_64" else "aarch64-apple-darwin"
    raise InputError(
        f"--platform {tag}: not a platform tag lockd can lock for; use one such as "
        "manylinux_2_28_x86_64, manylinux2014_aarch64, linux_x86_64, macosx_11_0_arm64 or "
        "win_amd64"
    )


def _clean_env() -> dict[str, str]:
    """This process's environment without the machine's pip and uv resolution settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("PIP_") and k not in _PIP_TRANSPORT)
        and not (k.startswith("UV_") and k not in _UV_KEPT)
    }
    env["PIP_CONFIG_FILE"] = os.devnull  # pip then reads no configuration file at all
    env["UV_NO_CONFIG"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def default_index_url() -> str:
    """The index pip-tools resolves from when none is configured (its default, not ours).

    Raises InputError when pip-tools is not installed beside lockd."""
    try:
        with warnings.catch_warnings():  # pip-tools imports pip's vendored pkg_resources
            warnings.simplefilter("ignore", DeprecationWarning)
            from piptools.repositories.base import BaseRepository
    except ImportError as e:
        raise InputError(
            f"lockd lock needs pip-tools in lockd's environment ({sys.executable}): "
            "pip install pip-tools"
        ) from e
    return str(BaseRepository.DEFAULT_INDEX_URL)


def find_uv() -> str | None:
    """The uv installed beside lockd (the uv wheel), else ``uv`` on PATH; None without one."""
    try:
        from uv import find_uv_bin
    except ImportError:
        return shutil.which("uv")
    try:
        return str(find_uv_bin())
    except FileNotFoundError:
        return shutil.which("uv")


def _uv_binary() -> str:
    found = find_uv()
    if not found:
        raise InputError(
            "locking for another Python version or platform than this interpreter's needs uv "
            "(pip install uv, or put it on PATH); pip-tools can only resolve for the "
            f"interpreter it runs in (Python {host_python()})"
        )
    return found


def _resolver_versions(backend: str, uv: str | None) -> str:
    from importlib.metadata import version

    if backend == "pip-tools":
        return f"pip-tools {version('pip-tools')} (pip {version('pip')})"
    assert uv is not None
    out = subprocess.run(
        [uv, "--version"], capture_output=True, text=True, check=False, env=_clean_env()
    ).stdout.split()
    return f"uv {out[1] if len(out) > 1 else 'unknown'}"


def _command(
    backend: str,
    request: LockRequest,
    python: str,
    platform: str,
    index_url: str | None,
    output: Path,
    uv: str | None,
    constraints: Path | None = None,
) -> tuple[list[str], list[str]]:
    """(argv, the options recorded in the header: the same for both resolvers, which write the
    same lock from them; `python` is X.Y, or X.Y.Z to resolve as one patch release; no
    `index_url`: uv's default index, which is pip's)."""
    options = list(PIP_TOOLS_OPTIONS)
    constrain = [] if constraints is None else ["--constraint", str(constraints)]
    if backend == "pip-tools":
        indexes = ["--index-url", index_url or default_index_url()]
        for extra in request.extra_index_urls:
            indexes += ["--extra-index-url", extra]
        argv = [sys.executable, "-m", "piptools", "compile", *options, "--quiet", "--no-header"]
        argv += ["--no-emit-index-url", "--no-emit-trusted-host", "--no-emit-find-links"]
        argv += ["--no-emit-options", "--annotation-style", "split", "--newline", "lf"]
        argv += [*indexes, *constrain, "--output-file", str(output), request.requirements_in.name]
        return argv, options
    assert uv is not None
    indexes = [] if index_url is None else ["--default-index", index_url]
    for extra in request.extra_index_urls:
        indexes += ["--index", extra]
    argv = [uv, "pip", "compile", *options, "--python-version", python]
    argv += ["--python-platform", uv_platform(platform)]
    if request.extra_index_urls:  # pip's behaviour: the best match across every index
        argv += ["--index-strategy", "unsafe-best-match"]
    argv += ["--quiet", "--no-header", "--no-config", "--annotation-style", "split"]
    argv += [*indexes, *constrain, "--output-file", str(output), request.requirements_in.name]
    return argv, options


def _body(text: str) -> str:
    """The resolver's pins without its option lines, leading blank lines and \\r."""
    lines = [
        line.rstrip() for line in text.replace("\r\n", "\n").split("\n") if not line.startswith("-")
    ]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def render_header(
    *,
    source: Path,
    source_sha256: str,
    resolver: str,
    python: str,
    resolved_as: str,
    platform: str,
    index_url: str,
    extra_index_urls: Sequence[str],
    options: Sequence[str],
    constraints: Sequence[str] = (),
) -> str:
    """lockd's header: every input that shaped the lock, and nothing that changes run to run.

    `resolved_as` says which patch releases the resolver assumed (Requires-Python and
    python_full_version markers depend on them): pip-tools its own interpreter's, uv all.
    """
    command = f"lockd lock {source.name} --python-version {python} --platform {platform}"
    if index_url != default_index_url():
        command += f" --index-url {index_url}"
    command += "".join(f" --extra-index-url {u}" for u in extra_index_urls)
    rows = [
        ("input", f"{source.name} (sha256 {source_sha256})"),
        ("lockd", __version__),
        ("resolver", resolver),
        ("python", f"{python} (CPython; resolved as {resolved_as})"),
        ("platform", platform),
        ("index-url", index_url),
        *(("extra-index-url", u) for u in extra_index_urls),
        ("options", " ".join(options)),
    ]
    if constraints:
        rows.append(("constraints", f"{' '.join(constraints)} ({COHERENCE_NOTE})"))
    lines = [
        "# This lock was compiled by lockd; do not edit it: change the .in file and run",
        f"#    {command}",
        "#",
        *(f"#   {key}: {value}" for key, value in rows),
        "#",
    ]
    return "\n".join(lines) + "\n"


RESOLVERS = ("uv", "pip-tools")
COHERENCE_NOTE = "lockd: the PyTorch family of this torch, see docs/locks.md"
_CONSTRAINTS_FILE = "lockd-coherence.txt"
_CONSTRAINTS_ANNOTATION = re.compile(r"-c \S*" + re.escape(_CONSTRAINTS_FILE))


def choose_resolver(requested: str | None, native: bool) -> tuple[str, str | None]:
    """(resolver, uv's path): uv when installed (the faster), else pip-tools for the host's own
    target. Raises InputError for an unknown name, pip-tools for another target, or no uv."""
    if requested is not None and requested not in RESOLVERS:
        raise InputError(f"--resolver {requested}: lockd resolves with uv or pip-tools")
    if requested == "pip-tools":
        if not native:
            raise InputError(
                "--resolver pip-tools resolves only for the interpreter it runs in (CPython "
                f"{host_python()} on this machine's platform tags); use --resolver uv to lock "
                "for another --python-version or --platform"
            )
        return "pip-tools", None
    uv = find_uv()
    if uv is not None:
        return "uv", uv
    if requested is None and native:
        return "pip-tools", None
    if requested == "uv":
        raise InputError("--resolver uv: uv is not installed (pip install uv, or put it on PATH)")
    return "uv", _uv_binary()  # raises: another target needs uv


def in_requirements(text: str) -> dict[str, str]:
    """The requirement lines of a ``.in``: PEP 503 name → specifier ("" when unpinned). Option
    lines (-r, -c, --index-url...), URLs and what does not parse are left to the resolver."""
    from packaging.requirements import InvalidRequirement, Requirement

    found: dict[str, str] = {}
    for _, line in logical_lines(text):
        tokens = line.split()
        if not tokens or tokens[0].startswith("-"):
            continue
        head = " ".join(t for t in tokens if not t.startswith("--"))
        try:
            requirement = Requirement(head)
        except InvalidRequirement:
            continue
        if requirement.url is None:
            found[normalise_name(requirement.name)] = str(requirement.specifier)
    return found


def _incoherence(body: str, environment: Mapping[str, str], where: str) -> list[Problem]:
    from lockd.judgement.coherence import evaluate

    versions = {p.name: p.version for p in parse_lock(body.encode("utf-8"), where).pins}
    return evaluate(versions, environment)


def _default_index_soon() -> Future[str]:
    """default_index_url() computed in a thread (its import of pip-tools takes a second)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lockd-index")
    try:
        return pool.submit(default_index_url)
    finally:
        pool.shutdown(wait=False)


def _target(request: LockRequest) -> tuple[str, str, bool]:
    """(X.Y, platform tag, whether that is this interpreter's own target). Raises InputError."""
    python = request.python_version or host_python()
    if not _VERSION.match(python):
        raise InputError(f"--python-version {python}: give a CPython 3 version as X.Y (e.g. 3.11)")
    platforms = host_platforms()
    platform = request.platform or _most_specific(platforms)
    if not _TAG.match(platform):
        raise InputError(
            f"--platform {platform}: give a wheel platform tag (e.g. manylinux_2_28_x86_64)"
        )
    native = (
        python == host_python() and platform in platforms and sys.implementation.name == "cpython"
    )
    return python, platform, native


def compile_lock(request: LockRequest) -> Compiled:
    """Resolve `request.requirements_in` into a hashed lock and write it (atomically), with the
    PyTorch family held to its torch (lockd.judgement.coherence).

    Raises InputError (exit 2) naming the .in when it cannot be read or resolved, when it pins
    a family member that cannot fit its torch (naming both and the version that fits), or when
    the resolution cannot be made coherent; nothing is written then.
    """
    from lockd.judgement.coherence import IncoherentPinError, in_constraints, platform_environment

    source = request.requirements_in
    data = read_capped(source, limit=MAX_LOCK_BYTES, what="requirements")
    python, platform, native = _target(request)
    backend, uv = choose_resolver(request.resolver, native)
    if backend == "uv":
        uv_platform(platform)  # an unknown tag is an input error before anything runs
    # pip-tools' name for the default index costs an import of pip-tools (about a second): uv,
    # whose default index is the same, resolves meanwhile; the header needs it only at the end.
    finding_index = _default_index_soon() if request.index_url is None else None
    requirements = in_requirements(data.decode("utf-8", "replace"))
    try:
        first = in_constraints(requirements)
    except IncoherentPinError as e:
        raise InputError(f"{source}: {e}; nothing written") from e
    # uv resolves for every X.Y.z from X.Y.0 on; for the host's own X.Y it is told the running
    # patch release, which is what pip-tools resolves as: both then give the same lock.
    resolved_as = platform_module.python_version() if native else f"{python}.0 and later"
    python_arg = platform_module.python_version() if native else python
    environment = platform_environment(python, platform)
    with tempfile.TemporaryDirectory(prefix="lockd-lock-") as scratch:

        def resolve(constraints: Sequence[str]) -> str:
            output = Path(scratch) / "requirements.txt"
            output.unlink(missing_ok=True)
            path = None
            if constraints:
                path = Path(scratch) / _CONSTRAINTS_FILE
                path.write_text("".join(f"{line}\n" for line in constraints), encoding="utf-8")
            argv, _ = _command(
                backend, request, python_arg, platform, request.index_url, output, uv, path
            )
            _run_resolver(argv, backend, source, python, platform, request.timeout, output)
            text = _body(output.read_text(encoding="utf-8"))
            return _CONSTRAINTS_ANNOTATION.sub("lockd coherence constraint", text)

        pinned = [name for name, spec in requirements.items() if spec.startswith("==")]
        body, why = _resolve_coherent(resolve, first, pinned, environment, source)
    added = list(why)
    index_url = request.index_url or (finding_index.result() if finding_index else "")
    _, options = _command(backend, request, python_arg, platform, index_url, Path(), uv)
    header = render_header(
        source=source,
        source_sha256=hashlib.sha256(data).hexdigest(),
        resolver=_resolver_versions(backend, uv),
        python=python,
        resolved_as=resolved_as,
        platform=platform,
        index_url=index_url,
        extra_index_urls=request.extra_index_urls,
        options=options,
        constraints=added,
    )
    indexes = "" if request.index_url is None else f"--index-url {index_url}\n"
    indexes += "".join(f"--extra-index-url {u}\n" for u in request.extra_index_urls)
    text = header + (indexes + "\n" if indexes else "\n") + body
    lock = parse_lock(text.encode("utf-8"), str(request.destination))  # what we write must read
    require_hashes(lock)
    write_atomic(request.destination, text.encode("utf-8"), force=True)
    return Compiled(
        path=request.destination,
        text=text,
        resolver=backend,
        python_version=python,
        platform=platform,
        pins=len(lock.pins),
        constraints=tuple(added),
        reasons=tuple(why[c] for c in added),
    )


def _resolve_coherent(
    resolve: Callable[[Sequence[str]], str],
    first: Constraints,
    pinned: Sequence[str],
    environment: Mapping[str, str],
    source: Path,
) -> tuple[str, dict[str, str]]:
    """Resolve with the constraints of the .in; where a member the .in left free still lands on
    another torch, constrain it to the resolved torch's release and resolve once more.
    (the lock's body, {constraint: why}, sorted). Raises InputError when it still does not fit.
    """
    from lockd.judgement.coherence import retry_constraints

    why = dict(zip(first.lines, first.reasons, strict=True))
    body = resolve(first.lines)
    problems = _incoherence(body, environment, str(source))
    again = retry_constraints(problems, pinned)
    if any(line not in why for line in again.lines):
        why.update(zip(again.lines, again.reasons, strict=True))
        body = resolve(sorted(why))
        problems = _incoherence(body, environment, str(source))
    if problems:
        details = "; ".join(p.message for p in problems)
        raise InputError(
            f"{source}: the resolution does not fit its torch and lockd cannot constrain it "
            f"({details}); pin the family members to releases built for one torch; nothing "
            "written"
        )
    return body, {line: why[line] for line in sorted(why)}


def _run_resolver(
    argv: list[str],
    backend: str,
    source: Path,
    python: str,
    platform: str,
    timeout: float | None,
    output: Path,
) -> None:
    """Run one resolution. Raises InputError naming the .in when it fails or times out."""
    try:
        result = subprocess.run(
            argv,
            cwd=source.parent if str(source.parent) else None,
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise InputError(
            f"{source}: {backend} did not finish resolving within {timeout or 0:.0f} s"
        ) from e
    except OSError as e:
        raise InputError(f"{source}: cannot run {backend}: {e.strerror}") from e
    if result.returncode != 0 or not output.exists():
        tail = (result.stderr or result.stdout).strip()[-_STDERR_TAIL:]
        raise InputError(
            f"{source}: cannot be resolved for CPython {python} on {platform} "
            f"({backend} exited {result.returncode}); nothing written. {backend} said:\n{tail}"
        )
