"""The watch agent's pure parts: the verdict (judge), its short findings, the daemon's
container JSON read into what the agent tracks, the manifest cache on disk, and the metrics
text."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pytest
from observations import IMAGE, dist, manifest, observation, probe

from lockd.client import Client
from lockd.judgement.policy import default_policy
from lockd.model.fleet import FleetResult
from lockd.model.report import Check, Finding
from lockd.trust import dsse, keys
from lockd.trust.signed import Trust
from lockd.trust.statement import PAYLOAD_TYPE, make_statement
from lockd.watch.discovery import from_inspect, from_list, selected
from lockd.watch.metrics import AgentMetrics
from lockd.watch.options import Selector
from lockd.watch.verifier import Known, ManifestCache, finding_lines, judge, open_known

CID = "c" * 64
SOURCE = "http://svc/v1/manifests/sha256:" + "d" * 64


def known_for(key: keys.PrivateKey) -> Known:
    envelope = dsse.sign(make_statement(manifest()), PAYLOAD_TYPE, key)
    return Known(IMAGE, "sha256:" + "d" * 64, envelope, "2026-01-01T00:00:00+00:00")


@pytest.fixture(scope="module")
def signer() -> keys.PrivateKey:
    return keys.generate_private_key()


def result_of(judgement: Any) -> FleetResult:
    """The judgement as the agent sends it: the contract's own checks must accept it."""
    return FleetResult.model_validate(
        {
            "container": {"id": CID, "name": "app-1", "image": "app:1", "image_id": IMAGE},
            "verdict": judgement.verdict,
            "manifest_digest": judgement.manifest_digest,
            "findings": list(judgement.findings),
            "report": judgement.report,
            "error": judgement.error,
            "observed_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
        }
    )


def test_the_recorded_environment_passes(signer: keys.PrivateKey) -> None:
    opened = open_known(known_for(signer), Trust(keys=(signer.public_key(),)), SOURCE)
    judgement = judge(observation(), opened, default_policy(), image_id=IMAGE)
    assert judgement.verdict == "pass"
    assert judgement.findings == ()
    assert judgement.report is not None and judgement.report.checks[0].status == "pass"
    assert judgement.report.manifest.path == SOURCE
    result_of(judgement)


def test_a_pip_install_fails_with_short_findings(signer: keys.PrivateKey) -> None:
    opened = open_known(known_for(signer), Trust(), SOURCE)  # no --key: the service's word
    assert "no --key" in opened.signature.message
    drifted = observation(
        report=probe(
            distributions=[dist("idna", "3.10"), dist("six", "1.16.0"), dist("tomli", "2.0.1")]
        )
    )
    judgement = judge(drifted, opened, default_policy(), image_id=IMAGE)
    assert judgement.verdict == "fail"
    assert judgement.findings == (
        "packages: idna 3.7 → 3.10 (changed)",
        "packages: tomli 2.0.1 (added)",
    )
    result_of(judgement)


def test_an_untrusted_signature_fails_without_comparing(signer: keys.PrivateKey) -> None:
    stranger = keys.generate_private_key()
    opened = open_known(known_for(signer), Trust(keys=(stranger.public_key(),)), SOURCE)
    assert opened.statement is None
    judgement = judge(observation(), opened, default_policy(), image_id=IMAGE)
    assert judgement.verdict == "fail"
    assert judgement.report is not None
    assert {c.status for c in judgement.report.checks[1:]} == {"skip"}
    assert judgement.findings[0].startswith("signature: ")
    result_of(judgement)


def test_no_manifest_is_unrecorded() -> None:
    judgement = judge(observation(), None, default_policy(), image_id=IMAGE)
    assert judgement.verdict == "unrecorded"
    assert judgement.findings == (f"no manifest for image {IMAGE}",)
    assert judgement.report is None and judgement.manifest_digest is None
    result_of(judgement)


def test_findings_are_short_printable_and_bounded() -> None:
    long_path = "/opt/" + "x" * 500
    checks = [
        Check(id="image", status="pass", evidence="host"),
        Check(id="env", status="fail", evidence="inside", message="bad\nnews"),
        Check(
            id="filesystem",
            status="fail",
            evidence="host",
            findings=[Finding(kind="added", path=long_path)]
            + [Finding(kind="deleted", path=f"/opt/f{i}") for i in range(300)],
        ),
        Check(id="python", status="warn", evidence="inside", findings=[Finding(kind="changed")]),
    ]
    lines = finding_lines(checks)
    assert len(lines) == 200
    assert lines[0] == "env: bad news"
    assert len(lines[1]) == 200 and lines[1].endswith("…")
    assert lines[2] == "filesystem: /opt/f0 (deleted)"
    assert lines[-1] == "… and 103 more"


def list_entry(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "Id": CID,
        "Names": ["/app-1"],
        "Image": "app:1",
        "ImageID": IMAGE,
        "Labels": {"team": "ml", "lockd.throwaway": "1"},
        "Mounts": [{"Type": "bind", "Source": "/srv", "Destination": "/data", "RW": True}],
        "State": "running",
    }
    entry.update(changes)
    return entry


def inspect_answer(**changes: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "Id": CID,
        "Name": "/app-1",
        "Image": IMAGE,
        "State": {"Status": "running", "StartedAt": "2026-01-01T00:00:00Z"},
        "Config": {"Image": "app:1", "Env": ["A=1"], "Labels": {"team": "ml"}},
        "Mounts": [],
        "GraphDriver": {
            "Name": "overlay2",
            "Data": {"UpperDir": "/var/lib/docker/overlay2/x/diff"},
        },
    }
    attrs.update(changes)
    return attrs


def test_listed_containers() -> None:
    seen = from_list(list_entry())
    assert seen is not None
    assert (seen.name, seen.image, seen.image_id) == ("app-1", "app:1", IMAGE)
    assert seen.mounts == (("/data", "/srv", "bind", True),)
    assert not selected(seen, ())  # lockd's own throw-away containers are never watched
    plain = from_list(list_entry(Labels={"team": "ml"}))
    assert plain is not None
    assert selected(plain, (Selector("team", "ml"),))
    assert not selected(plain, (Selector("team", "web"),))
    for bad in (list_entry(Id="short"), list_entry(ImageID="app:1"), {}):
        assert from_list(bad) is None
    nameless = from_list(list_entry(Names=[]))
    assert nameless is not None and nameless.name == CID[:12]


def test_inspected_containers_and_their_config_key() -> None:
    first = from_inspect(inspect_answer())
    assert first is not None
    assert first.upper_dir == "/var/lib/docker/overlay2/x/diff"
    same = from_inspect(inspect_answer())
    assert same is not None and same.config_key == first.config_key
    restarted = from_inspect(
        inspect_answer(State={"Status": "running", "StartedAt": "2026-01-02T00:00:00Z"})
    )
    assert restarted is not None and restarted.config_key != first.config_key
    renamed = from_inspect(inspect_answer(Name="/app-2"))
    assert renamed is not None and renamed.config_key == first.config_key  # nothing to probe
    other_env = from_inspect(inspect_answer(Config={"Image": "app:1", "Env": ["A=2"]}))
    assert other_env is not None and other_env.config_key != first.config_key
    assert from_inspect(inspect_answer(State={"Status": "exited"})) is None
    assert from_inspect(inspect_answer(Id="nope")) is None
    vfs = from_inspect(inspect_answer(GraphDriver={"Name": "vfs", "Data": {}}))
    assert vfs is not None and vfs.upper_dir is None


@pytest.mark.parametrize(
    "changes",
    [
        {"Config": {"Image": "app:1", "Env": ["A=1"], "Cmd": ["python3", "train.py"]}},
        {"Config": {"Image": "app:1", "Env": ["A=1"], "Entrypoint": ["/bin/sh", "-c"]}},
        {"Config": {"Image": "app:1", "Env": ["A=1"], "User": "1000"}},
        {"Config": {"Image": "app:1", "Env": ["A=1"], "WorkingDir": "/srv"}},
        {"Image": "sha256:" + "1" * 64},
        {"Mounts": [{"Destination": "/data", "Source": "/srv", "Type": "bind", "RW": True}]},
        {"GraphDriver": {"Name": "overlay2", "Data": {"UpperDir": "/var/lib/docker/o/y/diff"}}},
    ],
)
def test_every_input_of_a_probe_is_in_the_config_key(changes: dict[str, Any]) -> None:
    """The watch agent reuses a verdict while the key holds: whatever a fresh probe would see
    differently (command, entrypoint, user, directory, image, mounts, upper layer) changes it."""
    first = from_inspect(inspect_answer())
    changed = from_inspect(inspect_answer(**changes))
    assert first is not None and changed is not None
    assert changed.config_key != first.config_key
    assert len(changed.config_key) == 64


def test_names_and_labels_are_cut_to_the_contract() -> None:
    labels = {f"k{i:03d}": "v" * 5000 for i in range(300)} | {"x" * 300: "too long a key"}
    seen = from_list(list_entry(Names=["/bad\x01name"], Labels=labels, Image="i\nmage"))
    assert seen is not None
    fleet = seen.fleet()
    assert fleet.name == "bad?name"
    assert fleet.image == "i?mage"
    assert len(fleet.labels) == 256
    assert all(len(v) == 4096 for v in fleet.labels.values())


def test_a_corrupt_cached_manifest_is_dropped_and_asked_again(
    tmp_path: Path, signer: keys.PrivateKey
) -> None:
    cache = ManifestCache(tmp_path, Client("http://127.0.0.1:1"), Trust(), "http://127.0.0.1:1")
    path = tmp_path / f"{IMAGE.removeprefix('sha256:')}.json"
    path.write_text('{"image_id": "sha256:')
    assert cache.get(IMAGE) is None
    assert not path.exists()
    # a good entry is read back, including "the service holds none"
    path.write_text(
        json.dumps({"image_id": IMAGE, "digest": None, "signed": None, "fetched_at": "t"})
    )
    known = cache.get(IMAGE)
    assert known is not None and known.digest is None
    assert cache.opened(known) is None


def _none_recorded(image: str = IMAGE) -> str:
    """A cache entry saying the service holds no manifest for ``image`` (what a planted entry
    would claim to hide the image's manifest)."""
    return json.dumps({"image_id": image, "digest": None, "signed": None, "fetched_at": "t"})


def _cache(directory: Path) -> ManifestCache:
    return ManifestCache(directory, Client("http://127.0.0.1:1"), Trust(), "http://127.0.0.1:1")


def test_a_cached_manifest_that_is_a_symbolic_link_is_not_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "cache").mkdir(mode=0o700)
    elsewhere = tmp_path / "planted.json"
    elsewhere.write_text(_none_recorded())
    path = tmp_path / "cache" / f"{IMAGE.removeprefix('sha256:')}.json"
    os.symlink(elsewhere, path)
    assert _cache(tmp_path / "cache").get(IMAGE) is None
    assert f"{path}: the cached manifest is not read (a symbolic link)" in caplog.text


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777])
def test_a_manifest_cache_others_can_write_is_neither_read_nor_written(
    tmp_path: Path, mode: int, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "cache"
    directory.mkdir()
    path = directory / f"{IMAGE.removeprefix('sha256:')}.json"
    path.write_text(_none_recorded())
    assert _cache(directory).get(IMAGE) is not None  # trusted as it is
    directory.chmod(mode)
    cache = _cache(directory)
    assert cache.get(IMAGE) is None
    assert cache.get(IMAGE) is None
    other = "sha256:" + "9" * 64
    cache._store(Known(other, None, None, "t"))
    assert not (directory / ("9" * 64 + ".json")).exists()
    said = [
        r.getMessage() for r in caplog.records if "manifest cache is not used" in r.getMessage()
    ]
    assert said == [
        f"{directory}: the manifest cache is not used ({directory} is writable by others (mode "
        f"{mode:04o})); asking the service each time: make it this user's, writable by nobody "
        "else and no symbolic link"
    ]


@pytest.mark.usefixtures("root_required")  # chown
def test_a_manifest_cache_of_another_user_is_not_read(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    path = directory / f"{IMAGE.removeprefix('sha256:')}.json"
    path.write_text(_none_recorded())
    os.chown(path, 65534, 65534)
    assert _cache(directory).get(IMAGE) is None
    os.chown(path, 0, 0)
    os.chown(directory, 65534, 65534)
    assert _cache(directory).get(IMAGE) is None
    os.chown(directory, 0, 0)
    assert _cache(directory).get(IMAGE) is not None


def test_metrics_text() -> None:
    metrics = AgentMetrics()
    metrics.containers = lambda: {"pass": 3, "fail": 1}
    metrics.spool = lambda: (2, 4096, 1)
    metrics.observe_verification(0.07)
    metrics.observe_verification(3.0)
    metrics.delivered("delivered")
    metrics.count("probe_failures")
    text = metrics.render().decode()
    assert 'lockd_agent_containers{verdict="pass"} 3' in text
    assert 'lockd_agent_containers{verdict="unrecorded"} 0' in text
    assert 'lockd_agent_verification_seconds_bucket{le="0.05"} 0' in text
    assert 'lockd_agent_verification_seconds_bucket{le="0.1"} 1' in text
    assert 'lockd_agent_verification_seconds_bucket{le="5"} 2' in text
    assert 'lockd_agent_verification_seconds_bucket{le="+Inf"} 2' in text
    assert "lockd_agent_verification_seconds_count 2" in text
    assert "lockd_agent_probe_failures_total 1" in text
    assert "lockd_agent_spool_batches 2" in text
    assert 'lockd_agent_deliveries_total{outcome="delivered"} 1' in text
    assert 'lockd_agent_deliveries_total{outcome="failed"} 0' in text
