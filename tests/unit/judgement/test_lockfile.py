"""Locks without a network: parsing, markers, the target a lock was made for, the `lock` check."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from observations import SITE, dist, manifest, observation, probe

from lockd.errors import InputError, RefusedError
from lockd.judgement.checks.lock import lock_findings
from lockd.judgement.compare import compare
from lockd.judgement.locks import Lock, cuda_stack, lock_info, parse_lock, read_lock, require_hashes
from lockd.judgement.policy import Checks, Policy, load_policy
from lockd.lock import LockRequest, compile_lock, render_header, uv_platform
from lockd.model.base import normalise_name
from lockd.model.environment import PipArchive, PipReport, PythonInfo
from lockd.model.manifest import LockInfo, LockPin, Manifest, Observation
from lockd.model.report import Check
from lockd.record import bind_lock

H1, H2, H3 = "1" * 64, "2" * 64, "3" * 64

COMPILED = f"""\
# This lock was compiled by lockd; do not edit it: change the .in file and run
#    lockd lock requirements.in --python-version 3.11 --platform manylinux_2_28_x86_64
#
#   input: requirements.in (sha256 {"0" * 64})
#   python: 3.11 (CPython)
#   platform: manylinux_2_28_x86_64
#
--index-url https://index.invalid/simple

Idna==3.7 \\
    --hash=sha256:{H1.upper()} \\
    --hash=sha256:{H2}
    # via -r requirements.in
six==1.16.0 --hash=sha256:{H3}  # a trailing comment
tomli==2.0.1 ; python_version < "3.11" \\
    --hash sha256:{H1}
requests[socks]==2.32.3 \\
    --hash=sha256:{H2}
"""


def lock(text: str = COMPILED, source: str = "requirements.txt"):  # type: ignore[no-untyped-def]
    return parse_lock(text.encode(), source)


def test_a_compiled_lock_parses_into_normalised_pins() -> None:
    parsed = lock()
    assert [(p.name, p.version, p.line) for p in parsed.pins] == [
        ("idna", "3.7", 10),
        ("six", "1.16.0", 14),
        ("tomli", "2.0.1", 15),
        ("requests", "2.32.3", 17),
    ]
    assert parsed.pins[0].hashes == (H1, H2)  # lower case, sorted
    assert parsed.pins[2].marker == 'python_version < "3.11"'
    assert parsed.header["python"] == "3.11 (CPython)"
    assert parsed.header["platform"] == "manylinux_2_28_x86_64"
    assert len(parsed.sha256) == 64
    require_hashes(parsed)  # every pin is hashed: no error


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "requirements.txt: no pins (name==version lines)"),
        ("# only a comment\n\n", "requirements.txt: no pins"),
        ("six=1.16.0\n", "requirements.txt line 1: not a requirement: 'six=1.16.0'"),
        ("idna==3.7\nsix>=1.16\n", "line 2: six is not pinned to one version (>=1.16)"),
        ("six\n", "line 1: six is not pinned to one version (no version)"),
        ("six==1.*\n", "line 1: six is not pinned to one version"),
        ("six==1.16.0\n-r other.txt\n", "line 2: -r is not allowed in a lock"),
        ("-c constraints.txt\nsix==1.16.0\n", "line 1: -c is not allowed in a lock"),
        ("-e .\n", "line 1: -e is not allowed in a lock"),
        ("--frobnicate\nsix==1.16.0\n", "line 1: unknown option '--frobnicate'"),
        (
            "six==1.16.0 --hash=md5:0123\n",
            "line 1: --hash=md5:0123: lockd reads sha256:<64 hex digits> hashes only",
        ),
        ("six==1.16.0 --hash=sha256:abc\n", "line 1: --hash=sha256:abc"),
        ("six==1.16.0 --hash\n", "line 1: --hash without a value"),
        ("six==1.16.0 --no-deps\n", "line 1: unexpected option '--no-deps' after a requirement"),
        (
            f"six==1.16.0 --hash=sha256:{H1}\nidna==3.7\nSix==1.17.0 --hash=sha256:{H2}\n",
            "requirements.txt line 3: duplicate pin for six (first on line 1)",
        ),
        (
            'six==1.16.0\nsix==1.17.0 ; python_version >= "3.11"\n',
            "line 2: duplicate pin for six (first on line 1)",
        ),
        (
            "six @ https://files.invalid/six-1.16.0-py2.py3-none-any.whl\n",
            "line 1: six comes from a URL",
        ),
    ],
)
def test_bad_locks_are_input_errors_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        lock(text)
    assert message in str(caught.value)
    assert type(caught.value) is InputError


def test_a_lock_that_is_not_utf8_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"requirements.txt: not UTF-8 text \(byte 4\)"):
        parse_lock(b"six=\xff\n", "requirements.txt")


def test_a_lock_without_hashes_is_refused_unless_allowed() -> None:
    parsed = lock(f"six==1.16.0\nidna==3.7 --hash=sha256:{H1}\npackaging==24.1\n")
    with pytest.raises(InputError) as caught:
        require_hashes(parsed)
    assert str(caught.value).startswith(
        "requirements.txt: 2 of 3 pin(s) have no --hash (six, packaging)"
    )
    assert "--allow-unhashed" in str(caught.value)


def test_the_same_name_under_exclusive_markers_is_two_pins() -> None:
    parsed = lock(
        'numpy==1.26.4 ; python_version < "3.12"\nnumpy==2.1.0 ; python_version >= "3.12"\n'
    )
    assert [p.version for p in lock_info(parsed, probe()).pins] == ["1.26.4"]


def test_two_pins_that_both_apply_to_the_target_are_an_error() -> None:
    parsed = lock('six==1.16.0 ; os_name == "posix"\nsix==1.17.0 ; sys_platform == "linux"\n')
    with pytest.raises(InputError, match="lines 1 and 2 both pin six for this target"):
        lock_info(parsed, probe())


def python_at(version: str) -> PythonInfo:
    return probe().python.model_copy(update={"version": version})


def test_markers_are_evaluated_for_the_target_not_this_host() -> None:
    text = COMPILED.replace("#   python: 3.11 (CPython)\n", "")
    on_311 = lock_info(lock(text), probe())
    on_310 = lock_info(lock(text), probe(python=python_at("3.10.14")))
    assert [p.name for p in on_311.pins] == ["idna", "requests", "six"]
    assert [p.name for p in on_310.pins] == ["idna", "requests", "six", "tomli"]
    assert on_311.path == "requirements.txt"
    assert on_311.platform == "manylinux_2_28_x86_64"
    assert on_311.pins[0] == LockPin(name="idna", version="3.7", hashes=[H1, H2])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"python": python_at("3.12.1")},
            "it was compiled for Python 3.11, the target runs 3.12",
        ),
        (
            {"os": probe().os.model_copy(update={"machine": "aarch64"})},
            "it was compiled for manylinux_2_28_x86_64, the target is aarch64",
        ),
        (
            {"os": probe().os.model_copy(update={"glibc": "2.17"})},
            "(glibc >= 2.28), the target has glibc 2.17",
        ),
        (
            {"python": probe().python.model_copy(update={"platform": "darwin"})},
            "it was compiled for manylinux_2_28_x86_64, the target is darwin",
        ),
    ],
)
def test_a_lock_for_another_python_or_platform_is_refused(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(RefusedError) as caught:
        lock_info(lock(), probe(**changes))
    assert str(caught.value).startswith("requirements.txt does not fit the target: ")
    assert message in str(caught.value)
    assert "lockd lock --python-version" in str(caught.value)


def test_the_header_lockd_writes_is_the_header_it_reads() -> None:
    header = render_header(
        source=Path("locks/x/requirements.in"),
        source_sha256="f" * 64,
        resolver="pip-tools 7.6.2 (pip 23.2.1)",
        python="3.11",
        resolved_as="3.11.7",
        platform="manylinux_2_28_x86_64",
        index_url="https://index.invalid/simple",
        extra_index_urls=["https://extra.invalid/simple"],
        options=["--generate-hashes", "--strip-extras", "--allow-unsafe"],
    )
    parsed = lock(header + f"\nsix==1.16.0 --hash=sha256:{H1}\n")
    assert dict(parsed.header) == {
        "input": f"requirements.in (sha256 {'f' * 64})",
        "lockd": parsed.header["lockd"],
        "resolver": "pip-tools 7.6.2 (pip 23.2.1)",
        "python": "3.11 (CPython; resolved as 3.11.7)",
        "platform": "manylinux_2_28_x86_64",
        "index-url": "https://index.invalid/simple",
        "extra-index-url": "https://extra.invalid/simple",
        "options": "--generate-hashes --strip-extras --allow-unsafe",
    }
    assert "lockd lock requirements.in --python-version 3.11 --platform manylinux_2_28_x86_64" in (
        header
    )
    assert "--index-url https://index.invalid/simple" in header.splitlines()[1]


@pytest.mark.parametrize(
    ("tag", "uv"),
    [
        ("manylinux_2_28_x86_64", "x86_64-manylinux_2_28"),
        ("manylinux_2_17_aarch64", "aarch64-manylinux_2_17"),
        ("manylinux2014_x86_64", "x86_64-manylinux2014"),
        ("linux_x86_64", "x86_64-unknown-linux-gnu"),
        ("macosx_11_0_arm64", "aarch64-apple-darwin"),
        ("win_amd64", "x86_64-pc-windows-msvc"),
    ],
)
def test_platform_tags_in_uv_terms(tag: str, uv: str) -> None:
    assert uv_platform(tag) == uv


def test_an_unknown_platform_tag_is_an_input_error() -> None:
    with pytest.raises(InputError, match="--platform solaris_sparc: not a platform tag"):
        uv_platform("solaris_sparc")


@pytest.mark.parametrize(
    ("request_changes", "message"),
    [
        ({"python_version": "3"}, "--python-version 3: give a CPython 3 version as X.Y"),
        ({"python_version": "2.7"}, "--python-version 2.7: give a CPython 3 version"),
        ({"platform": "Linux x86-64"}, "--platform Linux x86-64: give a wheel platform tag"),
    ],
)
def test_bad_lock_requests_fail_before_resolving(
    tmp_path: Path, request_changes: dict[str, str], message: str
) -> None:
    source = tmp_path / "requirements.in"
    source.write_text("six==1.16.0\n")
    with pytest.raises(InputError, match=message):
        compile_lock(LockRequest(requirements_in=source, **request_changes))  # type: ignore[arg-type]
    assert not (tmp_path / "requirements.txt").exists()


def test_a_missing_requirements_in_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"requirements.in: no such requirements file"):
        compile_lock(LockRequest(requirements_in=tmp_path / "requirements.in"))


def test_the_cuda_stack_a_lock_pins() -> None:
    pins = [
        LockPin(name="torch", version="2.6.0"),
        LockPin(name="nvidia-cuda-runtime-cu12", version="12.4.127"),
        LockPin(name="nvidia-cudnn-cu12", version="9.1.0.70"),
        LockPin(name="nvidia-nccl-cu12", version="2.21.5"),
    ]
    assert cuda_stack(pins) == {"CUDA runtime": "12.4.127", "cuDNN": "9.1.0.70", "NCCL": "2.21.5"}


# --- the lock check (pure) -------------------------------------------------------------------

LOCK = LockInfo(
    path="requirements.txt",
    sha256="e" * 64,
    pins=[
        LockPin(name="idna", version="3.7", hashes=[H1]),
        LockPin(name="six", version="1.16.0", hashes=[H2, H3]),
    ],
)


def locked(**changes: object) -> Manifest:
    return manifest().model_copy(update={"lock": LOCK, **changes})


def lock_check(seen: Observation, policy: Policy | None = None) -> Check:
    [check] = [c for c in compare(locked(), seen, policy or Policy()) if c.id == "lock"]
    return check


def test_an_environment_as_locked_passes_the_lock_check() -> None:
    check = lock_check(observation())
    assert check.status == "pass"
    assert check.evidence == "inside"
    assert check.message == "2 pins of requirements.txt installed as locked"


def test_a_manifest_without_a_lock_skips_the_check() -> None:
    [check] = [c for c in compare(manifest(), observation(), Policy()) if c.id == "lock"]
    assert check.status == "skip"
    assert "record --lock" in check.message


@pytest.mark.parametrize(
    ("distributions", "finding"),
    [
        (
            [dist("six", "1.16.0")],
            {"kind": "missing", "name": "idna", "expected": "3.7"},
        ),
        (
            [dist("idna", "3.7"), dist("six", "1.16.0"), dist("tomli", "2.0.1")],
            {"kind": "extra", "name": "tomli", "observed": "2.0.1", "path": SITE},
        ),
        (
            [dist("idna", "3.10"), dist("six", "1.16.0")],
            {"kind": "version", "name": "idna", "expected": "3.7", "observed": "3.10"},
        ),
    ],
)
def test_each_difference_from_the_lock_is_one_finding(
    distributions: list[object], finding: dict[str, str]
) -> None:
    check = lock_check(observation(report=probe(distributions=distributions)))
    assert check.status == "fail"
    assert len(check.findings) == 1
    assert check.findings[0].model_dump(exclude_none=True, exclude={"message"}) == finding
    assert check.message == "1 difference(s) from the lock requirements.txt"


def test_installer_tooling_is_not_extra_but_its_version_still_counts() -> None:
    tooling = [dist(n, "1.0") for n in ("pip", "setuptools", "wheel")]
    seen = probe(distributions=[dist("idna", "3.7"), dist("six", "1.16.0"), *tooling])
    assert lock_findings(LOCK, seen) == []
    pinned = LOCK.model_copy(update={"pins": [*LOCK.pins, LockPin(name="pip", version="24.0")]})
    [finding] = lock_findings(pinned, seen)
    assert (finding.kind, finding.name, finding.expected, finding.observed) == (
        "version",
        "pip",
        "24.0",
        "1.0",
    )


def test_equal_versions_in_other_spellings_agree() -> None:
    seen = probe(distributions=[dist("idna", "3.7.0"), dist("six", "1.16.0")])
    assert lock_findings(LOCK, seen) == []


def report(*archives: PipArchive, error: str | None = None) -> PipReport:
    return PipReport(path="/etc/lockd/pip-report.json", archives=list(archives), error=error)


def test_archive_hashes_from_pip_report_must_be_allowed_by_the_lock() -> None:
    good = report(
        PipArchive(name="idna", version="3.7", sha256=H1),
        PipArchive(name="six", version="1.16.0", sha256=H3),
    )
    assert lock_findings(LOCK, probe(pip_report=good)) == []
    assert lock_check(observation(report=probe(pip_report=good))).message.endswith(
        "archive hashes match pip's report"
    )
    bad = report(
        PipArchive(name="idna", version="3.7", sha256=H2),
        PipArchive(name="six", version="1.16.0"),
    )
    findings = lock_findings(LOCK, probe(pip_report=bad))
    assert [(f.kind, f.name, f.observed) for f in findings] == [
        ("hash", "idna", f"sha256:{H2}"),
        ("hash", "six", "no archive hash"),
    ]
    assert findings[0].expected == "one of the 1 archive sha256s the lock allows"


def test_a_stale_report_entry_is_not_held_against_the_install_in_place() -> None:
    stale = report(PipArchive(name="idna", version="3.6", sha256=H3))
    assert lock_findings(LOCK, probe(pip_report=stale)) == []


def test_an_unreadable_pip_report_is_a_finding() -> None:
    broken = report(error="JSONDecodeError: Expecting value")
    [finding] = lock_findings(LOCK, probe(pip_report=broken))
    assert finding.kind == "hash"
    assert finding.path == "/etc/lockd/pip-report.json"
    assert "cannot be read: JSONDecodeError" in (finding.message or "")


def test_the_lock_check_follows_the_policy() -> None:
    seen = observation(report=probe(distributions=[dist("six", "1.16.0")]))
    assert lock_check(seen, load_policy("audit")).status == "warn"
    assert lock_check(seen, Policy(checks=Checks(lock="ignore"))).status == "skip"


def test_a_target_without_a_probe_fails_the_lock_check() -> None:
    check = lock_check(observation(report=None).model_copy(update={"probe": None}))
    assert check.status == "fail"
    assert check.findings[0].kind == "probe-missing"


# --- refusing to sign (record.bind_lock, pure) -----------------------------------------------


def test_bind_lock_refuses_with_every_difference() -> None:
    parsed = lock(
        f"idna==3.7 --hash=sha256:{H1}\npackaging==24.1 --hash=sha256:{H2}\n"
        f"six==1.17.0 --hash=sha256:{H3}\n"
    )
    seen = observation(
        report=probe(distributions=[dist("idna", "3.7"), dist("six", "1.16.0"), dist("tomli", "2")])
    )
    with pytest.raises(RefusedError) as caught:
        bind_lock(seen, parsed)
    message = str(caught.value)
    assert message.startswith(
        "container:app-1: refusing to sign: the environment disagrees with the lock "
        "requirements.txt in 3 place(s):"
    )
    assert "missing  packaging==24.1 (locked, not installed)" in message
    assert "version  six: the lock pins 1.17.0, 1.16.0 is installed" in message
    assert f"extra    tomli 2 (installed in {SITE}, not in the lock)" in message
    assert "nothing was written" in message


def test_bind_lock_returns_what_the_manifest_embeds() -> None:
    parsed = lock(f"idna==3.7 --hash=sha256:{H1}\nsix==1.16.0 --hash=sha256:{H2}\n")
    info = bind_lock(observation(), parsed)
    assert info.sha256 == parsed.sha256
    assert [p.name for p in info.pins] == ["idna", "six"]
    again = Manifest.model_validate(locked(lock=info).model_dump(mode="json"))
    assert again.lock == info


def test_bind_lock_refuses_a_target_without_a_probe() -> None:
    parsed = lock(f"six==1.16.0 --hash=sha256:{H1}\n")
    seen = Observation(
        target=observation().target, host=observation().host, probe_error="no python3"
    )
    with pytest.raises(RefusedError, match="cannot be checked without a probe report"):
        bind_lock(seen, parsed)


def test_show_states_the_cuda_stack_a_lock_pins() -> None:
    from rich.console import Console

    from lockd.cli.render import print_manifest
    from lockd.trust.statement import subjects_for

    cuda = [
        LockPin(name="nvidia-cuda-runtime-cu12", version="12.4.127"),
        LockPin(name="nvidia-cudnn-cu12", version="9.1.0.70"),
        LockPin(name="nvidia-nccl-cu12", version="2.21.5"),
    ]
    bound = LOCK.model_copy(
        update={"pins": [*LOCK.pins, *cuda], "python": "3.11", "platform": "manylinux_2_28_x86_64"}
    )
    recorded = locked(lock=bound)
    console = Console(record=True, width=200)
    print_manifest(subjects_for(recorded.observation), recorded, [], console)
    text = console.export_text()
    assert f"lock requirements.txt sha256:{'e' * 64}: 5 pins for 3.11 manylinux_2_28_x86_64" in text
    assert "lock pins CUDA runtime 12.4.127  cuDNN 9.1.0.70  NCCL 2.21.5" in text


# --- the committed reference locks -------------------------------------------------------------

LOCKS = Path(__file__).resolve().parents[3] / "locks"


def committed(name: str) -> Lock:
    lock = read_lock(LOCKS / name / "requirements.txt")
    require_hashes(lock)
    source = hashlib.sha256((LOCKS / name / "requirements.in").read_bytes()).hexdigest()
    assert lock.header["input"] == f"requirements.in (sha256 {source})", "recompile the lock"
    assert lock.header["python"].startswith("3.11 (CPython")
    assert lock.header["platform"] == "manylinux_2_28_x86_64"
    return lock


def test_the_pytorch_cuda_reference_lock_pins_the_cuda_12_4_stack() -> None:
    lock = committed("pytorch-cuda-2.6")
    versions = {p.name: p.version for p in lock.pins}
    assert {n: versions[n] for n in ("torch", "torchvision", "torchaudio", "triton")} == {
        "torch": "2.6.0",
        "torchvision": "0.21.0",
        "torchaudio": "2.6.0",
        "triton": "3.2.0",
    }
    assert cuda_stack(lock.pins) == {
        "CUDA runtime": "12.4.127",
        "cuDNN": "9.1.0.70",
        "NCCL": "2.21.5",
        "cuBLAS": "12.4.5.8",
    }
    assert {"numpy", "pandas", "matplotlib", "jupyterlab"} <= versions.keys()


def test_lockds_own_lock_follows_pyproject() -> None:
    """The service image's lock is lockd[all]'s: the bare dependencies and both extras (its .in's
    header comment predates the extras; changing it would mean recompiling the lock)."""
    import tomllib
    from packaging.requirements import Requirement

    pyproject = tomllib.loads((LOCKS.parent / "pyproject.toml").read_text())
    optional = pyproject["project"]["optional-dependencies"]
    dependencies = [*pyproject["project"]["dependencies"], *optional["lock"], *optional["server"]]
    listed = (LOCKS / "lockd" / "requirements.in").read_text().splitlines()
    assert sorted(line for line in listed if line and not line.startswith("#")) == sorted(
        dependencies
    )
    pinned = {p.name for p in committed("lockd").pins}
    assert {normalise_name(Requirement(d).name) for d in dependencies} <= pinned


# --- the probe's reading of pip's installation report ------------------------------------------


def write_report(path: Path, install: object) -> str:
    path.write_text(json.dumps({"version": "1", "install": install}))
    return str(path)


def test_the_probe_reads_archive_hashes_from_a_pip_report(tmp_path: Path) -> None:
    from lockd.probe.environment import pip_report

    install = [
        {
            "metadata": {"name": "Six", "version": "1.16.0"},
            "download_info": {"archive_info": {"hashes": {"sha256": H1}, "hash": f"sha256={H1}"}},
        },
        {  # pip < 23.1 writes only the legacy field
            "metadata": {"name": "idna", "version": "3.7"},
            "download_info": {"archive_info": {"hash": f"sha256={H2}"}},
        },
        {  # installed from a directory: no archive
            "metadata": {"name": "local_pkg", "version": "0.1"},
            "download_info": {"dir_info": {}},
        },
        {"metadata": {"name": "no-version"}},  # ignored
    ]
    report = pip_report(write_report(tmp_path / "r.json", install))
    assert report is not None
    parsed = PipReport.model_validate(report)
    assert parsed.error is None
    assert [(a.name, a.version, a.sha256) for a in parsed.archives] == [
        ("idna", "3.7", H2),
        ("local-pkg", "0.1", None),
        ("six", "1.16.0", H1),
    ]


def test_the_probe_reports_no_pip_report_and_a_broken_one(tmp_path: Path) -> None:
    from lockd.probe.environment import pip_report

    assert pip_report(str(tmp_path / "absent.json")) is None
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    report = pip_report(str(broken))
    assert report is not None
    assert report["archives"] == []
    assert report["error"].startswith("JSONDecodeError")
    assert pip_report(write_report(tmp_path / "odd.json", {"a": 1}))["error"] == (  # type: ignore[index]
        "ValueError: no 'install' list"
    )
