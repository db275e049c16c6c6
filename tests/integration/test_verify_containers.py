"""lockd record / verify end to end against the real Docker daemon (the issue's 'done when')."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SITE = "/opt/venv/lib/python3.11/site-packages"
VECTORS = Path(__file__).resolve().parents[1] / "assets" / "vectors"
Lockd = Callable[..., subprocess.CompletedProcess[str]]  # the `lockd` fixture (tests/conftest.py)


@pytest.fixture(scope="session")
def other_public_key(lockd: Lockd, tmp_path_factory: pytest.TempPathFactory) -> Path:
    prefix = tmp_path_factory.mktemp("other") / "other"
    assert lockd("keygen", "--output-key-prefix", prefix).returncode == 0
    return prefix.with_suffix(".pub")


Recorder = Callable[..., Path]
Verifier = Callable[..., tuple[int, dict[str, Any]]]


@pytest.fixture
def record(keypair: tuple[Path, Path], tmp_path: Path, lockd: Lockd) -> Recorder:
    def _record(
        target: str,
        name: str = "m.dsse.json",
        key: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Path:
        out = tmp_path / name
        result = lockd("record", target, "--key", key or keypair[0], "--output", out, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        return out

    return _record


@pytest.fixture(scope="session")
def verify(lockd: Lockd) -> Verifier:
    """``verify(target, manifest, public, *extra)``: ``(exit code, the JSON report)``."""

    def _verify(
        target: str, manifest: Path, public: Path, *extra: str
    ) -> tuple[int, dict[str, Any]]:
        result = lockd("verify", target, "--manifest", manifest, "--key", public, "--json", *extra)
        assert result.returncode in (0, 1), result.stdout + result.stderr
        return result.returncode, json.loads(result.stdout)

    return _verify


def check(report: dict[str, Any], check_id: str) -> dict[str, Any]:
    [found] = [c for c in report["checks"] if c["id"] == check_id]
    return found


def failing(report: dict[str, Any]) -> list[str]:
    return [c["id"] for c in report["checks"] if c["status"] == "fail"]


def sh(container: Any, command: str) -> str:
    code, output = container.exec_run(["sh", "-c", command])
    assert code == 0, output.decode()
    return str(output.decode())


@pytest.fixture
def app(app_image: str, run_container: Callable[..., Any]) -> Any:
    return run_container(app_image)


def test_clean_container_verifies_also_after_restart_and_tmp_writes(
    app: Any, record: Recorder, keypair: tuple[Path, Path], verify: Verifier
) -> None:
    manifest = record(app.name)
    code, report = verify(app.name, manifest, keypair[1])
    assert code == 0, failing(report)
    assert report["verified"] is True
    core = ("signature", "image", "packages", "filesystem", "python", "env", "system")
    assert {c["id"]: c["status"] for c in report["checks"] if c["id"] in core} == dict.fromkeys(
        core, "pass"
    )
    assert {c["status"] for c in report["checks"]} <= {"pass", "skip"}
    assert check(report, "lock")["status"] == "skip"  # recorded without --lock
    assert report["target"]["kind"] == "container"

    app.restart(timeout=1)
    sh(app, "echo scratch > /tmp/scratch.txt && mkdir -p /var/tmp/x && echo y > /var/tmp/x/y")
    code, report = verify(app.name, manifest, keypair[1])
    assert code == 0, report


def test_manifest_recorded_from_the_image_verifies_its_containers(
    app: Any, app_image: str, record: Recorder, keypair: tuple[Path, Path], verify: Verifier
) -> None:
    manifest = record(f"image:{app_image}")
    code, report = verify(app.name, manifest, keypair[1])
    assert code == 0, report


def test_package_installed_at_run_time(
    app: Any, record: Recorder, keypair: tuple[Path, Path], verify: Verifier
) -> None:
    manifest = record(app.name)
    sh(app, "pip install -q --no-index --find-links /wheels tomli==2.0.1")
    code, report = verify(app.name, manifest, keypair[1])
    assert code == 1
    assert set(failing(report)) == {"packages", "filesystem"}
    packages = check(report, "packages")
    assert [(f["kind"], f["name"]) for f in packages["findings"]] == [("added", "tomli")]
    paths = {f["path"] for f in check(report, "filesystem")["findings"]}
    assert f"{SITE}/tomli/__init__.py" in paths


def test_upgraded_package(
    app: Any, record: Recorder, keypair: tuple[Path, Path], verify: Verifier
) -> None:
    manifest = record(app.name)
    sh(app, "pip install -q --no-index --find-links /wheels idna==3.10")
    code, report = verify(app.name, manifest, keypair[1])
    assert code == 1
    [finding] = check(report, "packages")["findings"]
    assert (finding["kind"], finding["name"], finding["expected"], finding["observed"]) == (
        "changed",
        "idna",
        "3.7",
        "3.10",
    )


def test_module_edited_in_place(
    app: Any, record: Recorder, keypair: tuple[Path, Path], verify: Verifier
) -> None:
    manifest = record(app.name)
    sh(app, f"echo 'x = 1' >> {SITE}/six.py")
    code, report = verify(app.name, manifest, keypair[1])
    assert code == 1
    assert failing(report) == ["filesystem"]
    assert {"kind": "changed", "path": f"{SITE}/six.py"} in check(report, "filesystem")["findings"]


def test_deleted_file(
    app: Any, record: Recorder, keypair: tuple[Path, Path], verify: Verifier
) -> None:
    manifest = record(app.name)
    sh(app, f"rm {SITE}/idna/codec.py")
    code, report = verify(app.name, manifest, keypair[1])
    assert code == 1
    assert {"kind": "deleted", "path": f"{SITE}/idna/codec.py"} in check(report, "filesystem")[
        "findings"
    ]


def test_bind_mount_over_a_package_directory(
    app_image: str,
    run_container: Callable[..., Any],
    record: Recorder,
    keypair: tuple[Path, Path],
    tmp_path: Path,
    verify: Verifier,
) -> None:
    manifest = record(f"image:{app_image}")
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("evil = True\n")
    mounted = run_container(
        app_image, volumes={str(shadow): {"bind": f"{SITE}/idna", "mode": "ro"}}
    )
    code, report = verify(mounted.name, manifest, keypair[1])
    assert code == 1
    findings = check(report, "filesystem")["findings"]
    assert [(f["kind"], f["path"]) for f in findings] == [("mount", f"{SITE}/idna")]


def test_another_image_with_the_same_distributions(
    app: Any,
    app_image: str,
    docker_client: Any,
    run_container: Callable[..., Any],
    record: Recorder,
    keypair: tuple[Path, Path],
    verify: Verifier,
) -> None:
    manifest = record(app.name)
    twin = app.commit(repository="lockd-test/app-twin", tag="latest", changes=["LABEL twin=1"])
    other = run_container("lockd-test/app-twin:latest")
    try:
        code, report = verify(other.name, manifest, keypair[1])
        assert code == 1
        assert failing(report) == ["image"]
        assert check(report, "image")["observed"] == twin.id
        assert check(report, "packages")["status"] == "pass"
    finally:
        other.remove(force=True)
        docker_client.images.remove(twin.id, force=True)


def test_ld_library_path_set_at_run_time(
    app_image: str,
    run_container: Callable[..., Any],
    record: Recorder,
    keypair: tuple[Path, Path],
    verify: Verifier,
) -> None:
    manifest = record(f"image:{app_image}")
    drifted = run_container(app_image, environment={"LD_LIBRARY_PATH": "/opt/evil"})
    code, report = verify(drifted.name, manifest, keypair[1])
    assert code == 1
    assert failing(report) == ["env", "workload"]  # the daemon's word, and the process's (#17)
    [finding] = check(report, "env")["findings"]
    assert (finding["kind"], finding["name"], finding["observed"]) == (
        "added",
        "LD_LIBRARY_PATH",
        "/opt/evil",
    )
    assert [
        (f["kind"], f.get("name"), f.get("observed")) for f in check(report, "workload")["findings"]
    ] == [("env-added", "LD_LIBRARY_PATH", "/opt/evil"), ("no-record", None, None)]


def test_tampered_envelope_and_wrong_key_fail_signature(
    app: Any,
    record: Recorder,
    keypair: tuple[Path, Path],
    other_public_key: Path,
    tmp_path: Path,
    verify: Verifier,
) -> None:
    manifest = record(app.name)
    code, report = verify(app.name, manifest, other_public_key)
    assert code == 1
    assert failing(report) == ["signature"]
    assert {c["status"] for c in report["checks"][1:]} == {"skip"}

    envelope = json.loads(manifest.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["observation"]["probe"]["distributions"].pop()
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    tampered = tmp_path / "tampered.dsse.json"
    tampered.write_text(json.dumps(envelope))
    code, report = verify(app.name, tampered, keypair[1])
    assert code == 1
    assert failing(report) == ["signature"]


def test_cosign_written_key_signs_a_manifest(app: Any, record: Recorder, verify: Verifier) -> None:
    manifest = record(
        app.name,
        key=VECTORS / "cosign-empty-password.key",
        env={"LOCKD_PASSWORD": "", "COSIGN_PASSWORD": ""},
    )
    code, report = verify(app.name, manifest, VECTORS / "cosign-empty-password.pub")
    assert code == 0, report


def test_container_without_python_still_gets_host_checks(
    build_image: Callable[..., str],
    run_container: Callable[..., Any],
    record: Recorder,
    keypair: tuple[Path, Path],
    verify: Verifier,
) -> None:
    image = build_image("nopython")
    container = run_container(image)
    manifest = record(container.name)
    code, report = verify(container.name, manifest, keypair[1])
    assert code == 0  # recorded without Python, still without Python: the host-side checks pass
    assert check(report, "image")["status"] == "pass"
    assert check(report, "filesystem")["status"] == "pass"


def test_python_removed_after_recording_is_a_finding(
    app: Any, record: Recorder, keypair: tuple[Path, Path], verify: Verifier
) -> None:
    manifest = record(app.name)
    sh(app, "rm /opt/venv/bin/python3 /opt/venv/bin/python && rm -f /usr/bin/python3*")
    code, report = verify(app.name, manifest, keypair[1])
    assert code == 1
    packages = check(report, "packages")
    assert packages["findings"][0]["kind"] == "probe-missing"
    assert check(report, "image")["status"] == "pass"
    assert "filesystem" in failing(report)


def test_record_refuses_to_overwrite(
    app: Any, keypair: tuple[Path, Path], tmp_path: Path, lockd: Lockd
) -> None:
    out = tmp_path / "existing.json"
    out.write_text("keep me")
    result = lockd("record", app.name, "--key", keypair[0], "--output", out)
    assert result.returncode == 2
    assert f"{out} exists; pass --force to replace it" in result.stderr
    assert out.read_text() == "keep me"
    assert (
        lockd("record", app.name, "--key", keypair[0], "--output", out, "--force").returncode == 0
    )
    assert json.loads(out.read_text())["payloadType"] == "application/vnd.in-toto+json"


def test_record_with_a_wrong_password_writes_nothing(
    app: Any, keypair: tuple[Path, Path], tmp_path: Path, lockd: Lockd
) -> None:
    out = tmp_path / "m.json"
    result = lockd(
        "record", app.name, "--key", keypair[0], "--output", out, env={"LOCKD_PASSWORD": "wrong"}
    )
    assert result.returncode == 2
    assert str(keypair[0]) in result.stderr
    assert "wrong password" in result.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_no_such_container(keypair: tuple[Path, Path], tmp_path: Path, lockd: Lockd) -> None:
    result = lockd(
        "record",
        "lockd-no-such-thing",
        "--key",
        keypair[0],
        "--output",
        tmp_path / "m.json",
        timeout=30,
    )
    assert result.returncode == 3
    assert "no container or image named 'lockd-no-such-thing'" in result.stderr
    assert not (tmp_path / "m.json").exists()


def test_daemon_unreachable(keypair: tuple[Path, Path], tmp_path: Path, lockd: Lockd) -> None:
    result = lockd(
        "observe", "web-1", env={"DOCKER_HOST": f"unix://{tmp_path}/no.sock"}, timeout=30
    )
    assert result.returncode == 3
    assert "cannot reach the Docker daemon" in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "not a DSSE envelope"),
        (
            '{"payload": "e30=", "payloadType": "application/vnd.in-toto+json", "signatures": [',
            "not a DSSE envelope",
        ),
        ('{"payloadType": "x"}', "not a DSSE envelope"),
    ],
)
def test_malformed_manifest_exits_2_naming_the_file(
    app: Any, keypair: tuple[Path, Path], tmp_path: Path, content: str, message: str, lockd: Lockd
) -> None:
    bad = tmp_path / "bad.dsse.json"
    bad.write_text(content)
    result = lockd("verify", app.name, "--manifest", bad, "--key", keypair[1])
    assert result.returncode == 2
    assert str(bad) in result.stderr
    assert message in result.stderr


def test_malformed_public_key_exits_2(
    app: Any, record: Recorder, tmp_path: Path, lockd: Lockd
) -> None:
    manifest = record(app.name)
    bad = tmp_path / "bad.pub"
    bad.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n")
    result = lockd("verify", app.name, "--manifest", manifest, "--key", bad)
    assert result.returncode == 2
    assert str(bad) in result.stderr


def test_probe_that_hangs_is_bounded(
    build_image: Callable[..., str],
    run_container: Callable[..., Any],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    lockd: Lockd,
) -> None:
    container = run_container(build_image("hangprobe"))
    result = lockd("observe", container.name, env={"LOCKD_PROBE_TIMEOUT": "3"}, timeout=60)
    assert result.returncode == 3
    assert "timed out after 3" in result.stderr


def test_human_report_names_evidence(
    app: Any, record: Recorder, keypair: tuple[Path, Path], lockd: Lockd
) -> None:
    manifest = record(app.name)
    sh(app, f"echo 'x = 1' >> {SITE}/six.py")
    result = lockd("verify", app.name, "--manifest", manifest, "--key", keypair[1])
    assert result.returncode == 1
    assert "NOT VERIFIED" in result.stdout
    assert "host (trusted)" in result.stdout
    assert "inside (self-reported)" in result.stdout
    assert f"changed {SITE}/six.py" in result.stdout


def test_show_and_diff(
    app: Any, record: Recorder, keypair: tuple[Path, Path], lockd: Lockd
) -> None:
    before = record(app.name, "before.json")
    shown = lockd("show", before)
    assert shown.returncode == 0, shown.stderr
    assert "six" in shown.stdout and "1.16.0" in shown.stdout
    assert lockd("diff", before, before).returncode == 0
    sh(app, "pip install -q --no-index --find-links /wheels idna==3.10")
    after = record(app.name, "after.json")
    result = lockd("diff", before, after)
    assert result.returncode == 1
    assert "changed idna: 3.7 -> 3.10" in result.stdout
