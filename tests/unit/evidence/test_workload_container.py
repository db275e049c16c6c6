"""A container's workload where the host cannot read it (#17): a remote daemon's container (its
init pid is no process of this host, its storage not here) is `not_examined`, saying what to do;
the strict policy fails it, `audit` warns, a policy that ignores the check skips it. It is never
left out silently, and never taken for a container that stopped."""

from __future__ import annotations

from pathlib import Path

import pytest
from observations import host, manifest, observation

from lockd.errors import TargetError
from lockd.evidence import kernel
from lockd.evidence.workload import read_container_workload
from lockd.judgement.checks.workload import check_workload
from lockd.judgement.policy import Checks, Policy, load_policy

REMOTE = {"Id": "c" * 64, "State": {"Pid": 4_000_000}, "GraphDriver": {"Data": {}}}


def test_a_remote_daemons_container_is_not_examined_and_the_strict_policy_fails_it() -> None:
    found = read_container_workload(REMOTE, "container far")
    assert found.processes == [] and found.files == []
    assert found.not_examined == (
        "pid 4000000 is not on this host (is the daemon remote?): run lockd on the Docker "
        "host, as root, to read what the container's processes run"
    )
    seen = observation(host_evidence=host()).model_copy(update={"workload": found})
    strict = check_workload(manifest(), seen, Policy())
    assert strict.status == "fail"
    assert [f.kind for f in strict.findings] == ["not-examined", "no-record"]
    assert "is the daemon remote?" in (strict.findings[0].message or "")
    assert check_workload(manifest(), seen, load_policy("audit")).status == "warn"
    ignoring = Policy(checks=Checks(workload="ignore"))
    assert check_workload(manifest(), seen, ignoring).status == "skip"


def test_a_container_whose_storage_is_here_but_init_is_gone_stopped(tmp_path: Path) -> None:
    """Its files are on this host, its init process is not: it stopped while lockd read it
    (exit 3), not a remote daemon's."""
    attrs = {**REMOTE, "GraphDriver": {"Data": {"UpperDir": str(tmp_path)}}}
    with pytest.raises(TargetError, match="container here stopped while lockd read its proc"):
        read_container_workload(attrs, "container here")


def test_no_running_process_named_is_not_examined(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(pid: int, cid: str) -> tuple[list[int], None]:
        raise AssertionError("not asked")

    monkeypatch.setattr(kernel, "_member_pids", never)
    found = read_container_workload({"Id": "c" * 64, "State": {"Pid": 0}}, "container x")
    assert found.not_examined == "the daemon names no running process"
