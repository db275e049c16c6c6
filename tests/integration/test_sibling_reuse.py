"""Sibling reuse against the real daemon: a fresh container identical to one verified before (the
same image, configuration and content) takes that container's probe report and --deep result
on its first verification, running nothing in it; one started otherwise (another environment, a
volume) or written to first is probed; --no-cache never reuses."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_deep import SITE, check, findings, sh

Lockd = Callable[..., subprocess.CompletedProcess[str]]


@dataclass(frozen=True)
class Fleet:
    """Containers of the app image verified against one manifest (of the first, ``record``)
    with this test's own caches, counting the execs (probes) each verification starts."""

    lockd: Lockd
    docker_client: Any
    keypair: tuple[Path, Path]
    tmp: Path

    @property
    def env(self) -> dict[str, str]:
        return {"LOCKD_CACHE_DIR": str(self.tmp / "cache")}

    @property
    def manifest(self) -> Path:
        return self.tmp / "m.dsse.json"

    def record(self, container: Any, *extra: str) -> None:
        made = self.lockd(
            "record",
            container.name,
            "--key",
            self.keypair[0],
            "--output",
            self.manifest,
            *extra,
            env=self.env,
        )
        assert made.returncode == 0, made.stdout + made.stderr

    def verify(self, container: Any, *extra: str) -> tuple[int, dict[str, Any], int]:
        """(exit code, the JSON report, execs started in the container) of ``verify --json``."""
        time.sleep(1.05 - time.time() % 1)  # the daemon's events are filtered by whole seconds
        since = int(time.time())
        result = self.lockd(
            "verify",
            container.name,
            "--manifest",
            self.manifest,
            "--key",
            self.keypair[1],
            "--json",
            *extra,
            env=self.env,
        )
        assert result.returncode in (0, 1), result.stdout + result.stderr
        events = self.docker_client.events(
            since=since,
            until=int(time.time()) + 1,
            decode=True,
            filters={"container": container.id, "event": "exec_create"},
        )
        return result.returncode, json.loads(result.stdout), len(list(events))


@pytest.fixture
def fleet(docker_client: Any, lockd: Lockd, keypair: tuple[Path, Path], tmp_path: Path) -> Fleet:
    return Fleet(lockd, docker_client, keypair, tmp_path)


@pytest.fixture
def start(app_image: str, run_container: Callable[..., Any]) -> Callable[..., Any]:
    """``start(**kwargs)``: a fresh container of the app image."""
    return lambda **kwargs: run_container(app_image, **kwargs)


def reused(report: dict[str, Any]) -> str | None:
    found = report["target"].get("probe_reused_from")
    assert found is None or isinstance(found, str)
    return found


def failing(report: dict[str, Any]) -> list[str]:
    return [c["id"] for c in report["checks"] if c["status"] == "fail"]


def integrity_reused(report: dict[str, Any]) -> bool:
    message = check(report, "integrity")["message"]
    assert isinstance(message, str)
    return "integrity cache" in message


def verified_first(fleet: Fleet, container: Any, *extra: str) -> dict[str, Any]:
    """The container's first verification: probed, passing."""
    code, report, execs = fleet.verify(container, *extra)
    assert (code, reused(report), failing(report)) == (0, None, [])
    assert execs >= 1
    return report


def test_a_fresh_identical_container_takes_its_siblings_report(
    fleet: Fleet, start: Callable[..., Any]
) -> None:
    a = start()
    fleet.record(a)
    first = verified_first(fleet, a)

    b = start()
    code, report, execs = fleet.verify(b)
    assert (code, execs, failing(report)) == (0, 0, [])
    assert reused(report) is not None
    assert report["checks"] == first["checks"]

    code, again, execs = fleet.verify(b)  # now under its own fingerprint too
    assert (code, execs, reused(again) is not None) == (0, 0, True)


@pytest.mark.parametrize(
    "how",
    ["environment", "written", "volume"],
)
def test_a_container_started_or_changed_otherwise_is_probed(
    fleet: Fleet, start: Callable[..., Any], how: str, tmp_path: Path
) -> None:
    a = start()
    fleet.record(a)
    verified_first(fleet, a)

    if how == "environment":
        other = start(environment={"X": "1"})
    elif how == "volume":
        (tmp_path / "volume").mkdir()
        other = start(volumes={str(tmp_path / "volume"): {"bind": "/data", "mode": "rw"}})
    else:
        other = start()
        sh(other, "echo x > /tmp/f")
    code, report, execs = fleet.verify(other)
    assert (code, reused(report)) == (0, None)
    assert execs >= 1


def test_no_cache_never_takes_a_siblings_report(fleet: Fleet, start: Callable[..., Any]) -> None:
    a = start()
    fleet.record(a)
    verified_first(fleet, a)

    b = start()
    for _ in range(2):
        verified_first(fleet, b, "--no-cache")
    code, report, execs = fleet.verify(b)
    assert (code, execs, reused(report) is not None) == (0, 0, True)


# --- --deep --------------------------------------------------------------------------------------


def test_a_fresh_identical_container_takes_its_siblings_deep_result_until_it_changes(
    fleet: Fleet, start: Callable[..., Any]
) -> None:
    a = start()
    fleet.record(a, "--deep")
    first = verified_first(fleet, a, "--deep")
    assert not integrity_reused(first)

    b = start()
    code, report, execs = fleet.verify(b, "--deep")
    assert (code, execs, failing(report)) == (0, 0, [])
    assert integrity_reused(report)
    assert check(report, "integrity")["status"] == "pass"

    sh(b, f"echo 'x = 1' >> {SITE}/six.py")
    code, report, execs = fleet.verify(b, "--deep")
    assert (code, reused(report), integrity_reused(report)) == (1, None, False)
    assert execs >= 1
    assert findings(report) == [("modified", f"{SITE}/six.py")]

    c = start()  # a's sibling still: b's change is b's alone
    code, report, execs = fleet.verify(c, "--deep")
    assert (code, execs, integrity_reused(report)) == (0, 0, True)


def test_no_cache_never_takes_a_siblings_deep_result(
    fleet: Fleet, start: Callable[..., Any]
) -> None:
    a = start()
    fleet.record(a, "--deep")
    verified_first(fleet, a, "--deep")

    b = start()
    report = verified_first(fleet, b, "--deep", "--no-cache")
    assert not integrity_reused(report)


# --- what the upper directory's entries alone do not say -----------------------------------------

DIST_INFO = f"{SITE}/six-1.16.0.dist-info"


def test_a_directory_replaced_in_the_upper_directory_is_not_its_copied_up_sibling(
    fleet: Fleet, start: Callable[..., Any]
) -> None:
    a = start()
    fleet.record(a)
    verified_first(fleet, a)
    copied_up = start()
    sh(copied_up, f"touch {DIST_INFO}/f && rm {DIST_INFO}/f")  # the directory, copied up
    verified_first(fleet, copied_up)

    replaced = start()
    sh(replaced, f"rm -rf {DIST_INFO} && mkdir {DIST_INFO}")  # opaque: six's metadata hidden
    code, report, execs = fleet.verify(replaced)
    assert (code, reused(report)) == (1, None)  # the host-side filesystem check fails it anyway
    assert execs >= 1
    assert sorted(failing(report)) == ["filesystem", "packages"]
