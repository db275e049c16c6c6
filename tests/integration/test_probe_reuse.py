"""The probe cache against the real daemon: `lockd verify <container>` takes the probe's report
again (running nothing in the container) while nothing the probe can see changed, and probes
again after a write to the container's files or the host side of a volume over a place the
report rests on; drift is still caught, and --no-cache always probes."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

Lockd = Callable[..., subprocess.CompletedProcess[str]]


def sh(container: Any, command: str) -> None:
    code, output = container.exec_run(["sh", "-c", command])
    assert code == 0, output.decode()


class Verifier:
    """Records a container, then verifies it (``--json``) with its own probe cache, counting the
    execs (probes) each verification starts in the container."""

    def __init__(
        self,
        container: Any,
        lockd: Lockd,
        docker_client: Any,
        keypair: tuple[Path, Path],
        tmp: Path,
    ) -> None:
        self.container, self.lockd, self.docker_client = container, lockd, docker_client
        self.public = keypair[1]
        self.env = {"LOCKD_CACHE_DIR": str(tmp / "cache")}
        self.manifest = tmp / "m.dsse.json"
        made = lockd(
            "record", container.name, "--key", keypair[0], "--output", self.manifest, env=self.env
        )
        assert made.returncode == 0, made.stdout + made.stderr

    @property
    def cache_file(self) -> Path:
        """The probe cache's file for this container's plain `verify` (one probe command
        line: one file); a path that does not exist while there is none."""
        directory = Path(self.env["LOCKD_CACHE_DIR"]) / "probe"
        found = sorted(directory.glob(f"{self.container.id}-*.json"))
        assert len(found) <= 1, found
        return found[0] if found else directory / f"{self.container.id}-none.json"

    def run(self, *extra: str) -> tuple[subprocess.CompletedProcess[str], int]:
        """The verification's result and how many execs it started in the container."""
        time.sleep(1.05 - time.time() % 1)  # the daemon's events are filtered by whole seconds
        since = int(time.time())
        result = self.lockd(
            "verify",
            self.container.name,
            "--manifest",
            self.manifest,
            "--key",
            self.public,
            *extra,
            env=self.env,
        )
        events = self.docker_client.events(
            since=since,
            until=int(time.time()) + 1,
            decode=True,
            filters={"container": self.container.id, "event": "exec_create"},
        )
        return result, len(list(events))

    def json(self, *extra: str) -> tuple[int, dict[str, Any], int]:
        """(exit code, the JSON report, execs started)."""
        result, execs = self.run("--json", *extra)
        assert result.returncode in (0, 1), result.stdout + result.stderr
        return result.returncode, json.loads(result.stdout), execs


@pytest.fixture
def verifier(
    docker_client: Any, lockd: Lockd, keypair: tuple[Path, Path], tmp_path: Path
) -> Callable[[Any], Verifier]:
    return lambda container: Verifier(container, lockd, docker_client, keypair, tmp_path)


@pytest.fixture
def app(app_image: str, run_container: Callable[..., Any]) -> Any:
    return run_container(app_image)


def reused(report: dict[str, Any]) -> str | None:
    found = report["target"].get("probe_reused_from")
    assert found is None or isinstance(found, str)
    return found


def failing(report: dict[str, Any]) -> list[str]:
    return [c["id"] for c in report["checks"] if c["status"] == "fail"]


def test_a_second_verification_takes_the_report_and_runs_nothing_in_the_container(
    app: Any, verifier: Callable[[Any], Verifier]
) -> None:
    v = verifier(app)
    assert not v.cache_file.exists()  # record keeps nothing

    code, first, execs = v.json()
    assert (code, reused(first), failing(first)) == (0, None, [])
    assert execs >= 1
    kept = json.loads(v.cache_file.read_text())
    assert kept["container"] == app.id

    code, second, execs = v.json()
    assert (code, execs, reused(second)) == (0, 0, kept["observed_at"])
    assert second["checks"] == first["checks"]
    del second["target"]["probe_reused_from"]
    assert second["target"] == first["target"]


@pytest.mark.parametrize(
    "write, verdict",
    # (a file deleted outside the volatile places is drift: deny by default)
    [("echo x > /tmp/newfile", 0), ("rm /opt/venv/bin/activate", 1)],
    ids=["upper-dir", "delete"],
)
def test_a_write_in_the_container_makes_the_next_verification_probe_again(
    app: Any, verifier: Callable[[Any], Verifier], write: str, verdict: int
) -> None:
    v = verifier(app)
    v.json()
    assert reused(v.json()[1]) is not None

    sh(app, write)
    code, report, execs = v.json()
    assert (code, reused(report)) == (verdict, None)
    assert execs >= 1

    code, report, execs = v.json()
    assert (reused(report) is not None, execs) == (True, 0)


def test_a_write_to_dev_shm_is_no_reason_to_probe_again(
    app: Any, verifier: Callable[[Any], Verifier]
) -> None:
    """/dev/shm is a tmpfs over no place the report rests on, readable on the host only through
    the container's root (its choice): not an input of the fingerprint."""
    v = verifier(app)
    v.json()
    assert reused(v.json()[1]) is not None
    sh(app, "echo x > /dev/shm/f")
    code, report, execs = v.json()
    assert (code, execs, reused(report) is not None) == (0, 0, True)


def test_no_cache_always_probes(app: Any, verifier: Callable[[Any], Verifier]) -> None:
    v = verifier(app)
    v.json()
    kept = v.cache_file.read_bytes()

    for _ in range(2):
        code, report, execs = v.json("--no-cache")
        assert (code, reused(report)) == (0, None)
        assert execs >= 1
    assert v.cache_file.read_bytes() == kept
    assert reused(v.json()[1]) is not None


def test_drift_is_caught_after_a_reused_report(
    app: Any, verifier: Callable[[Any], Verifier]
) -> None:
    v = verifier(app)
    v.json()
    assert reused(v.json()[1]) is not None

    sh(app, "pip install -q --no-index --find-links /wheels tomli==2.0.1")
    code, report, execs = v.json()
    assert (code, reused(report)) == (1, None)
    assert execs >= 1
    assert "packages" in failing(report)
    [packages] = [c for c in report["checks"] if c["id"] == "packages"]
    assert [(f["kind"], f["name"]) for f in packages["findings"]] == [("added", "tomli")]

    code, again, execs = v.json()  # the drifted report, taken again: still caught
    assert (code, execs, reused(again) is not None) == (1, 0, True)
    assert again["checks"] == report["checks"]


def test_a_file_added_on_a_volumes_host_side_makes_the_next_verification_probe_again(
    app_image: str,
    run_container: Callable[..., Any],
    verifier: Callable[[Any], Verifier],
    tmp_path: Path,
) -> None:
    """A volume under sys.prefix (a place the report rests on: walked on its host side; a
    dataset volume elsewhere is not, tests/integration/test_kernel_view.py)."""
    volume = tmp_path / "volume"
    volume.mkdir()
    container = run_container(
        app_image, volumes={str(volume): {"bind": "/opt/venv/share/data", "mode": "rw"}}
    )
    v = verifier(container)
    v.json()
    time.sleep(1.1)  # a mount entry changed within a second of a probe keeps nothing
    v.json()
    code, report, execs = v.json()
    assert (code, execs, reused(report) is not None) == (0, 0, True)

    (volume / "weights.bin").write_bytes(b"\0" * 16)
    code, report, execs = v.json()
    assert (code, reused(report)) == (0, None)
    assert execs >= 1
    assert reused(v.json()[1]) is not None


def test_the_human_report_says_the_probes_report_was_reused(
    app: Any, verifier: Callable[[Any], Verifier]
) -> None:
    v = verifier(app)
    first, _ = v.run()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "probe cache" not in first.stdout + first.stderr

    second, execs = v.run()
    assert (second.returncode, execs) == (0, 0)
    observed_at = json.loads(v.cache_file.read_text())["observed_at"]
    said = " ".join(second.stdout.split())
    assert (
        f"inside evidence: the probe's report of {observed_at}, taken from lockd's probe cache"
        in said
    )
