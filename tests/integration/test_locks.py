"""Locks end to end: `record --lock` against real containers, the `lock` check in verify,
`lockd sbom` of a lock-bound manifest, and `lockd lock` against the real package index."""

from __future__ import annotations

import base64
import hashlib
import json
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lockd.sbom import validation_error

APP_PINS = {"six": "1.16.0", "idna": "3.7", "packaging": "24.1"}
REPORT = "/etc/lockd/pip-report.json"
WHEEL_ARGS = "--no-index --find-links /wheels"
Lockd = Callable[..., subprocess.CompletedProcess[str]]  # the `lockd` fixture (tests/conftest.py)


@pytest.fixture(scope="module")
def wheel_hashes(wheels_dir: Path) -> dict[str, str]:
    """name==version -> the sha256 of its wheel (what the app image installed)."""
    hashes = {}
    for wheel in wheels_dir.glob("*.whl"):
        name, version = wheel.name.split("-")[:2]
        hashes[f"{name}=={version}"] = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return hashes


LockWriter = Callable[..., Path]


@pytest.fixture
def write_lock(tmp_path: Path, wheel_hashes: dict[str, str]) -> LockWriter:
    """``write_lock({"six": "1.16.0", ...}, hashed=True, hashes={name: [..]})``: a lock file."""

    def _write(
        pins: dict[str, str],
        *,
        hashed: bool = True,
        hashes: dict[str, list[str]] | None = None,
    ) -> Path:
        lines = ["# a lock written by the test, with the wheels' real hashes"]
        for name, version in sorted(pins.items()):
            line = f"{name}=={version}"
            if hashed:
                allowed = (hashes or {}).get(name) or [wheel_hashes[line]]
                line += "".join(f" \\\n    --hash=sha256:{h}" for h in allowed)
            lines.append(line)
        path = tmp_path / "requirements.txt"
        path.write_text("\n".join(lines) + "\n")
        return path

    return _write


@pytest.fixture
def app(app_image: str, run_container: Callable[..., Any]) -> Any:
    return run_container(app_image)


def sh(container: Any, command: str) -> str:
    code, output = container.exec_run(["sh", "-c", command])
    assert code == 0, output.decode()
    return str(output.decode())


def keep_pip_report(container: Any) -> None:
    """What an image build with `pip install --report` keeps: the archives' hashes."""
    sh(
        container,
        f"mkdir -p /etc/lockd && pip install -q --dry-run --ignore-installed {WHEEL_ARGS} "
        f"--report {REPORT} " + " ".join(f"{n}=={v}" for n, v in APP_PINS.items()),
    )


def predicate(envelope: Path) -> dict[str, Any]:
    payload = json.loads(base64.b64decode(json.loads(envelope.read_text())["payload"]))
    result: dict[str, Any] = payload["predicate"]
    return result


def verify_json(
    lockd: Lockd, target: str, manifest: Path, public: Path
) -> tuple[int, dict[str, Any]]:
    result = lockd("verify", target, "--manifest", manifest, "--key", public, "--json")
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def lock_check(report: dict[str, Any]) -> dict[str, Any]:
    [found] = [c for c in report["checks"] if c["id"] == "lock"]
    return found


def test_an_environment_as_locked_is_signed_with_its_lock_and_verifies(
    app: Any,
    keypair: tuple[Path, Path],
    write_lock: LockWriter,
    wheel_hashes: dict[str, str],
    tmp_path: Path,
    lockd: Lockd,
) -> None:
    lock = write_lock(APP_PINS)
    out = tmp_path / "m.dsse.json"
    result = lockd("record", app.name, "--key", keypair[0], "--lock", lock, "-o", out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the target agrees with its 3 pins" in result.stdout
    embedded = predicate(out)["lock"]
    assert embedded["path"] == "requirements.txt"
    assert embedded["sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest()
    assert embedded["pins"] == [
        {"name": n, "version": v, "hashes": [wheel_hashes[f"{n}=={v}"]]}
        for n, v in sorted(APP_PINS.items())
    ]
    code, report = verify_json(lockd, app.name, out, keypair[1])
    assert code == 0, report
    assert lock_check(report)["status"] == "pass"

    six = sbom_component(lockd, out, tmp_path, "six")
    assert six["purl"] == "pkg:pypi/six@1.16.0"
    assert "hashes" not in six  # no pip report: the lock says what was allowed, not installed
    assert {p["name"]: p["value"] for p in six["properties"]}["lockd:installed-archive"] == (
        "unknown: the target keeps no pip installation report; "
        "the lock allows 1 archive for this version"
    )


def sbom_component(lockd: Lockd, envelope: Path, tmp_path: Path, name: str) -> dict[str, Any]:
    sbom = tmp_path / "sbom.json"
    assert lockd("sbom", envelope, "-o", sbom, "--force").returncode == 0
    assert validation_error(sbom.read_text()) is None
    found: dict[str, Any] = next(
        c for c in json.loads(sbom.read_text())["components"] if c["name"] == name
    )
    return found


@pytest.mark.parametrize(
    ("pins", "difference"),
    [
        (
            {"six": "1.16.0", "idna": "3.7"},
            "extra    packaging 24.1 (installed in /opt/venv/lib/python3.11/site-packages",
        ),
        ({**APP_PINS, "tomli": "2.0.1"}, "missing  tomli==2.0.1 (locked, not installed)"),
        (
            {**APP_PINS, "idna": "3.10"},
            "version  idna: the lock pins 3.10, 3.7 is installed",
        ),
    ],
    ids=["extra", "missing", "version"],
)
def test_each_disagreement_with_the_lock_refuses_to_sign(
    app: Any,
    keypair: tuple[Path, Path],
    write_lock: LockWriter,
    tmp_path: Path,
    pins: dict[str, str],
    difference: str,
    lockd: Lockd,
) -> None:
    out = tmp_path / "m.dsse.json"
    result = lockd("record", app.name, "--key", keypair[0], "--lock", write_lock(pins), "-o", out)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "refusing to sign: the environment disagrees with the lock" in result.stderr
    assert difference in result.stderr
    assert "in 1 place(s)" in result.stderr
    assert not out.exists()


def test_a_lock_without_hashes_needs_allow_unhashed(
    app: Any, keypair: tuple[Path, Path], write_lock: LockWriter, tmp_path: Path, lockd: Lockd
) -> None:
    lock = write_lock(APP_PINS, hashed=False)
    out = tmp_path / "m.dsse.json"
    result = lockd("record", app.name, "--key", keypair[0], "--lock", lock, "-o", out)
    assert result.returncode == 2
    assert "3 of 3 pin(s) have no --hash (idna, packaging, six)" in result.stderr
    assert not out.exists()
    result = lockd(
        "record", app.name, "--key", keypair[0], "--lock", lock, "--allow-unhashed", "-o", out
    )
    assert result.returncode == 0, result.stderr
    assert all(p["hashes"] == [] for p in predicate(out)["lock"]["pins"])


def test_pip_report_hashes_are_checked_against_the_lock(
    app: Any,
    keypair: tuple[Path, Path],
    write_lock: LockWriter,
    wheel_hashes: dict[str, str],
    tmp_path: Path,
    lockd: Lockd,
) -> None:
    keep_pip_report(app)
    out = tmp_path / "m.dsse.json"
    result = lockd(
        "record", app.name, "--key", keypair[0], "--lock", write_lock(APP_PINS), "-o", out
    )
    assert result.returncode == 0, result.stdout + result.stderr
    archives = predicate(out)["observation"]["probe"]["pip_report"]["archives"]
    assert sorted(a["name"] for a in archives) == ["idna", "packaging", "six"]
    six = sbom_component(lockd, out, tmp_path, "six")  # the archive pip installed
    assert [h["content"] for h in six["hashes"]] == [wheel_hashes["six==1.16.0"]]

    other = write_lock(APP_PINS, hashes={"six": ["0" * 64]})
    refused = tmp_path / "refused.dsse.json"
    result = lockd("record", app.name, "--key", keypair[0], "--lock", other, "-o", refused)
    assert result.returncode == 1
    assert "hash     six: sha256:" in result.stderr
    assert "pip installed an archive the lock does not allow" in result.stderr
    assert not refused.exists()


def test_a_pip_install_after_recording_fails_the_lock_check(
    app: Any, keypair: tuple[Path, Path], write_lock: LockWriter, tmp_path: Path, lockd: Lockd
) -> None:
    out = tmp_path / "m.dsse.json"
    result = lockd(
        "record", app.name, "--key", keypair[0], "--lock", write_lock(APP_PINS), "-o", out
    )
    assert result.returncode == 0, result.stderr
    sh(app, f"pip install -q {WHEEL_ARGS} tomli==2.0.1 idna==3.10")
    code, report = verify_json(lockd, app.name, out, keypair[1])
    assert code == 1
    check = lock_check(report)
    assert check["status"] == "fail"
    assert check["evidence"] == "inside"
    assert [(f["kind"], f["name"]) for f in check["findings"]] == [
        ("version", "idna"),
        ("extra", "tomli"),
    ]


# --- lockd lock against the real package index ------------------------------------------------


def test_lock_is_deterministic_and_records_its_inputs(tmp_path: Path, lockd: Lockd) -> None:
    source = tmp_path / "requirements.in"
    source.write_text("six==1.16.0\n")
    first = lockd("lock", source)
    assert first.returncode == 0, first.stderr
    lock = tmp_path / "requirements.txt"
    once = lock.read_bytes()
    again = lockd("lock", source, "--output", tmp_path / "again.txt")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again.txt").read_bytes() == once
    text = once.decode()
    assert "#   resolver: uv " in text  # the default where uv is installed (it is lockd's)
    running = platform.python_version()
    assert f"#   python: {running.rsplit('.', 1)[0]} (CPython; resolved as {running})" in text
    assert "#   options: --generate-hashes --strip-extras --allow-unsafe" in text
    assert "#   index-url: " in text
    assert str(tmp_path) not in text  # nothing of where it ran
    assert "six==1.16.0 \\\n    --hash=sha256:" in text
    assert "pins for CPython" in first.stdout


def test_lock_for_another_python_evaluates_that_pythons_markers(
    tmp_path: Path, lockd: Lockd
) -> None:
    source = tmp_path / "requirements.in"
    source.write_text("pytest==8.3.3\n")  # needs exceptiongroup and tomli below Python 3.11 only
    out = tmp_path / "py310.txt"
    result = lockd(
        "lock", source, "--python-version", "3.10", "--platform", "manylinux_2_28_x86_64", "-o", out
    )
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "#   resolver: uv " in text
    assert "#   python: 3.10 (CPython; resolved as 3.10.0 and later)" in text
    assert "#   platform: manylinux_2_28_x86_64" in text
    assert "\nexceptiongroup==" in text
    assert "\ntomli==" in text
    assert "\npytest==8.3.3 \\\n" in text


def test_an_unresolvable_in_is_an_error_naming_it_and_writes_nothing(
    tmp_path: Path, lockd: Lockd
) -> None:
    source = tmp_path / "requirements.in"
    source.write_text("six==0.0.0.1\n")
    result = lockd("lock", source)
    assert result.returncode == 2
    assert f"{source}: cannot be resolved for CPython" in result.stderr
    assert "nothing written" in result.stderr
    assert not (tmp_path / "requirements.txt").exists()
